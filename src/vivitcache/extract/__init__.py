"""Extraction: run the frozen spatial ViT once over every frame into a Zarr v3 token store, fanned out by Dask.

`run_extract(ExtractConfig(...)) -> summary`. Modules: `config` (settings), `source` (model, preprocessing,
sampling, fingerprint), `pipeline` (one part: threaded decode → batched model on the device → ordered writes),
`devices` (one pinned worker process per GPU, cores from the affinity), `throughput` (`--batch-size auto`,
`--compile`), `runner` (parts, Dask fan-out, progress, summary). Never imports `train_temporal/`.
"""

from vivitcache.lazy import lazy_exports

# Loaded on first use (PEP 562): the CLI takes its defaults from `config` without importing the runner (Dask).
__getattr__, __all__ = lazy_exports(__name__, {
    "ExtractConfig": "config",
    "ExtractConfigError": "config",
    "ExtractFailures": "runner",
    "run_extract": "runner",
})
