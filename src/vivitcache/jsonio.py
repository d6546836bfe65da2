"""The one atomic JSON writer of every artifact (store records, checkpoints, summaries, reports)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

TEMP_GLOB = ".*.tmp*"
"""Matches the temp files `write_json_atomic` leaves when killed (for cleanup of old leftovers)."""


def write_json_atomic(path: str | Path, data: Any, **dump_kwargs) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one: a hidden temp file beside it
    (`.<name>.tmp<pid>.<token>`, unique per writer and thread), fsync, `os.replace`; the temp file is removed on failure.

    `dump_kwargs` go to `json.dump` (default: sorted keys, indent 1).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, **{"indent": 1, "sort_keys": True, **dump_kwargs})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
