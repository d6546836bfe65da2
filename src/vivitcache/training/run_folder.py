"""A run folder (`--out` of `pretrain` and `train`): what may be written into it, and who may write.

- A fresh run refuses a folder that is not empty: nothing of an earlier run, or of anything else, is overwritten
  unless asked. `overwrite` removes the run's own files (`RUN_ENTRIES`) and nothing else; a folder holding other
  files is refused even then, since it is not a run folder (a mistyped `--out ~ --overwrite` deletes nothing).
- `resume=True` continues the checkpoint; a run that stopped before its first checkpoint starts from scratch with
  a note (an auto-requeued job must not be trapped); a folder where no run ever was is refused (a mistyped --out).
  `resume="auto"` continues when there is a checkpoint and starts otherwise, even in a new folder.
- While a run writes, it holds `RUN/.lock`, a lease (`vivitcache.lease`: host, pid, process start time) refreshed
  every `HEARTBEAT_S`. A second run into the same folder fails at once. A lock whose process is gone (same host,
  a reused pid included), or that has not been refreshed for `STALE_AFTER_S` (another host, e.g. a job requeued on
  another node), is taken over.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vivitcache.errors import UserError
from vivitcache.lease import Lease, LeasePathError
from vivitcache.training.checkpoint import CHECKPOINT_DIR, OLD_PREFIX, TMP_PREFIX, CheckpointError, recover_checkpoint

LOCK = ".lock"
RUN_ENTRIES = (CHECKPOINT_DIR, "metrics.jsonl", "summary.json", "curves.png", "confusion.json", "eval.json",
               "eval_confusion.png", LOCK)
"""Everything a training run (and `eval` into its folder) writes; `overwrite` removes these and nothing else."""
HEARTBEAT_S = 30.0
"""How often a running run refreshes its lock's mtime."""
STALE_AFTER_S = 600.0
"""A lock of another host not refreshed for this long is presumed dead (generous: clocks of hosts differ)."""


class RunFolderError(UserError, ValueError):
    """`--out` cannot be used as asked (not empty, not a run folder, nothing to resume)."""


class RunLockedError(RunFolderError):
    """Another live run is writing into this folder."""


def _is_run_entry(name: str) -> bool:
    """One of a run's own files, or a temp file it leaves when killed (`.<name>.tmp<pid>.<token>`, `.checkpoint.*`)."""
    base = name[1:].split(".tmp", 1)[0] if name.startswith(".") and ".tmp" in name else name
    return base in RUN_ENTRIES or name.startswith((TMP_PREFIX, OLD_PREFIX, LOCK + ".", "." + LOCK + "."))


class RunLock(Lease):
    """`RUN/.lock` held by this process (a `vivitcache.lease` lease); `release()` removes it (also at the end of a
    `with` block)."""

    @classmethod
    def acquire_folder(cls, folder: Path) -> RunLock:
        """The lock of `folder`, or RunLockedError naming the live run that holds it."""
        lock = cls(Path(folder) / LOCK, STALE_AFTER_S, HEARTBEAT_S)
        try:
            held = lock.acquire()
        except LeasePathError as e:
            raise RunFolderError(f"{lock.path}: a run lock {e}") from None
        if held:
            return lock
        other = lock.holder or {}
        if not other:
            raise RunLockedError(f"{folder}: could not take the lock {lock.path} (another run keeps taking it)")
        raise RunLockedError(
            f"{folder} is in use by another run (host {other.get('host')}, pid {other.get('pid')}, since "
            f"{other.get('since')}); wait for it to end or use another --out (if that run is dead on another host, "
            f"delete {lock.path})")


def _remove_run_files(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.name != LOCK and _is_run_entry(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _listing(names: list[str], most: int = 4) -> str:
    shown = ", ".join(sorted(names)[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def prepare(folder: str | Path, resume: bool | str, overwrite: bool, lock: RunLock) -> list[str]:
    """Make `folder` ready for a run that holds `lock` on it (module docstring); returns notes to show. Afterwards
    `folder/checkpoint` exists only when the run is to continue from it. RunFolderError when the folder cannot be
    used as asked; nothing is removed then."""
    folder = Path(folder)
    entries = [e.name for e in folder.iterdir() if e.name != LOCK]
    foreign = [n for n in entries if not _is_run_entry(n)]
    notes = []
    if resume:
        notes += recover_checkpoint(folder)
        if (folder / CHECKPOINT_DIR / "model.safetensors").is_file():
            return notes
        if foreign:
            raise RunFolderError(f"--resume: {folder} has no checkpoint and holds {_listing(foreign)}, which a run "
                                 "does not write: is --out right?")
        started = bool(entries) or lock.took_over is not None
        if resume is True and not started:
            raise CheckpointError(f"--resume: no checkpoint and no run in {folder} to continue (is --out right?); "
                                  "--resume auto starts a run when there is nothing to continue")
        if started:
            notes.append(f"--resume: {folder} has no checkpoint yet (the run stopped before its first one): "
                         "starting from scratch")
        _remove_run_files(folder)
        return notes
    if entries and not overwrite:
        raise RunFolderError(f"{folder} is not empty ({_listing(entries)}): --resume continues its run, "
                             "--overwrite replaces a run's files, or choose another --out")
    if foreign:
        raise RunFolderError(f"{folder} holds {_listing(foreign)}, which a run does not write: --overwrite only "
                             "replaces a run's own files; choose another --out")
    _remove_run_files(folder)
    return notes


def open_run_folder(folder: str | Path, resume: bool | str, overwrite: bool) -> tuple[RunLock, list[str]]:
    """Create `folder` if needed, take its lock and `prepare` it: (the lock, to release when the run ends; notes).
    A folder that cannot be created or written (permissions, read-only file system) is a RunFolderError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire_folder(folder)
    except OSError as e:
        raise RunFolderError(f"{folder}: cannot write the run folder ({e.strerror or e})") from e
    try:
        return lock, prepare(folder, resume, overwrite, lock)
    except BaseException:
        lock.release()
        raise
