"""Dataclass configs shared by the CLI, stage 1, extraction and stage 2. One doc line per field.

Configs are plain dataclasses so they serialise to JSON (`asdict`) into every artifact and load back with
`from_dict`, which ignores nothing silently: unknown keys raise.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vivitcache.errors import ConfigError

T = TypeVar("T")


def _check(config, name: str, ok: bool, wanted: str) -> None:
    """ConfigError naming the option (`--batch-size`, as the CLI spells it) unless `ok`."""
    if not ok:
        value = getattr(config, name)
        raise ConfigError(f"--{name.replace('_', '-')} {value}: must be {wanted}")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass `cls` from a dict, nested configs included, refusing unknown keys (a typo must not be ignored)."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(cls)  # field types as classes (the annotations are strings here)
    return cls(**{
        k: from_dict(hints[k], v) if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) else v
        for k, v in data.items()
    })


class Serialisable:
    """`to_dict` / `from_dict` of a top-level config (what a run folder records and `--resume` reads back)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return from_dict(cls, d)


@dataclass
class ModelConfig:
    """The ViViT factorised encoder: spatial ViT → adapter → temporal transformer → head."""

    spatial: str = "vit-ti"
    """Spatial model: an alias (vit-ti … vit-g) or a timm ViT-family name, tag included (`vit_base_patch16_clip_224.openai`)."""
    img_size: int | None = None
    """Input size override for the spatial ViT (None: the model's default, e.g. 224)."""
    patch_size: int | None = None
    """Patch size override (None: the model's default). Only for random-init or resampled weights."""
    spatial_depth: int | None = None
    """Number of spatial blocks override (None: the model's default). Tiny demos and tests use 2-4."""
    weights: str | None = None
    """Local spatial weights: a file (safetensors, .pth, .bin) or a model folder; None: `pretrained` or random init."""
    pretrained: bool = False
    """Load the tag's weights from the local Hugging Face cache (offline); exclusive with `weights`."""
    frame_token: str = "pooled"
    """Per-frame feature handed to the temporal stage: `pooled` (the model's own embedding), `cls`, or either + mean patch token."""
    adapter: str = "mlp"
    """Adapter between spatial and temporal: `mlp` (residual, zero-init = identity at start), `linear`, `none`, or
    `attn` (stage 2: a query cross-attends over each frame's stored tokens, `models/attn_adapter.py`)."""
    adapter_ratio: float = 0.5
    """Adapter hidden width as a fraction of the frame-feature width (mlp adapter only)."""
    attn_query: str = "pooled"
    """`attn` adapter: the query is the frame's pooled token (`pooled`) or a learned vector (`learned`)."""
    attn_post: str = "mlp"
    """`attn` adapter: the one-token adapter after it (`mlp`, `linear`, `none`; a stage-1 run's own with `--init`)."""
    tokens_per_frame: int = 1
    """`attn` adapter: K, the stored tokens per frame it attends over (the frame token is then `tokens`)."""
    token_layers: int = 1
    """`attn` adapter: blocks those K tokens come from (one learned embedding each; K / blocks cells each)."""
    temporal_dim: int | None = None
    """Temporal transformer width (None: same as the frame feature width)."""
    temporal_depth: int = 4
    """Number of temporal transformer blocks."""
    temporal_heads: int | None = None
    """Temporal attention heads (None: width // 64, at least 1)."""
    num_frames: int = 8
    """Frames per clip T; the temporal position embeddings have T entries (plus the CLS position)."""
    num_classes: int = 0
    """Number of classes of the head (set from the dataset)."""
    drop_rate: float = 0.0
    """Dropout in the temporal transformer and before the head."""
    drop_path_rate: float = 0.0
    """Stochastic depth in the temporal transformer."""


