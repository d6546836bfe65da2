"""`RecipesConfig`: what `vivitcache bench --recipes` runs, one doc line per field, and the `--quick` preset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from vivitcache.bench.config import Preset, model_sizes_of_zero_are_none, same_option
from vivitcache.config import ADAPTER_KINDS
from vivitcache.errors import ConfigError
from vivitcache.options import check_fields, opt, valid
from vivitcache.store.layout import TOKEN_KINDS

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

    out: str = field(default="runs/recipes", metadata=opt("Folder for data, image checkpoint, stage 1, stores, per-recipe runs, recipes.json/.md/.png.", path=True))
    """Folder for the data, image checkpoint, stage 1, stores, per-recipe runs, recipes.json/.md/.png."""
    recipes: str = field(default="abcd", metadata=opt("Which recipes, letters of abcd.", flag="only"))
    """Which recipes to run (letters of a, b, c, d); the others are left out of the report."""
    seed: int = field(default=0, metadata=same_option("seed"))
    """Seed of the synthetic data, every init, sampling and shuffling."""
    # ---- data
    data: str | None = field(default=None, metadata=same_option("data"))
    """Existing annotations (with a train/val split) instead of the synthetic dataset."""
    classes: int = field(default=8, metadata=same_option("classes"))
    """Synthetic dataset: motion classes."""
    videos_per_class: int = field(default=48, metadata=same_option("videos_per_class"))
    """Synthetic dataset: videos per class (a quarter of them validate)."""
    video_frames: int = field(default=64, metadata=same_option("video_frames"))
    """Synthetic dataset: frames per video."""
    video_size: int = field(default=32, metadata=same_option("video_size"))
    """Synthetic dataset: frame side in pixels (resized to `img_size`)."""
    # ---- model
    model: str = field(default="vit-ti", metadata=same_option("model"))
    """Spatial ViT alias or timm ViT name."""
    img_size: int | None = field(default=32, metadata=same_option("img_size"))
    """Spatial input size (None: the model's default, 224)."""
    patch_size: int | None = field(default=8, metadata=same_option("patch_size"))
    """Patch size override (None: the model's default)."""
    spatial_depth: int | None = field(default=2, metadata=same_option("spatial_depth"))
    """Spatial blocks override (None: the whole model)."""
    temporal_depth: int = field(default=2, metadata=same_option("temporal_depth"))
    """Temporal transformer blocks."""
    weights: str | None = field(default=None, metadata=opt("Image checkpoint of the spatial ViT (none: made by image-pretrain)."))
    """Image checkpoint every recipe starts its spatial ViT from (file or folder, e.g. ImageNet ViT-B); None: made
    here by `image-pretrain` (the offline stand-in, `image_steps`), not counted in any recipe's time."""
    image_steps: int = field(default=600, metadata=opt("image-pretrain steps when no --weights.", ge=1))
    """Image checkpoint stand-in: localisation steps (used when `weights` is None)."""
    # ---- schedule
    frames: int = field(default=32, metadata=same_option("frames"))
    """T: frames per clip of (a) and of every stage 2."""
    epochs: int = field(default=10, metadata=opt("Epoch budget of every recipe's longest stage.", ge=1))
    """Epoch budget of every recipe's longest stage: (a)'s only stage, the stage 2 of (b), (c), (d)."""
    stage1_frames: int = field(default=8, metadata=opt("Stage-1 frames per clip of (b) and (c).", ge=1))
    """Stage 1 of (b) and (c): frames per clip."""
    stage1_epochs: int = field(default=2, metadata=opt("Stage-1 epochs of (b) and (c).", ge=1))
    """Stage 1 of (b) and (c): epochs. 2: the least time to (a)'s accuracy; 10 buys ~15 points of (c) for ~2× its
    time (BENCHMARKS.md, stage-1 budgets)."""
    batch_size: int = field(default=16, metadata=same_option("batch_size"))
    """Clips per optimiser step in every stage."""
    lr: float = field(default=1e-3, metadata=opt("Peak learning rate of every stage.", gt=0))
    """Peak learning rate (AdamW, warmup + cosine) in every stage."""
    spatial_lr_scale: float = field(default=0.01, metadata=valid(ge=0))
    """LR multiplier of the image-pretrained spatial ViT where it trains ((a), stage 1), as in the demo."""
    eval_views: int = field(default=1, metadata=opt("Temporal views per val video.", ge=1))
    """Temporal views per val video in every per-epoch validation."""
    # ---- recipe (d): no stage 1
    d_tokens: str = field(default="grid", metadata=opt("Tokens (d) extracts.", choices=TOKEN_KINDS))
    """(d): tokens extracted with the image checkpoint (`extract --tokens`; `pooled` for the one-token store)."""
    d_adapter: str = field(default="attn", metadata=opt("Adapter of (d)'s stage 2.", choices=ADAPTER_KINDS))
    """(d): adapter of its stage 2 (`train --adapter`; `attn` reads every stored token of a frame, `mlp` one)."""
    # ---- runtime
    device: str = field(default="cpu", metadata=same_option("device"))
    """cpu, cuda or auto, for every stage and extraction."""
    workers: int = field(default=0, metadata=opt("DataLoader workers of every stage (GPU machines).", ge=0))
    """DataLoader worker processes of every training stage (decoding (a), (b) and stage 1 on a GPU machine needs
    them); extraction runs in the recipe's process with its own decode threads."""
    threads: int = field(default=1, metadata=same_option("threads"))
    """torch threads of every recipe process (1: tiny ops on a shared 2-core machine wait less; 0: torch's default)."""
    quick: bool = field(default=False, metadata=same_option("quick"))
    """Built from the `--quick` preset (recorded so the command line can be rebuilt)."""

    def __post_init__(self):
        model_sizes_of_zero_are_none(self)
        check_fields(self)
        if not self.recipes or set(self.recipes) - set(RECIPES):
            raise ConfigError(f"bench --recipes: --only {self.recipes!r}: use letters of {''.join(RECIPES)}")

