"""`RecipesConfig`: what `vivitcache bench --recipes` runs, one doc line per field, and the `--quick` preset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from vivitcache.bench.config import Preset
from vivitcache.errors import ConfigError

RECIPES = {
    "a": "a_end_to_end",
    "b": "b_frozen_on_the_fly",
    "c": "c_cached",
    "d": "d_no_stage1",
}
"""Recipe letter → its key in recipes.json."""


QUICK: dict[str, Any] = dict(
    classes=4, videos_per_class=4, video_frames=16, temporal_depth=1, image_steps=5, frames=8, epochs=2,
    stage1_frames=4, stage1_epochs=1, batch_size=4,
)
"""`--quick`: tiny everything (the test suite), well under a minute on 2 cores."""


@dataclass
class RecipesConfig(Preset):
    """Whole training recipes on the same data, split, seed, T and epoch budget (`bench/recipes.py`)."""

    QUICK: ClassVar[dict[str, Any]] = QUICK
    COMMAND: ClassVar[tuple[str, ...]] = ("vivitcache", "bench", "--recipes")
    OPTION_NAMES: ClassVar[dict[str, str]] = {"recipes": "only"}
    NONE_AS: ClassVar[str | None] = "0"

    out: str = "runs/recipes"
    """Folder for the data, image checkpoint, stage 1, stores, per-recipe runs, recipes.json/.md/.png."""
    recipes: str = "abcd"
    """Which recipes to run (letters of a, b, c, d); the others are left out of the report."""
    seed: int = 0
    """Seed of the synthetic data, every init, sampling and shuffling."""
    # ---- data
    data: str | None = None
    """Existing annotations (with a train/val split) instead of the synthetic dataset."""
    classes: int = 8
    """Synthetic dataset: motion classes."""
    videos_per_class: int = 48
    """Synthetic dataset: videos per class (a quarter of them validate)."""
    video_frames: int = 64
    """Synthetic dataset: frames per video."""
    video_size: int = 32
    """Synthetic dataset: frame side in pixels (resized to `img_size`)."""
    # ---- model
    model: str = "vit-ti"
    """Spatial ViT alias or timm ViT name."""
    img_size: int | None = 32
    """Spatial input size (None: the model's default, 224)."""
    patch_size: int | None = 8
    """Patch size override (None: the model's default)."""
    spatial_depth: int | None = 2
    """Spatial blocks override (None: the whole model)."""
    temporal_depth: int = 2
    """Temporal transformer blocks."""
    weights: str | None = None
    """Image checkpoint every recipe starts its spatial ViT from (file or folder, e.g. ImageNet ViT-B); None: made
    here by `image-pretrain` (the offline stand-in, `image_steps`), not counted in any recipe's time."""
    image_steps: int = 600
    """Image checkpoint stand-in: localisation steps (used when `weights` is None)."""
    # ---- schedule
    frames: int = 32
    """T: frames per clip of (a) and of every stage 2."""
    epochs: int = 10
    """Epoch budget of every recipe's longest stage: (a)'s only stage, the stage 2 of (b), (c), (d)."""
    stage1_frames: int = 8
    """Stage 1 of (b) and (c): frames per clip."""
    stage1_epochs: int = 2
    """Stage 1 of (b) and (c): epochs. 2: the least time to (a)'s accuracy; 10 buys ~15 points of (c) for ~2× its
    time (BENCHMARKS.md, stage-1 budgets)."""
    batch_size: int = 16
    """Clips per optimiser step in every stage."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, warmup + cosine) in every stage."""
    spatial_lr_scale: float = 0.01
    """LR multiplier of the image-pretrained spatial ViT where it trains ((a), stage 1), as in the demo."""
    eval_views: int = 1
    """Temporal views per val video in every per-epoch validation."""
    # ---- recipe (d): no stage 1
    d_tokens: str = "grid"
    """(d): tokens extracted with the image checkpoint (`extract --tokens`; `pooled` for the one-token store)."""
    d_adapter: str = "attn"
    """(d): adapter of its stage 2 (`train --adapter`; `attn` reads every stored token of a frame, `mlp` one)."""
    # ---- runtime
    device: str = "cpu"
    """cpu, cuda or auto, for every stage and extraction."""
    workers: int = 0
    """DataLoader worker processes of every training stage (decoding (a), (b) and stage 1 on a GPU machine needs
    them); extraction runs in the recipe's process with its own decode threads."""
    threads: int = 1
    """torch threads of every recipe process (1: tiny ops on a shared 2-core machine wait less; 0: torch's default)."""
    quick: bool = False
    """Built from the `--quick` preset (recorded so the command line can be rebuilt)."""

    def __post_init__(self):
        for name in ("img_size", "patch_size", "spatial_depth"):  # 0 on the command line: the model's own
            if getattr(self, name) == 0:
                setattr(self, name, None)
        positive = ("classes", "videos_per_class", "video_frames", "video_size", "temporal_depth", "frames", "epochs",
                    "stage1_frames", "stage1_epochs", "batch_size", "eval_views")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"bench --recipes: {name} must be >= 1, got {getattr(self, name)}")
        if not self.recipes or set(self.recipes) - set(RECIPES):
            raise ConfigError(f"bench --recipes: --only {self.recipes!r}: use letters of {''.join(RECIPES)}")
        if self.workers < 0 or self.threads < 0:
            raise ConfigError("bench --recipes: workers and threads must be >= 0")

