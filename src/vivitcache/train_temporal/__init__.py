"""Stage 2: adapter + temporal transformer + head trained on cached per-frame tokens (`vivitcache train`/`eval`).

Never imports `vivitcache.extract` and never decodes a pixel: the token store is its only input.
"""

from vivitcache.train_temporal.config import INIT_PARTS, AugmentConfig, TrainConfig
from vivitcache.train_temporal.init import InitError, build_stage2_model, build_token_model, check_store_matches_stage1
from vivitcache.train_temporal.run import hashed_split, run_eval, run_train, split_videos

__all__ = [
    "INIT_PARTS",
    "AugmentConfig",
    "InitError",
    "TrainConfig",
    "build_stage2_model",
    "build_token_model",
    "check_store_matches_stage1",
    "hashed_split",
    "run_eval",
    "run_train",
    "split_videos",
]
