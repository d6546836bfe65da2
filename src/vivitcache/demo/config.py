"""`DemoConfig`: every number of `vivitcache demo` in one place, one doc line per field, and the `--quick` preset."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any

from vivitcache.errors import ConfigError
from vivitcache.options import check_fields, opt, valid


@dataclass
class DemoConfig:
    """The whole method end to end on a synthetic dataset: synth → stage 1 → extract → stage 2 → eval → report."""

    out: str = field(default="demo_out", metadata=opt(
        "Folder for data, stage1, tokens.zarr, stage2, report.md, report.json.", path=True))
    """Folder for data/, stage1/, tokens.zarr, stage2/, report.md and report.json."""
    seed: int = field(default=0, metadata=opt("Seed for data, init, sampling and shuffling."))
    """Seed of the synthetic videos, both models' init, clip sampling and shuffling."""
    # ---- synthetic dataset
    classes: int = field(default=8, metadata=valid(ge=1))
    """Synthetic dataset: motion classes (the first N of `data.synth.CLASS_NAMES`)."""
    videos_per_class: int = field(default=96, metadata=valid(ge=1))
    """Synthetic dataset: videos per class."""
    video_frames: int = field(default=64, metadata=valid(ge=1))
    """Synthetic dataset: frames per video (stage 2 samples `stage2_frames` of them from the cached tokens)."""
    video_size: int = field(default=32, metadata=valid(ge=1))
    """Synthetic dataset: frame side in pixels."""
    val_fraction: float = field(default=0.25, metadata=valid(ge=0, lt=1))
    """Synthetic dataset: fraction of each class's videos in the val split (both stages validate on them)."""
    # ---- the tiny model (random init under the seed: no hub, no download)
    model: str = "vit-ti"
    """Spatial ViT alias or timm ViT name."""
    img_size: int = field(default=32, metadata=valid(ge=1))
    """Spatial ViT input size."""
    patch_size: int = field(default=8, metadata=valid(ge=1))
    """Spatial ViT patch size."""
    spatial_depth: int = field(default=2, metadata=valid(ge=1))
    """Spatial ViT blocks."""
    temporal_depth: int = field(default=2, metadata=valid(ge=1))
    """Temporal transformer blocks."""
    # ---- image checkpoint: offline stand-in for ImageNet weights (`vivitcache image-pretrain`)
    image_steps: int = field(default=600, metadata=valid(ge=0))
    """Image checkpoint: localisation steps on single frames (0: stage 1 starts from a random-init ViT)."""
    image_batch_size: int = field(default=64, metadata=valid(ge=1))
    """Image checkpoint: frames per step."""
    # ---- stage 1: the whole ViViT end to end on decoded pixels
    stage1_frames: int = field(default=8, metadata=valid(ge=1))
    """Stage 1: frames per clip."""
    stage1_epochs: int = field(default=20, metadata=opt("Stage-1 epochs.", ge=1))
    """Stage 1: training epochs."""
    stage1_lr: float = field(default=1e-3, metadata=valid(gt=0))
    """Stage 1: peak learning rate (AdamW, warmup + cosine)."""
    stage1_batch_size: int = field(default=16, metadata=valid(ge=1))
    """Stage 1: clips per optimiser step."""
    stage1_spatial_lr_scale: float = field(default=0.01, metadata=valid(ge=0))
    """Stage 1: LR multiplier of the (image-pretrained) spatial ViT; 0.01 kept its localisation (val top-1 71 % vs
    29 % at 0.1, measured)."""
    # ---- extraction
    extract_workers: int = field(default=2, metadata=valid(ge=0))
    """Extraction: Dask LocalCluster worker processes (0: in this process, no Dask)."""
    videos_per_part: int = field(default=16, metadata=valid(ge=1))
    """Extraction: videos per part (one Dask task each); at least as many parts as workers keeps all of them busy."""
    # ---- stage 2: adapter + temporal + head on cached tokens, initialised from stage 1
    stage2_frames: int = field(default=32, metadata=opt("Stage-2 frames per clip.", ge=1))
    """Stage 2: frames per clip (stage 1's temporal position embeddings are interpolated to it)."""
    stage2_epochs: int = field(default=20, metadata=opt("Stage-2 epochs.", ge=1))
    """Stage 2: training epochs."""
    stage2_lr: float = field(default=1e-3, metadata=valid(gt=0))
    """Stage 2: peak learning rate (AdamW, warmup + cosine)."""
    stage2_batch_size: int = field(default=16, metadata=valid(ge=1))
    """Stage 2: clips per optimiser step."""
    # ---- evaluation and runtime
    eval_views: int = field(default=2, metadata=valid(ge=1))
    """Temporal views per val video, in both stages' per-epoch validation and in the final eval."""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu` or `cuda`, for both stages and extraction."""
    threads: int | None = field(default=None, metadata=valid(ge=1))
    """torch intra-op threads of both stages and the eval (None: torch's default, one per core); extraction's Dask
    workers share the cores among themselves. 1 is much faster on a 2-core machine busy with other work."""
    quick: bool = field(default=False, metadata=opt("Tiny everything (tests): the whole demo in under 40 s."))
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
        """ConfigError (one line: which setting and why) for settings the demo cannot run with."""
        check_fields(self)
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
"""Settings `vivitcache demo` has an option for (`--stage1-epochs` …), besides --out and --quick (`cli.py` makes
them from this list)."""

QUICK: dict[str, Any] = dict(
    classes=4, videos_per_class=3, video_frames=32, image_steps=10, image_batch_size=16, stage1_epochs=1,
    stage1_batch_size=4, videos_per_part=3,
    stage2_epochs=2, stage2_batch_size=4,
)
"""`quick=True`: tiny everything (12 videos of 32 frames, 1 + 2 epochs), the whole demo in < 40 s on 2 cores."""

_FULL: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