@dataclass
class OptimConfig:
    """Optimiser, schedule and loss settings shared by stage 1 and stage 2."""

    epochs: int = 10
    """Training epochs."""
    batch_size: int = 16
    """Global batch size (split across processes under torchrun)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.05
    """AdamW weight decay (not applied to norms, biases, position embeddings and CLS tokens)."""
    warmup_epochs: float = 1.0
    """Linear warmup length in epochs, then cosine decay to `min_lr`."""
    min_lr: float = 1e-5
    """Final learning rate of the cosine schedule."""
    spatial_lr_scale: float = 1.0
    """LR multiplier of the spatial ViT when it trains (stage 1): a pretrained backbone is fine-tuned gently; 0 freezes it."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy loss."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: off)."""
    accum_steps: int = 1
    """Gradient accumulation steps per optimiser step."""
    precision: str = "auto"
    """`auto` (bf16 autocast where the device supports it fast, i.e. CUDA with bf16), `bf16`, or `fp32`."""

    def __post_init__(self):
        _check(self, "epochs", self.epochs >= 0, "at least 1")  # 0 only in records of untrained runs; `fit` wants 1
        _check(self, "batch_size", self.batch_size >= 1, "at least 1")
        _check(self, "accum_steps", self.accum_steps >= 1, "at least 1")
        _check(self, "lr", math.isfinite(self.lr) and self.lr > 0, "a positive number")
        _check(self, "min_lr", math.isfinite(self.min_lr) and self.min_lr >= 0, "at least 0")
        _check(self, "weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "at least 0")
        _check(self, "warmup_epochs", math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0, "at least 0")
        _check(self, "spatial_lr_scale", math.isfinite(self.spatial_lr_scale) and self.spatial_lr_scale >= 0,
               "at least 0")
        _check(self, "label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)")
        _check(self, "grad_clip", math.isfinite(self.grad_clip) and self.grad_clip >= 0, "at least 0 (0: off)")
        _check(self, "precision", self.precision in ("auto", "bf16", "fp32"), "auto, bf16 or fp32")


@dataclass
class RunConfig:
    """Where a run writes and how it is reproduced."""

    out: str = "runs/run"
    """Run folder: checkpoint, metrics.jsonl, summary.json, curves.png."""
    seed: int = 0
    """Seed for model init, sampling, shuffling and dropout."""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu`, or `cuda`."""
    workers: int = 0
    """DataLoader worker processes (spawn context; 0 = load in the main process)."""
    eval_views: int = 1
    """Temporal views per validation video (fixed offsets); logits are averaged over views."""
    checkpoint_every: int = 0
    """Also checkpoint every N optimiser steps inside an epoch (0: only at epoch ends)."""
    log_every: int = 10
    """Log a metrics.jsonl line every N optimiser steps."""
    resume: bool | str = False
    """Continue from the run folder's checkpoint (same config required). True: a run that stopped before its first
    checkpoint starts from scratch, a folder with no run is refused; `auto`: continue if there is a checkpoint, else
    start (also in a new folder)."""
    overwrite: bool = False
    """Replace an earlier run's files in `out` (only the run's own files; a folder holding others is refused)."""

    def __post_init__(self):
        if self.resume in ("yes", "true"):  # the CLI's spellings
            self.resume = True
        elif self.resume in ("no", "false"):
            self.resume = False
        _check(self, "resume", self.resume in (True, False, "auto"), "a flag, or auto")
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume: give one of them (replace the run, or continue it)")
        _check(self, "workers", self.workers >= 0, "at least 0")
        _check(self, "eval_views", self.eval_views >= 1, "at least 1")
        _check(self, "checkpoint_every", self.checkpoint_every >= 0, "at least 0 (0: epoch ends only)")
        _check(self, "log_every", self.log_every >= 1, "at least 1")


@dataclass
class DataConfig:
    """Video data for stage 1 (decoded pixels)."""

    data: str = ""
    """Annotations: a class-per-folder directory, a CSV, a Kinetics CSV, or an SSv2 JSON."""
    video_root: str | None = None
    """Root folder of the videos for Kinetics CSV / SSv2 JSON annotations."""
    labels: str | None = None
    """SSv2 labels JSON (class name → index)."""
    fps: float | None = None
    """Sample source frames at this rate (by timestamps; VFR safe) before clip sampling (None: every frame)."""
    stride: int | None = None
    """Keep every K-th source frame before clip sampling (exclusive with fps)."""


@dataclass
class PretrainConfig(Serialisable):
    """Stage 1: the whole ViViT trained end to end on short clips."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Model settings."""
    data: DataConfig = field(default_factory=DataConfig)
    """Video data settings."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser settings."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder, seed, device."""
