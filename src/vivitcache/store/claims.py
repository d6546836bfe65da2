"""Claims: `claims/<part_id>.claim`, created with O_EXCL by the writer about to extract a part, kept alive by a
heartbeat (the file's mtime, touched every `heartbeat_s`), removed when the part is committed or given up.

A second live writer skips a part whose claim is fresh, and takes over a claim that is stale: its writer is a dead
process on this host, or its heartbeat is older than `timeout_s` (a writer on another host cannot be asked). Claims
only keep live writers from doing the same work twice; correctness does not rest on them: publishing a part is one
atomic rename, and a writer that loses that race throws its copy away (`PartWriter` reports `already_committed`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from vivitcache.provenance import now_iso
from vivitcache.store.layout import META, group_meta, host_name, new_token, write_json_atomic

CLAIMS = "claims"
DEFAULT_TIMEOUT_S = 120.0
"""A claim whose heartbeat is older than this is presumed abandoned (keep it well above `heartbeat_s`)."""


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read_owner(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None  # vanished, or being written: judged by its mtime alone


class Claim:
    """One writer's claim on one part; `acquire()` then `release()` (or use it as a context manager)."""

    def __init__(self, root: Path, part_id: str, timeout_s: float = DEFAULT_TIMEOUT_S, heartbeat_s: float | None = None):
        self.root, self.part_id, self.timeout_s = Path(root), part_id, float(timeout_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.2, self.timeout_s / 6)
        self.path = self.root / CLAIMS / f"{part_id}.claim"
        self.owner = {"part_id": part_id, "host": host_name(), "pid": os.getpid(), "token": new_token(),
                      "started": now_iso()}
        self.held = False
        self.took_over: dict | None = None  # the stale owner this claim replaced
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def stale(self, owner: dict | None, mtime: float) -> bool:
        if owner is not None and owner.get("host") == host_name() and not pid_alive(int(owner.get("pid", 0))):
            return True
        return time.time() - mtime > self.timeout_s

    def acquire(self) -> bool:
        """True if this writer now holds the claim; False if a live writer holds it."""
        folder = self.root / CLAIMS
        if not (folder / META).exists():
            folder.mkdir(exist_ok=True)
            write_json_atomic(folder / META, group_meta({}))
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_if_stale():
                    return False
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.owner, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            self._thread = threading.Thread(target=self._beat, name=f"claim-{self.part_id}", daemon=True)
            self._thread.start()
            return True
        return False

    def _take_over_if_stale(self) -> bool:
        """Move a stale claim aside (one atomic rename: of several takers exactly one wins); False if it is live."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return True  # released meanwhile: try again
        owner = _read_owner(self.path)
        if not self.stale(owner, mtime):
            return False
        aside = self.path.with_name(f".{self.part_id}.stale.{self.owner['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # another taker moved it first
        moved = _read_owner(aside)
        if owner is not None and moved is not None and moved.get("token") != owner.get("token"):
            # We moved a claim made a moment ago by another taker, not the stale one: give it back (link never
            # replaces) and stay out.
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        self.took_over = owner or {}
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (_read_owner(self.path) or {}).get("token") != self.owner["token"]:
                    return  # taken over (we were presumed dead): the commit protocol still keeps the store right
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the claim if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.held and (_read_owner(self.path) or {}).get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)
        self.held = False


def live_claims(root: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, dict]:
    """{part_id: owner} of the claims that are not stale."""
    out = {}
    probe = Claim(root, "probe", timeout_s)
    try:
        entries = list(os.scandir(Path(root) / CLAIMS))
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.name.endswith(".claim") or entry.name.startswith("."):
            continue
        try:
            mtime = entry.stat().st_mtime
        except FileNotFoundError:
            continue
        owner = _read_owner(Path(entry.path))
        if not probe.stale(owner, mtime):
            out[entry.name[: -len(".claim")]] = owner or {}
    return out
