"""Reading a stage-1 run: the model config, classes, preprocessing and weights `extract` and stage 2 start from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vivitcache.config import ModelConfig, from_dict
from vivitcache.hashing import state_dict_sha256
from vivitcache.training.checkpoint import CheckpointError, load_config, load_model_state


@dataclass
class Stage1Run:
    """What a stage-1 run folder holds."""

    path: Path
    """The run folder."""
    model: ModelConfig
    """The ViViT config it was trained with (num_frames = its clip length)."""
    classes: list[str]
    """Class names, index = label."""
    preprocess: dict
    """Preprocess.to_dict() of its spatial model (size, mean, std, interpolation, crop_pct)."""
    fps: float | None
    """Frame sampling by rate it was trained with."""
    stride: int | None
    """Frame sampling by stride it was trained with."""
    state: dict[str, torch.Tensor]
    """All model tensors, keys prefixed by part (spatial., adapter., temporal., head.)."""

    def part(self, name: str) -> dict[str, torch.Tensor]:
        """Tensors of one part with the part prefix removed."""
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}

    @property
    def spatial_sha256(self) -> str:
        """Identity of the trained spatial weights (what a store made from this run records)."""
        return state_dict_sha256(self.part("spatial"))


def load_stage1(run: str | Path) -> Stage1Run:
    """Load a stage-1 run folder; a clear error if it is not one."""
    cfg = load_config(run)["config"]
    if cfg.get("stage") != 1:
        raise CheckpointError(f"{run}: not a stage-1 run (stage={cfg.get('stage')})")
    return Stage1Run(
        path=Path(run),
        model=from_dict(ModelConfig, cfg["model"]),
        classes=cfg["classes"],
        preprocess=cfg["preprocess"],
        fps=cfg["data"]["fps"],
        stride=cfg["data"]["stride"],
        state=load_model_state(run),
    )
