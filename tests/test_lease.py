"""One lease for store claims and run locks (`vivitcache.lease`): each rule checked through both uses."""

from __future__ import annotations

import json
import os
import time

import pytest

from vivitcache.lease import host_name
from vivitcache.store.claims import Claim
from vivitcache.training import run_folder
from vivitcache.training.run_folder import RunLock, RunLockedError


def test_a_reused_pid_does_not_keep_a_dead_claim_alive(tmp_path):
    (tmp_path / "claims").mkdir()
    # this very pid, but another process start time: a requeued container's writer that got the dead one's pid
    (tmp_path / "claims" / "p1.claim").write_text(json.dumps({"host": host_name(), "pid": os.getpid(), "start": "1",
                                                              "token": "old"}))
    claim = Claim(tmp_path, "p1", timeout_s=3600)
    assert claim.acquire() and claim.took_over["token"] == "old"
    claim.release()
    assert not (tmp_path / "claims" / "p1.claim").exists()


def test_a_run_lock_with_a_future_heartbeat_is_stale_once_seen_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder, "STALE_AFTER_S", 0.5)
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"host": "node-ahead", "pid": 1, "since": "later"}))
    ahead = time.time() + 3600  # that host's clock runs an hour ahead
    os.utime(lock, (ahead, ahead))
    with pytest.raises(RunLockedError, match="host node-ahead, pid 1"):
        RunLock.acquire_folder(tmp_path)  # first seen now: live for the timeout
    time.sleep(0.7)
    with RunLock.acquire_folder(tmp_path) as taken:  # unchanged for longer than the timeout: stale
        assert taken.took_over["host"] == "node-ahead"
    assert not lock.exists() and not list(tmp_path.glob(".*seen*"))


def test_a_moving_heartbeat_in_the_future_stays_live(tmp_path):
    (tmp_path / "claims").mkdir()
    path = tmp_path / "claims" / "p1.claim"
    path.write_text(json.dumps({"host": "node-ahead", "pid": 1, "token": "t"}))
    for step in range(3):  # its holder keeps beating: each heartbeat is new, so it is never seen unchanged long
        ahead = time.time() + 3600 + step
        os.utime(path, (ahead, ahead))
        assert not Claim(tmp_path, "p1", timeout_s=0.3).acquire()
        time.sleep(0.2)
