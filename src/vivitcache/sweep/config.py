"""`SweepConfig`: the sweep's own settings (`vivitcache sweep`); every config's settings are a `TrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from vivitcache.config import Serialisable
from vivitcache.errors import ConfigError
from vivitcache.options import check_fields, opt

PRUNERS = ("none", "halving")


@dataclass
class SweepConfig(Serialisable):
    """Where a sweep writes, which grid it reads, and whether it prunes."""

    out: str = field(default="runs/sweep", metadata=opt(
        "Sweep folder: configs/<name>/ run folders, sweep.json, sweep.md, sweep.png.", path=True))
    """Sweep folder: `configs/<name>/` (a stage-2 run folder per config), sweep.json, sweep.md, sweep.png."""
    grid: str | None = field(default=None, metadata=opt(
        "TOML grid: a \\[grid] table (lists multiplied out) and/or \\[\\[config]] tables.", path=True))
    """TOML grid file (`[grid]` product and/or `[[config]]` list), multiplied with the command line's lists."""
    prune: str = field(default="none", metadata=opt(
        "halving: stop the worse half of the configs at epochs E/2, E/4, … (successive halving).", choices=PRUNERS))
    """`halving`: successive halving at epochs E/2, E/4, … (sweep/halving.py); `none`: every config trains to its end."""
    resume: bool = field(default=False, metadata=opt(
        "Continue every unfinished config of the sweep in --out (train options may be left out)."))
    """Continue every unfinished config of the sweep in `out` (same grid; the grid may be left out)."""
    overwrite: bool = field(default=False, metadata=opt("Replace an earlier sweep's files in --out."))
    """Replace an earlier sweep's files in `out`."""

    def __post_init__(self):
        check_fields(self)
        if self.resume and self.overwrite:
            raise ConfigError("--overwrite and --resume: give one of them (replace the sweep, or continue it)")
