"""What made an artifact: recorded in every store, checkpoint and report."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from vivitcache import __version__

_PACKAGES = ("torch", "timm", "zarr", "numcodecs", "av", "dask", "numpy")


def _git_commit() -> str | None:
    """The vivitcache source commit when run from a checkout (None when installed from a wheel)."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def now_iso() -> str:
    """UTC time, ISO 8601, second precision."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(argv: list[str] | None = None) -> dict:
    """vivitcache version and commit, library versions, host, python, time, the command line and the folder it ran
    in (relative paths in `argv` are relative to `cwd`)."""
    return {
        "vivitcache": __version__,
        "git_commit": _git_commit(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "time": now_iso(),
        "argv": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
    }
