"""`BenchConfig`: what `vivitcache bench` measures, one doc line per field, and the `--quick` preset."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vivitcache.errors import ConfigError
from vivitcache.options import check_fields, opt


class Preset:
    """The `--quick` preset and the reproducing command line of a bench config (`BenchConfig`, `RecipesConfig`).

    A subclass (a dataclass with `out` and `quick` fields) sets `QUICK` (the preset's overrides) and `COMMAND` (the
    command's words); `OPTION_NAMES` renames a field's option, and `NONE_AS` is how a None value is given (None:
    left out)."""

    QUICK: ClassVar[dict[str, Any]] = {}
    COMMAND: ClassVar[tuple[str, ...]] = ()
    OPTION_NAMES: ClassVar[dict[str, str]] = {}
    NONE_AS: ClassVar[str | None] = None

    @classmethod
    def preset(cls, quick: bool = False, **overrides: Any):
        """The default or the `--quick` preset, with every override that is not None."""
        base = cls.QUICK if quick else {}
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**base, **given, "quick": quick})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def command(self) -> str:
        """The command line that reproduces this config: the options whose value is not the preset's."""
        base = type(self).preset(self.quick)
        args = list(self.COMMAND) + (["--quick"] if self.quick else [])
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "quick" or (value == getattr(base, f.name) and f.name != "out"):
                continue
            if value is None and self.NONE_AS is None:
                continue
            option = self.OPTION_NAMES.get(f.name, f.name.replace("_", "-"))
            args += [f"--{option}", self.NONE_AS if value is None else str(value)]
        return shlex.join(args)


def model_sizes_of_zero_are_none(cfg) -> None:
    """0 on the command line: the model's own input size, patch size or depth (None)."""
    for name in ("img_size", "patch_size", "spatial_depth"):
        if getattr(cfg, name) == 0:
            setattr(cfg, name, None)


def same_option(name: str) -> dict:
    """The option metadata of `BenchConfig`'s field `name` (a `RecipesConfig` field of the same meaning)."""
    return {f.name: f for f in dataclasses.fields(BenchConfig)}[name].metadata


QUICK: dict[str, Any] = dict(
    model="vit-ti", img_size=32, patch_size=8, spatial_depth=2, temporal_depth=1, frames=8, batch_size=4,
    accum_steps=2, classes=4, videos_per_class=4, video_frames=16, video_size=32,
)
"""`--quick`: tiny everything, well under a minute on 2 cores (tests)."""


@dataclass
class BenchConfig(Preset):
    """The three stage-2 cost modes side by side: same data, backbone, split, seed, epochs and batch for each."""

    QUICK: ClassVar[dict[str, Any]] = QUICK
    COMMAND: ClassVar[tuple[str, ...]] = ("vivitcache", "bench")

    model: str = field(default="vit-s", metadata=opt("Spatial ViT alias or timm name."))
    """Spatial ViT: an alias (vit-ti, vit-s, …) or a timm ViT name; random init under `seed` (no hub)."""
    img_size: int | None = field(default=None, metadata=opt("Spatial input size (0: the model's).", ge=1))
    """Spatial input size (None: the model's default, 224)."""
    patch_size: int | None = field(default=None, metadata=opt("Patch size override (0: the model's).", ge=1))
    """Patch size override (None: the model's default)."""
    spatial_depth: int | None = field(default=None, metadata=opt("Spatial blocks override (0: all).", ge=1))
    """Spatial blocks override (None: the full model, 12 for vit-s)."""
    temporal_depth: int = field(default=4, metadata=opt("Temporal transformer blocks.", ge=1))
    frames: int = field(default=32, metadata=opt("Frames per clip T in every mode.", ge=1))
    epochs: int = field(default=1, metadata=opt("Stage-2 epochs per mode.", ge=1))
    """Stage-2 epochs per mode (the same for all three)."""
    batch_size: int = field(default=4, metadata=opt("Clips per optimiser step in every mode.", ge=1))
    """Clips per optimiser step (the same for all three)."""
    accum_steps: int = field(default=4, metadata=opt("Micro-batches per optimiser step.", ge=1))
    """Micro-batches per optimiser step (batch_size / accum_steps clips per forward): bounds (a)'s activation memory."""
    classes: int = field(default=4, metadata=opt("Synthetic motion classes.", ge=1))
    """Synthetic dataset: motion classes."""
    videos_per_class: int = field(default=6, metadata=opt("Synthetic videos per class.", ge=1))
    """Synthetic dataset: videos per class (a quarter of them validate)."""
    video_frames: int = field(default=48, metadata=opt("Frames per synthetic video.", ge=1))
    """Synthetic dataset: frames per video (extraction runs the spatial ViT on all of them once)."""
    video_size: int = field(default=64, metadata=opt("Synthetic frame side in pixels.", ge=1))
    """Synthetic dataset: frame side in pixels (resized to `img_size` by the preprocessing)."""
    seed: int = field(default=0, metadata=opt("Seed for data, init, sampling and shuffling."))
    """Seed of the synthetic data, the init, sampling and shuffling."""
    out: str = field(default="runs/bench", metadata=opt("Folder for data, init, store, per-mode runs, bench.json, bench.md.", path=True))
    """Folder for the data, init, store, per-mode runs, bench.json and bench.md."""
    data: str | None = field(default=None, metadata=opt("Existing annotations instead of the synthetic videos."))
    """Existing annotations (folder, CSV, Kinetics CSV, SSv2 JSON) instead of the synthetic dataset."""
    threads: int = field(default=1, metadata=opt("torch threads per mode and for extraction (0: torch's).", ge=0))
    """torch threads in every mode and in extraction; 1 by default: on a shared machine two threads make tiny ops wait
    for a busy core (measured: (c)'s quick epoch 0.05 s with 1 thread, 0.2–3.6 s with 2). 0: torch's default."""
    device: str = field(default="cpu", metadata=opt("cpu, cuda or auto, for every mode and extraction."))
    """Device of every mode and of extraction: cpu (the issue's goal is on CPU), cuda or auto."""
    quick: bool = field(default=False, metadata=opt("Tiny everything (vit-ti at 32 px, 8 frames, 4×4 videos): under a minute."))
    """Built from the `--quick` preset (recorded so the command line can be rebuilt)."""

    def __post_init__(self):
        model_sizes_of_zero_are_none(self)
        check_fields(self)
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"bench: batch_size {self.batch_size} must divide by accum_steps {self.accum_steps}")
