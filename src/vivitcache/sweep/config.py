"""`SweepConfig`: the sweep's own settings (`vivitcache sweep`); every config's settings are a `TrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from vivitcache.config import Serialisable
from vivitcache.errors import ConfigError

PRUNERS = ("none", "halving")


@dataclass
class SweepConfig(Serialisable):
    """Where a sweep writes, which grid it reads, and whether it prunes."""

    out: str = "runs/sweep"
    """Sweep folder: `configs/<name>/` (a stage-2 run folder per config), sweep.json, sweep.md, sweep.png."""
    grid: str | None = None
    """TOML grid file (`[grid]` product and/or `[[config]]` list), multiplied with the command line's lists."""
    prune: str = "none"
    """`halving`: successive halving at epochs E/2, E/4, … (sweep/halving.py); `none`: every config trains to its end."""
    resume: bool = False
    """Continue every unfinished config of the sweep in `out` (same grid; the grid may be left out)."""
    overwrite: bool = False
    """Replace an earlier sweep's files in `out`."""

    def __post_init__(self):
        if self.prune not in PRUNERS:
            raise ConfigError(f"--prune {self.prune}: use one of {', '.join(PRUNERS)}")
        if self.resume and self.overwrite:
            raise ConfigError("--overwrite and --resume: give one of them (replace the sweep, or continue it)")
