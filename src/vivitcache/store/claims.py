"""Claims: `claims/<part_id>.claim`, created with O_EXCL by the writer about to extract a part, kept alive by a
heartbeat (the file's mtime, touched every `heartbeat_s`), removed when the part is committed or given up.

A second live writer skips a part whose claim is fresh (and says whose: `Claim.holder`), and takes over a claim that
is stale: its writer is a dead process on this host, or its heartbeat is older than `timeout_s` (a writer on another
host cannot be asked). A heartbeat in the future (the claiming host's clock runs ahead) cannot be aged by this
host's clock; it is stale once this host has seen it unchanged for `timeout_s`, remembered in
`claims/.<part_id>.seen.<host>` (a live writer's heartbeat keeps moving, so it never is). Claims only keep live
writers from doing the same work twice; correctness does not rest on them: publishing a part is one atomic rename,
and a writer that loses that race throws its copy away (`PartWriter` reports `already_committed`).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

from vivitcache.provenance import now_iso
from vivitcache.store.layout import META, StoreError, group_meta, host_name, new_token, write_json_atomic

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
        self.holder: dict | None = None  # the live claim that made `acquire` return False: {host, pid, age_s}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def stale(self, owner: dict | None, mtime_ns: int) -> bool:
        if owner is not None and owner.get("host") == host_name() and not pid_alive(_pid(owner)):
            return True
        now = time.time()
        if mtime_ns / 1e9 <= now:
            return now - mtime_ns / 1e9 > self.timeout_s
        return now - self._first_seen(mtime_ns) > self.timeout_s  # a heartbeat in the future: clock skew

    def _first_seen(self, mtime_ns: int) -> float:
        """When this host first saw the claim's heartbeat at `mtime_ns` (now, if it just moved)."""
        seen = self.path.with_name(f".{self.part_id}.seen.{host_name()}")
        try:
            record = json.loads(seen.read_text(encoding="utf-8"))
            if record["mtime_ns"] == mtime_ns:
                return float(record["first_seen"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or of another heartbeat
        write_json_atomic(seen, {"mtime_ns": mtime_ns, "first_seen": time.time()})
        return time.time()

    def acquire(self) -> bool:
        """True if this writer now holds the claim; False if a live writer holds it (`holder` says whose).
        StoreError (one line) when the claims folder or the claim path is not what a claim can be."""
        folder = self.root / CLAIMS
        try:
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
                return self._hold(fd)
        except OSError as e:
            raise StoreError(f"cannot claim part {self.part_id}: {e.filename or self.path}: {e.strerror or e} (a "
                             "claim is a file in STORE/claims/; remove what is in the way)") from None
        return False

    def _hold(self, fd: int) -> bool:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.owner, f)
            f.flush()
            os.fsync(f.fileno())
        self.held = True
        self._thread = threading.Thread(target=self._beat, name=f"claim-{self.part_id}", daemon=True)
        self._thread.start()
        return True

    def _take_over_if_stale(self) -> bool:
        """Move a stale claim aside (one atomic rename: of several takers exactly one wins); False if it is live."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return True  # released meanwhile: try again
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "a symlink or a special file"
            raise StoreError(f"{self.path}: a claim must be a plain file, this is {what} (remove it)")
        owner = _read_owner(self.path)
        if not self.stale(owner, st.st_mtime_ns):
            owner = owner or {}
            self.holder = {"host": owner.get("host"), "pid": owner.get("pid"),
                           "age_s": round(time.time() - st.st_mtime_ns / 1e9, 1)}
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
        self.path.with_name(f".{self.part_id}.seen.{host_name()}").unlink(missing_ok=True)
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


def _pid(owner: dict) -> int:
    try:
        return int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return 0
