"""Dataclass configs shared by the CLI, stage 1, extraction and stage 2. One doc line per field: its option help
(`opt`, `options.py`), and a docstring where there is more to say.

Configs are plain dataclasses so they serialise to JSON (`asdict`) into every artifact and load back with
`from_dict`, which ignores nothing silently: unknown keys raise.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vivitcache.errors import ConfigError
from vivitcache.options import check_fields, opt
from vivitcache.store.layout import FRAME_TOKENS

T = TypeVar("T")

ADAPTER_KINDS = ("mlp", "linear", "none", "attn")
"""Adapters between the frame features and the temporal transformer (`models/adapter.py`; `attn`: stage 2 only)."""
PIXEL_ADAPTERS = tuple(kind for kind in ADAPTER_KINDS if kind != "attn")
"""The adapters of a model that sees pixels (stage 1): `attn` attends over stored tokens."""
ALL_TOKENS = "tokens"
"""The frame token of an `attn` adapter's model: every stored token of a frame (`models/tokens.py`)."""

# help texts of options that several configs share
DATA_HELP = "Class-per-folder dir, CSV path,label[,split], Kinetics CSV, or SSv2 JSON."
VIDEO_ROOT_HELP = "Video folder for Kinetics CSV / SSv2 JSON annotations."
LABELS_HELP = "SSv2 labels JSON (class name → index)."
FPS_HELP = "Sample source frames at this rate (timestamp based, VFR safe)."
STRIDE_HELP = "Keep every K-th source frame."
WEIGHTS_HELP = ("Spatial weights: a file (safetensors, .pth, .bin; open_clip and DINOv2 checkpoints too) or a model "
                "folder (a Hugging Face snapshot).")
PRETRAINED_HELP = "Load the model tag's weights from the local Hugging Face cache (HF_HUB_CACHE / HF_HOME), offline."
SEED_HELP = "Seed for init, sampling and shuffling."
DEVICE_HELP = "auto, cpu or cuda."
RESUME_HELP = ("Continue the run in --out from its checkpoint (a run stopped before its first one starts over). "
               "`--resume auto`: continue if there is a checkpoint, else start, also in a new folder (for requeued "
               "jobs).")


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

    spatial: str = field(default="vit-ti", metadata=opt(
        "Spatial model: vit-ti|vit-s|vit-b|vit-l|vit-h|vit-g or a timm ViT-family name with its tag, e.g. "
        "vit_base_patch16_clip_224.openai.", flag="model"))
    """Spatial model: an alias (vit-ti … vit-g) or a timm ViT-family name, tag included (`vit_base_patch16_clip_224.openai`)."""
    img_size: int | None = field(default=None, metadata=opt("Spatial input size override (default: the model's).", ge=1))
    """Input size override for the spatial ViT (None: the model's default, e.g. 224)."""
    patch_size: int | None = field(default=None, metadata=opt("Patch size override (random-init models).", ge=1))
    """Patch size override (None: the model's default). Only for random-init or resampled weights."""
    spatial_depth: int | None = field(default=None, metadata=opt(
        "Spatial depth override (tiny random-init models).", ge=1))
    """Number of spatial blocks override (None: the model's default). Tiny demos and tests use 2-4."""
    weights: str | None = field(default=None, metadata=opt(WEIGHTS_HELP, path=True))
    """Local spatial weights: a file (safetensors, .pth, .bin) or a model folder; None: `pretrained` or random init."""
    pretrained: bool = field(default=False, metadata=opt(PRETRAINED_HELP))
    """Load the tag's weights from the local Hugging Face cache (offline); exclusive with `weights`."""
    frame_token: str = field(default="pooled", metadata=opt(
        "Per-frame feature: pooled (the model's own embedding), cls, or either + mean patch token.", choices=(*FRAME_TOKENS, ALL_TOKENS)))
    """Per-frame feature handed to the temporal stage: `pooled` (the model's own embedding), `cls`, or either + mean patch token."""
    adapter: str = field(default="mlp", metadata=opt("Adapter between spatial and temporal.", choices=ADAPTER_KINDS))
    """Adapter between spatial and temporal: `mlp` (residual, zero-init = identity at start), `linear`, `none`, or
    `attn` (stage 2: a query cross-attends over each frame's stored tokens, `models/attn_adapter.py`)."""
    adapter_ratio: float = 0.5
    """Adapter hidden width as a fraction of the frame-feature width (mlp adapter only)."""
    attn_query: str = field(default="pooled", metadata=opt(
        "--adapter attn: the query is the frame's pooled token, or learned.", choices=("pooled", "learned")))
    """`attn` adapter: the query is the frame's pooled token (`pooled`) or a learned vector (`learned`)."""
    attn_post: str = "mlp"
    """`attn` adapter: the one-token adapter after it (`mlp`, `linear`, `none`; a stage-1 run's own with `--init`)."""
    tokens_per_frame: int = 1
    """`attn` adapter: K, the stored tokens per frame it attends over (the frame token is then `tokens`)."""
    token_layers: int = 1
    """`attn` adapter: blocks those K tokens come from (one learned embedding each; K / blocks cells each)."""
    temporal_dim: int | None = field(default=None, metadata=opt(
        "Temporal width (default: the frame feature's).", ge=1))
    """Temporal transformer width (None: same as the frame feature width)."""
    temporal_depth: int = field(default=4, metadata=opt("Temporal transformer blocks.", ge=1))
    """Number of temporal transformer blocks."""
    temporal_heads: int | None = field(default=None, metadata=opt(
        "Temporal heads (default: width // 64).", ge=1))
    """Temporal attention heads (None: width // 64, at least 1)."""
    num_frames: int = field(default=8, metadata=opt(
        "Frames per clip (stage 1: short clips, e.g. 8).", flag="frames", ge=1))
    """Frames per clip T; the temporal position embeddings have T entries (plus the CLS position)."""
    num_classes: int = 0
    """Number of classes of the head (set from the dataset)."""
    drop_rate: float = field(default=0.0, metadata=opt(
        "Dropout in the temporal transformer and before the head.", ge=0, lt=1))
    drop_path_rate: float = field(default=0.0, metadata=opt(
        "Stochastic depth in the temporal transformer.", ge=0, lt=1))

    def __post_init__(self):
        check_fields(self)


