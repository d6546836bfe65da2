"""A lease: a file that one process holds while it works, kept alive by a heartbeat, taken over once its holder is
gone. Store claims (`store/claims.py`: one writer per part) and run locks (`training/run_folder.py`: one run per
`--out`) are both leases.

- **Taking it.** The holder's record (host, pid, process start time, a random token, since when) is written to a
  temporary file, which is then hard-linked to the lease path: link(2) fails when the path exists (like
  `O_CREAT | O_EXCL`, atomic on every NFS mount too), and the lease never exists without its record (a holder killed
  between an exclusive create and its write used to leave an empty lease, which this host could not judge dead and
  so waited out the timeout). Hand-written because the stdlib has no cross-process lock that also works on cluster
  filesystems: `flock` is advisory and not honoured over every NFS mount.
- **Heartbeat.** The holder touches the file's mtime every `heartbeat_s` while the file still holds its token.
- **Stale.** A holder on this host is gone when its pid is dead, or when that pid now belongs to a later process
  (its start time differs: containers reuse pids across requeues). Otherwise, and always for a holder on another
  host (which cannot be asked), a lease is stale when its heartbeat is older than `timeout_s` (a stopped process). A heartbeat in the future (that host's clock runs
  ahead) cannot be aged by this clock: it is stale once this host has seen it unchanged for `timeout_s`,
  remembered beside the lease in `.<name>.seen.<host>` (a live holder's heartbeat keeps moving).
- **Taking over.** A stale lease is renamed aside (one atomic rename: of several takers exactly one wins). If what
  was moved turns out to be a fresh lease another taker made a moment ago, it is linked back (a link never
  replaces) and this taker stays out.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
import time
import uuid
from pathlib import Path

from vivitcache.provenance import now_iso


def host_name() -> str:
    """This host's name, reduced to characters safe in a file name: how every lease names its host."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def new_token() -> str:
    """A random id for one holder (or writer attempt): tells two holders of the same pid apart."""
    return uuid.uuid4().hex[:16]


def process_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a live holder from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_alive(owner: dict) -> bool:
    """Whether the process of a record {pid, start (optional)} on this host still runs (and is that process)."""
    try:
        pid = int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start, now = owner.get("start"), process_start(pid)
    return start is None or now is None or now == start


class LeasePathError(OSError):
    """The lease path is not a plain file (a folder, a symlink): nothing a lease can be."""


def read_record(path: Path) -> dict | None:
    """A lease's record; None when the file is gone; {} when unreadable (damaged, or written by hand: judged by age)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class Lease:
    """One process's lease on `path`: `acquire()` → True (held) or False (`holder` says whose); `release()`."""

    def __init__(self, path: Path, timeout_s: float, heartbeat_s: float, **extra):
        self.path, self.timeout_s, self.heartbeat_s = Path(path), float(timeout_s), float(heartbeat_s)
        pid = os.getpid()
        self.record = {**extra, "host": host_name(), "pid": pid, "start": process_start(pid), "token": new_token(),
                       "since": now_iso()}
        self.held = False
        self.took_over: dict | None = None
        """The stale holder's record this lease replaced."""
        self.holder: dict | None = None
        """The live holder that made `acquire` return False: {host, pid, since, age_s}."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self, tries: int = 5) -> bool:
        """Take the lease, taking over a stale one. OSError (LeasePathError) when the path cannot be a lease."""
        for _ in range(tries):
            if not self._create():
                if not self._take_over_if_stale():
                    return False
                continue
            self.held = True
            self._thread = threading.Thread(target=self._beat, name=f"lease-{self.path.name}", daemon=True)
            self._thread.start()
            return True
        return False

    def _create(self) -> bool:
        """Publish the lease with its record in one step (temporary file, then link); False if it exists."""
        tmp = self.path.with_name(f".{self.path.name}.new.{self.record['token']}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.record, f)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def stale(self, owner: dict | None, mtime_ns: int) -> bool:
        if owner and owner.get("host") == host_name() and not owner_alive(owner):
            return True
        now = time.time()
        if mtime_ns / 1e9 <= now:
            return now - mtime_ns / 1e9 > self.timeout_s
        return now - self._first_seen(mtime_ns) > self.timeout_s  # a heartbeat in the future: clock skew

    def _seen_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.seen.{host_name()}")

    def _first_seen(self, mtime_ns: int) -> float:
        """When this host first saw the heartbeat at `mtime_ns` (now, if it just moved)."""
        seen = self._seen_path()
        try:
            record = json.loads(seen.read_text(encoding="utf-8"))
            if record["mtime_ns"] == mtime_ns:
                return float(record["first_seen"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or of another heartbeat
        tmp = seen.with_name(f"{seen.name}.{self.record['token']}")
        tmp.write_text(json.dumps({"mtime_ns": mtime_ns, "first_seen": time.time()}), encoding="utf-8")
        os.replace(tmp, seen)
        return time.time()

    def _take_over_if_stale(self) -> bool:
        """Move a stale lease aside; False if it is live (then `holder` is set)."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return True  # released meanwhile: try again
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "a symlink or a special file"
            raise LeasePathError(f"must be a plain file, this is {what} (remove it)")
        owner = read_record(self.path)
        if not self.stale(owner, st.st_mtime_ns):
            owner = owner or {}
            self.holder = {"host": owner.get("host"), "pid": owner.get("pid"), "since": owner.get("since"),
                           "age_s": round(time.time() - st.st_mtime_ns / 1e9, 1)}
            return False
        aside = self.path.with_name(f".{self.path.name}.stale.{self.record['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # another taker moved it first
        moved = read_record(aside)
        if owner and moved and moved.get("token") != owner.get("token"):
            try:  # we moved a lease another taker made a moment ago, not the stale one: give it back, stay out
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        self._seen_path().unlink(missing_ok=True)
        self.took_over = owner or {}
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (read_record(self.path) or {}).get("token") != self.record["token"]:
                    return  # taken over (we were presumed dead)
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.held and (read_record(self.path) or {}).get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)
        self.held = False
