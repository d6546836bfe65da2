"""`vivitcache bench`: the three stage-2 cost modes side by side — (a) end to end, (b) spatial frozen but run on the
fly (the paper's method), (c) cached tokens (vivitcache) — on the same data, backbone, split, seed and epochs.

`run_bench(BenchConfig(...)) -> dict` writes OUT/bench.json and OUT/bench.md. Modules: `config` (settings, `--quick`
preset), `modes` (one function per mode, run in its own process), `run` (data, init, extraction, ratios, report).
"""

from vivitcache.bench.config import BenchConfig
from vivitcache.bench.run import break_even_epochs, run_bench

__all__ = ["BenchConfig", "break_even_epochs", "run_bench"]