@dataclass
class OptimConfig:
    """Optimiser, schedule and loss settings shared by stage 1 and stage 2."""

    epochs: int = field(default=10, metadata=opt(
        "Training epochs.", ge=0, must="at least 1"))  # 0 only in records of untrained runs; `fit` wants 1
    batch_size: int = field(default=16, metadata=opt("Global batch size per optimiser step.", ge=1))
    """Global batch size (split across processes under torchrun)."""
    lr: float = field(default=1e-3, metadata=opt("Peak learning rate (AdamW, warmup + cosine).", gt=0))
    """Peak learning rate of AdamW."""
    weight_decay: float = field(default=0.05, metadata=opt("AdamW weight decay.", ge=0))
    """AdamW weight decay (not applied to norms, biases, position embeddings and CLS tokens)."""
    warmup_epochs: float = field(default=1.0, metadata=opt("Warmup epochs.", ge=0))
    """Linear warmup length in epochs, then cosine decay to `min_lr`."""
    min_lr: float = field(default=1e-5, metadata=opt("Final learning rate of the cosine schedule.", ge=0))
    spatial_lr_scale: float = field(default=1.0, metadata=opt(
        "LR multiplier of the spatial ViT (0 freezes it).", ge=0))
    """LR multiplier of the spatial ViT when it trains (stage 1): a pretrained backbone is fine-tuned gently; 0 freezes it."""
    label_smoothing: float = field(default=0.1, metadata=opt("Label smoothing.", ge=0, lt=1))
    """Label smoothing of the cross-entropy loss."""
    grad_clip: float = field(default=1.0, metadata=opt(
        "Clip the gradient norm to this (0: off).", ge=0, note="0: off"))
    """Clip the global gradient norm to this value (0: off)."""
    accum_steps: int = field(default=1, metadata=opt("Gradient accumulation steps.", ge=1))
    """Gradient accumulation steps per optimiser step."""
    precision: str = field(default="auto", metadata=opt(
        "auto = bf16 autocast on CUDA, fp32 on CPU.", choices=("auto", "bf16", "fp32")))
    """`auto` (bf16 autocast where the device supports it fast, i.e. CUDA with bf16), `bf16`, or `fp32`."""

    def __post_init__(self):
        check_fields(self)


