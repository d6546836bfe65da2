"""Claims: `claims/<part_id>.claim`, a lease (`vivitcache.lease`) taken by the writer about to extract a part,
kept alive by its heartbeat, removed when the part is committed or given up.

A second live writer skips a part whose claim is fresh (and says whose: `Claim.holder`), and takes over a claim that
is stale (its writer is a dead process on this host, its heartbeat is older than `timeout_s`, or a heartbeat in the
future has been seen unchanged that long: the lease rules). Claims only keep live writers from doing the same work
twice; correctness does not rest on them: publishing a part is one atomic rename, and a writer that loses that race
throws its copy away (`PartWriter` reports `already_committed`).
"""

from __future__ import annotations

from pathlib import Path

from vivitcache.lease import Lease, LeasePathError
from vivitcache.store.layout import META, StoreError, group_meta, write_json_atomic

CLAIMS = "claims"
DEFAULT_TIMEOUT_S = 120.0
"""A claim whose heartbeat is older than this is presumed abandoned (keep it well above `heartbeat_s`)."""


class Claim(Lease):
    """One writer's claim on one part; `acquire()` then `release()` (or use it as a context manager)."""

    def __init__(self, root: Path, part_id: str, timeout_s: float = DEFAULT_TIMEOUT_S, heartbeat_s: float | None = None):
        self.root, self.part_id = Path(root), part_id
        super().__init__(self.root / CLAIMS / f"{part_id}.claim", timeout_s,
                         heartbeat_s if heartbeat_s is not None else max(0.2, float(timeout_s) / 6), part_id=part_id)

    def acquire(self, tries: int = 5) -> bool:
        """True if this writer now holds the claim; False if a live writer holds it (`holder` says whose).
        StoreError (one line) when the claims folder or the claim path is not what a claim can be."""
        folder = self.root / CLAIMS
        try:
            if not (folder / META).exists():
                folder.mkdir(exist_ok=True)
                write_json_atomic(folder / META, group_meta({}))
            return super().acquire(tries)
        except LeasePathError as e:
            raise StoreError(f"{self.path}: a claim {e}") from None
        except OSError as e:
            where = getattr(e, "filename", None) or self.path
            raise StoreError(f"cannot claim part {self.part_id}: {where}: {e.strerror or e} (a claim is a file in "
                             "STORE/claims/; remove what is in the way)") from None
