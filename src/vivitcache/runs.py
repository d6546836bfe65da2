"""The run record: what a run folder says made it, written once by its stage and read by everyone else.

A run's checkpoint holds `config.json` = {"config": RECORD, "provenance": …}. RECORD is one flat JSON object, as
earlier versions wrote it (so their runs read back unchanged): the stage config's own fields (`PretrainConfig`,
`TrainConfig`, …) plus what the stage resolved while it ran. `RunRecord` is its typed form, the way nanoGPT rebuilds
a run from `model_args`: the model as built, the classes, and per stage what a consumer needs (stage 1: the
preprocessing and sampling `extract --checkpoint` reproduces; stage 2: the store, its fingerprint and layout, the
init and the split `eval` and `predict` find again).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vivitcache.config import ModelConfig, from_dict
from vivitcache.hashing import state_dict_sha256
from vivitcache.training.checkpoint import CheckpointError, load_config, load_model_state


@dataclass(frozen=True)
class Stage1Made:
    """What stage 1 resolved while it ran."""

    preprocess: dict
    """`Preprocess.to_dict()` of its spatial model (size, mean, std, interpolation, crop_pct)."""
    initial_spatial_sha256: str | None = None
    """Identity of the spatial weights it started from (image checkpoint, hub weights or random init)."""


@dataclass(frozen=True)
class Stage2Made:
    """What stage 2 resolved while it ran (paths absolute: `eval` and `predict` may run from another folder)."""

    store: str
    """The token store it trained on."""
    store_fingerprint: dict
    """That store's fingerprint (model, weights sha256, preprocessing, sampling, tokens, dtype)."""
    store_layout: dict
    """That store's `StoreLayout.to_dict()` (token kind, K, D, dtype)."""
    spatial_sha256: str | None
    """Identity of the spatial weights the tokens came from."""
    val_store: str | None = None
    """The validation store, when not a split of `store`."""
    init: str | None = None
    """The stage-1 run it started from."""
    init_parts: list[str] = field(default_factory=list)
    """The parts taken from `init`."""
    init_frames: int | None = None
    """`init`'s clip length (the position embeddings were interpolated from it)."""
    splits: str | None = None
    """The annotations whose split it used (given, or the stage-1 run's)."""
    video_root: str | None = None
    """Their video root."""
    split_seed: int | None = None
    """The seed of the hashed split."""
    data_sha256: str | None = None
    """Identity of the videos it trains and validates on (`dataset.videos_sha256`): `--resume` refuses another."""


ADDED_LATER = frozenset({"data_sha256"})
"""Fields of `Stage2Made` that records of earlier versions lack."""


@dataclass(frozen=True)
class RunRecord:
    """A run folder's record (see the module docstring)."""

    stage: int | str
    """1 (`pretrain`), 2 (`train`), or a bench mode (`bench-a`, `bench-b`)."""
    model: ModelConfig
    """The model as built (classes filled in; stage 2: clip length and frame token as trained)."""
    classes: list[str]
    """Class names, index = label."""
    settings: dict[str, Any]
    """The stage config's own fields as a dict (`PretrainConfig`, `TrainConfig`, `BenchConfig`, …)."""
    stage1: Stage1Made | None = None
    """Stage 1 only."""
    stage2: Stage2Made | None = None
    """Stage 2 only."""

    def __post_init__(self):
        # the record's own fields win over a stage config's same-named ones (its `model` is the model as built)
        object.__setattr__(self, "settings", {k: v for k, v in self.settings.items()
                                              if k not in ("stage", "model", "classes")})

    def to_json(self) -> dict[str, Any]:
        """The flat record written into the checkpoint (and compared on `--resume`)."""
        made = {**(dataclasses.asdict(self.stage1) if self.stage1 else {}),
                **(dataclasses.asdict(self.stage2) if self.stage2 else {})}
        # fields added after records existed are written only when set: an earlier record reads back as it was
        made = {k: v for k, v in made.items() if not (k in ADDED_LATER and v is None)}
        return {"stage": self.stage, **self.settings, **made, "model": dataclasses.asdict(self.model),
                "classes": list(self.classes)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunRecord:
        """Inverse of `to_json`; also reads the records of earlier versions (the same flat shape)."""
        stage = record.get("stage")
        made = {1: Stage1Made, 2: Stage2Made}.get(stage)
        made_keys = {f.name for f in dataclasses.fields(made)} if made else set()
        taken = {"stage", "model", "classes", *made_keys}
        parts = {}
        if made is not None:
            parts[f"stage{stage}"] = made(**{k: record[k] for k in made_keys if k in record})
        return cls(stage=stage, model=from_dict(ModelConfig, record["model"]), classes=list(record["classes"]),
                   settings={k: v for k, v in record.items() if k not in taken}, **parts)

    @classmethod
    def load(cls, run: str | Path, *stages: int | str) -> RunRecord:
        """The record of a run folder; CheckpointError unless its stage is one of `stages` (when given)."""
        record = cls.from_json(load_config(run)["config"])
        if stages and record.stage not in stages:
            wanted = " or ".join(f"stage-{s}" if isinstance(s, int) else str(s) for s in stages)
            hint = {1: "make one with `vivitcache pretrain`", 2: "train one with `vivitcache train`"}.get(stages[0], "")
            raise CheckpointError(f"{run}: not a {wanted} run (stage={record.stage}{'; ' + hint if hint else ''})")
        return record


@dataclass
class Stage1Run:
    """A stage-1 run folder: its record and its weights (what `extract` and stage 2 start from)."""

    path: Path
    """The run folder."""
    record: RunRecord
    """Its record (stage 1)."""
    state: dict[str, torch.Tensor]
    """All model tensors, keys prefixed by part (spatial., adapter., temporal., head.)."""

    @property
    def model(self) -> ModelConfig:
        """The ViViT config it was trained with (num_frames = its clip length)."""
        return self.record.model

    @property
    def classes(self) -> list[str]:
        return self.record.classes

    @property
    def preprocess(self) -> dict:
        """Preprocess.to_dict() of its spatial model."""
        return self.record.stage1.preprocess

    @property
    def fps(self) -> float | None:
        """Frame sampling by rate it was trained with."""
        return self.record.settings["data"]["fps"]

    @property
    def stride(self) -> int | None:
        """Frame sampling by stride it was trained with."""
        return self.record.settings["data"]["stride"]

    def part(self, name: str) -> dict[str, torch.Tensor]:
        """Tensors of one part with the part prefix removed."""
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}

    @functools.cached_property
    def spatial_sha256(self) -> str:
        """Identity of the trained spatial weights (what a store made from this run records); hashed once."""
        return state_dict_sha256(self.part("spatial"))


def load_stage1(run: str | Path) -> Stage1Run:
    """Load a stage-1 run folder; a clear error if it is not one."""
    return Stage1Run(path=Path(run), record=RunRecord.load(run, 1), state=load_model_state(run))
