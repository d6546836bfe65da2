"""Stage 2: adapter + temporal transformer + head trained on cached per-frame tokens (`vivitcache train`/`eval`).

Never imports `vivitcache.extract` and never decodes a pixel: the token store is its only input.

The names below load on first use (PEP 562), so the CLI reads `TrainConfig`'s defaults without importing torch.
"""

from vivitcache.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "INIT_PARTS": "config",
    "AugmentConfig": "config",
    "TrainConfig": "config",
    "InitError": "build",
    "build_stage2_model": "build",
    "build_token_model": "build",
    "check_store_matches_stage1": "build",
    "hashed_split": "run",
    "run_eval": "run",
    "run_train": "run",
    "split_videos": "run",
})
