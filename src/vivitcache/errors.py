"""The project's error classes.

`UserError` marks bad input, or a state on disk the user has to act on (a used run folder, a lock held by another
run): the CLI prints its message as one `error: ...` line and exits with status 2. Every other exception is a bug
(or a failure we did not foresee) and keeps its traceback, so it can be reported and fixed.

Named errors of the modules subclass `UserError` (and, where older callers catch it, `ValueError`), e.g.
`AnnotationError`, `CheckpointError`, `StoreError`, `ConfigError`.
"""

from __future__ import annotations


class VivitcacheError(Exception):
    """Base of every error vivitcache raises on purpose."""


class UserError(VivitcacheError):
    """Bad input or a state the user must act on; the message is one line that says what and where."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught "):
            args = (self._from_worker(args[0]),)
        super().__init__(*args)

    @classmethod
    def _from_worker(cls, message: str) -> str:
        """torch re-raises a DataLoader worker's error in the main process as `type(e)("Caught <type> in DataLoader
        worker process N.\nOriginal Traceback ...\n<module.type>: <message>")`: keep its one line and the worker."""
        head, _, rest = message.partition("\nOriginal Traceback")
        mark = f"\n{cls.__module__}.{cls.__qualname__}: "
        if not rest or mark not in rest:
            return message
        where = head.removeprefix(f"Caught {cls.__name__} ").rstrip(".")
        return f"{rest.rsplit(mark, 1)[1].strip()} ({where})"


class ConfigError(UserError, ValueError):
    """An option or config field out of its range (e.g. `--batch-size 0`); the message names the option."""
