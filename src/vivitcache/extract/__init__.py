"""Extraction: run the frozen spatial ViT once over every frame into a Zarr v3 token store, fanned out by Dask.

`run_extract(ExtractConfig(...)) -> summary`. Modules: `config` (settings), `source` (model, preprocessing,
sampling, fingerprint), `pipeline` (one part: threaded decode → batched model on the device → ordered writes),
`devices` (one pinned worker process per GPU, cores from the affinity), `throughput` (`--batch-size auto`,
`--compile`), `runner` (parts, Dask fan-out, progress, summary). Never imports `train_temporal/`.
"""

from vivitcache.extract.config import ExtractConfig, ExtractConfigError
from vivitcache.extract.runner import ExtractFailures, run_extract

__all__ = ["ExtractConfig", "ExtractConfigError", "ExtractFailures", "run_extract"]
