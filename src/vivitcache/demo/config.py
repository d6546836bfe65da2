"""`DemoConfig`: every number of `vivitcache demo` in one place, one doc line per field, and the `--quick` preset."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any

from vivitcache.errors import ConfigError


@dataclass
class DemoConfig:
    """The whole method end to end on a synthetic dataset: synth → stage 1 → extract → stage 2 → eval → report."""

    out: str = "demo_out"
    """Folder for data/, stage1/, tokens.zarr, stage2/, report.md and report.json."""
    seed: int = 0
    """Seed of the synthetic videos, both models' init, clip sampling and shuffling."""
    # ---- synthetic dataset
    classes: int = 8
    """Synthetic dataset: motion classes (the first N of `data.synth.CLASS_NAMES`)."""
    videos_per_class: int = 96
    """Synthetic dataset: videos per class."""
    video_frames: int = 64
    """Synthetic dataset: frames per video (stage 2 samples `stage2_frames` of them from the cached tokens)."""
    video_size: int = 32
    """Synthetic dataset: frame side in pixels."""
    val_fraction: float = 0.25
    """Synthetic dataset: fraction of each class's videos in the val split (both stages validate on them)."""
    # ---- the tiny model (random init under the seed: no hub, no download)
    model: str = "vit-ti"
    """Spatial ViT alias or timm ViT name."""
    img_size: int = 32
    """Spatial ViT input size."""
    patch_size: int = 8
    """Spatial ViT patch size."""
    spatial_depth: int = 2
    """Spatial ViT blocks."""
    temporal_depth: int = 2
    """Temporal transformer blocks."""
    # ---- image checkpoint: offline stand-in for ImageNet weights (`vivitcache image-pretrain`)
    image_steps: int = 600
    """Image checkpoint: localisation steps on single frames (0: stage 1 starts from a random-init ViT)."""
    image_batch_size: int = 64
    """Image checkpoint: frames per step."""
    # ---- stage 1: the whole ViViT end to end on decoded pixels
    stage1_frames: int = 8
    """Stage 1: frames per clip."""
    stage1_epochs: int = 20
    """Stage 1: training epochs."""
    stage1_lr: float = 1e-3
    """Stage 1: peak learning rate (AdamW, warmup + cosine)."""
    stage1_batch_size: int = 16
    """Stage 1: clips per optimiser step."""
    stage1_spatial_lr_scale: float = 0.01
    """Stage 1: LR multiplier of the (image-pretrained) spatial ViT; 0.01 kept its localisation (val top-1 71 % vs
    29 % at 0.1, measured)."""
    # ---- extraction
    extract_workers: int = 2
    """Extraction: Dask LocalCluster worker processes (0: in this process, no Dask)."""
    videos_per_part: int = 16
    """Extraction: videos per part (one Dask task each); at least as many parts as workers keeps all of them busy."""
    # ---- stage 2: adapter + temporal + head on cached tokens, initialised from stage 1
    stage2_frames: int = 32
    """Stage 2: frames per clip (stage 1's temporal position embeddings are interpolated to it)."""
    stage2_epochs: int = 20
    """Stage 2: training epochs."""
    stage2_lr: float = 1e-3
    """Stage 2: peak learning rate (AdamW, warmup + cosine)."""
    stage2_batch_size: int = 16
    """Stage 2: clips per optimiser step."""
    # ---- evaluation and runtime
    eval_views: int = 2
    """Temporal views per val video, in both stages' per-epoch validation and in the final eval."""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu` or `cuda`, for both stages and extraction."""
    threads: int | None = None
    """torch intra-op threads of both stages and the eval (None: torch's default, one per core); extraction's Dask
    workers share the cores among themselves. 1 is much faster on a 2-core machine busy with other work."""
    quick: bool = False
    """Shrink every setting left at its default above to the `QUICK` preset (tests: the whole demo in < 40 s)."""

    def __post_init__(self):
        if self.quick:
            for name, value in QUICK.items():
                if getattr(self, name) == _FULL[name]:
                    setattr(self, name, value)
        self.check()

    @classmethod
    def preset(cls, quick: bool = False, **overrides: Any) -> DemoConfig:
        """The default or `--quick` settings, then every override that is not None (an override equal to a full
        default survives `quick`, unlike the same value passed to the constructor)."""
        cfg = cls(quick=quick)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"demo: unknown setting(s) {unknown}")
        for name, value in overrides.items():
            if value is not None:
                setattr(cfg, name, value)
        cfg.check()
        return cfg

    def check(self) -> None:
        """ValueError (one line: which setting and why) for settings the demo cannot run with."""
        positive = ("classes", "videos_per_class", "video_frames", "video_size", "img_size", "patch_size",
                    "spatial_depth", "temporal_depth", "stage1_frames", "stage1_epochs", "stage1_batch_size",
                    "videos_per_part", "stage2_frames", "stage2_epochs", "stage2_batch_size", "eval_views")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"demo: {name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"demo: threads must be >= 1, got {self.threads}")
        if self.extract_workers < 0:
            raise ConfigError(f"demo: extract_workers must be >= 0, got {self.extract_workers}")
        if self.val_videos_per_class() < 1:
            raise ConfigError(f"demo: val_fraction {self.val_fraction} of {self.videos_per_class} videos per class "
                             "leaves no val video: both stages' accuracies need one")
        train = self.classes * (self.videos_per_class - self.val_videos_per_class())
        for name in ("stage1_batch_size", "stage2_batch_size"):
            if getattr(self, name) > train:
                raise ConfigError(f"demo: {name} {getattr(self, name)} is more than the {train} training videos "
                                 "(no full batch, no step)")

    def val_videos_per_class(self) -> int:
        """Val videos per class, by the rule of `make_synth_dataset` (the last round(fraction · n) of each class)."""
        return round(self.val_fraction * self.videos_per_class)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def command(self, overwrite: bool = False) -> str:
        """The `vivitcache demo` command line of this config; settings the command line has no option for are
        appended as a `# also:` comment (they are all in report.json)."""
        base = DemoConfig.preset(self.quick)
        args = ["vivitcache", "demo", "--out", self.out] + ["--quick"] * self.quick + ["--overwrite"] * overwrite
        also = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("out", "quick") or value == getattr(base, f.name):
                continue
            if f.name in CLI_OPTIONS:
                args += [f"--{f.name.replace('_', '-')}", str(value)]
            else:
                also.append(f"{f.name}={value!r}")
        return shlex.join(args) + (f"  # also: {', '.join(also)}" if also else "")


CLI_OPTIONS = ("seed", "stage1_epochs", "stage2_epochs", "stage2_frames")
"""Settings `vivitcache demo` has an option for (`--stage1-epochs` …), besides --out and --quick."""

QUICK: dict[str, Any] = dict(
    classes=4, videos_per_class=3, video_frames=32, image_steps=10, image_batch_size=16, stage1_epochs=1,
    stage1_batch_size=4, videos_per_part=3,
    stage2_epochs=2, stage2_batch_size=4,
)
"""`quick=True`: tiny everything (12 videos of 32 frames, 1 + 2 epochs), the whole demo in < 40 s on 2 cores."""

_FULL: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
