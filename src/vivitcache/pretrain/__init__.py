"""Stage 1: end-to-end ViViT training on short clips."""

from vivitcache.pretrain.run import run_pretrain

__all__ = ["run_pretrain"]
