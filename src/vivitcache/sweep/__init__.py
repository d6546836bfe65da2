"""`vivitcache sweep`: many stage-2 configs trained in one process on one stream of batches.

- `grid`: the configs (comma lists of `train` options, a TOML grid file), named by what varies;
- `run`: groups by what decides the batches, builds each config as `train` would, one `fit_many` per group;
- `halving`: successive-halving pruning; `memory`: the memory check before the first step;
- `report`: sweep.json / sweep.md / sweep.png.
"""

from vivitcache.sweep.config import SweepConfig
from vivitcache.sweep.grid import ConfigArgs, OptionKinds, expand
from vivitcache.sweep.run import load_manifest, run_sweep

__all__ = ["ConfigArgs", "OptionKinds", "SweepConfig", "expand", "load_manifest", "run_sweep"]
