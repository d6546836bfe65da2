"""`vivitcache demo`: the whole method end to end, offline — synthetic videos → stage 1 (short clips, end to end) →
extract (Dask) → stage 2 (long clips on cached tokens, stage-1 init) → eval → OUT/report.md + OUT/report.json.

`run_demo(DemoConfig(...)) -> dict`. Modules: `config` (every number, `--quick` preset), `run` (the steps, through
the same library calls as the CLI commands, timed), `report` (tables, takeaway, Markdown + JSON).
"""

from vivitcache.demo.config import DemoConfig
from vivitcache.demo.run import DemoOutputExistsError, run_demo

__all__ = ["DemoConfig", "DemoOutputExistsError", "run_demo"]
