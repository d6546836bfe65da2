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


class ConfigError(UserError, ValueError):
    """An option or config field out of its range (e.g. `--batch-size 0`); the message names the option."""