@dataclass
class RunConfig:
    """Where a run writes and how it is reproduced."""

    out: str = field(default="runs/run", metadata=opt("Run folder.", path=True))
    """Run folder: checkpoint, metrics.jsonl, summary.json, curves.png."""
    seed: int = field(default=0, metadata=opt(SEED_HELP))
    """Seed for model init, sampling, shuffling and dropout."""
    device: str = field(default="auto", metadata=opt(DEVICE_HELP))
    """`auto` (cuda if available, else cpu), `cpu`, or `cuda`."""
    workers: int = field(default=0, metadata=opt("DataLoader worker processes (spawn).", ge=0))
    """DataLoader worker processes (spawn context; 0 = load in the main process)."""
    eval_views: int = field(default=1, metadata=opt("Temporal views per validation video.", ge=1))
    """Temporal views per validation video (fixed offsets); logits are averaged over views."""
    checkpoint_every: int = field(default=0, metadata=opt(
        "Also checkpoint every N steps (0: epoch ends).", ge=0, note="0: epoch ends only"))
    """Also checkpoint every N optimiser steps inside an epoch (0: only at epoch ends)."""
    log_every: int = field(default=10, metadata=opt("Log a metrics line every N optimiser steps.", ge=1))
    """Log a metrics.jsonl line every N optimiser steps."""
    resume: bool | str = field(default=False, metadata=opt(RESUME_HELP, auto_arg=True))
    """Continue from the run folder's checkpoint (same config required). True: a run that stopped before its first
    checkpoint starts from scratch, a folder with no run is refused; `auto`: continue if there is a checkpoint, else
    start (also in a new folder)."""
    overwrite: bool = field(default=False, metadata=opt(
        "Replace an earlier run's files in --out (only a run's own files; a folder holding others is refused)."))
    """Replace an earlier run's files in `out` (only the run's own files; a folder holding others is refused)."""

    def __post_init__(self):
        if self.resume in ("yes", "true"):  # the CLI's spellings
            self.resume = True
        elif self.resume in ("no", "false"):
            self.resume = False
        if self.resume not in (True, False, "auto"):
            raise ConfigError(f"--resume {self.resume}: must be a flag, or auto")
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume: give one of them (replace the run, or continue it)")
        check_fields(self)


@dataclass
class DataConfig:
    """Video data for stage 1 (decoded pixels)."""

    data: str = field(default="", metadata=opt(DATA_HELP, required=True))
    """Annotations: a class-per-folder directory, a CSV, a Kinetics CSV, or an SSv2 JSON."""
    video_root: str | None = field(default=None, metadata=opt(VIDEO_ROOT_HELP))
    """Root folder of the videos for Kinetics CSV / SSv2 JSON annotations."""
    labels: str | None = field(default=None, metadata=opt(LABELS_HELP))
    """SSv2 labels JSON (class name → index)."""
    fps: float | None = field(default=None, metadata=opt(FPS_HELP, gt=0))
    """Sample source frames at this rate (by timestamps; VFR safe) before clip sampling (None: every frame)."""
    stride: int | None = field(default=None, metadata=opt(STRIDE_HELP, ge=1))
    """Keep every K-th source frame before clip sampling (exclusive with fps)."""

    def __post_init__(self):
        check_fields(self)


@dataclass
class PretrainConfig(Serialisable):
    """Stage 1: the whole ViViT trained end to end on short clips."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Model settings."""
    data: DataConfig = field(default_factory=DataConfig)
    """Video data settings."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser settings."""
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/stage1"))
    """Run folder (default runs/stage1), seed, device."""


@dataclass
class PredictConfig:
    """`vivitcache predict`: the top classes of one video (`vivitcache.predict.predict`)."""

    checkpoint: str = field(default="", metadata=opt("Stage-2 run folder.", path=True, required=True))
    store: str | None = field(default=None, metadata=opt(
        "Read cached tokens when the video is in this store.", path=True))
    spatial: str | None = field(default=None, metadata=opt(
        "Spatial ViT for on-the-fly: stage-1 run or weights file."))
    eval_views: int | None = field(default=None, metadata=opt("Temporal views (default: the run's).", ge=1))
    top: int = field(default=5, metadata=opt("How many classes to show.", ge=1))

    def __post_init__(self):
        check_fields(self)
