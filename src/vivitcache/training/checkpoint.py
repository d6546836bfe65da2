"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

    RUN/checkpoint/model.safetensors   model state (stage 1: spatial + adapter + temporal + head)
    RUN/checkpoint/train.safetensors   optimiser moments and torch RNG state
    RUN/checkpoint/config.json         the run's config (what made it) + provenance + spatial weights sha256
    RUN/checkpoint/state.json          epoch, step, optimiser param groups, scheduler, sampler, numpy/python RNG

A checkpoint is written to a sibling temp folder and swapped in with renames, so a kill at any moment leaves
either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoint"


class CheckpointError(ValueError):
    """A run folder without a usable checkpoint."""


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _optimizer_tensors(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """torch (tensor) and numpy/python (JSON) RNG states."""
    py = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"rng.torch": torch.get_rng_state()}, {
        "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [py[0], list(py[1]), py[2]],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    name, key, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    run_dir: Path,
    model_state: dict[str, torch.Tensor],
    config: dict,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict | None = None,
) -> Path:
    """Write RUN/checkpoint atomically; `train_state` is JSON (epoch, step, scheduler, sampler, …)."""
    run_dir = Path(run_dir)
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / f".{CHECKPOINT_DIR}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, tmp / "model.safetensors")
    state = dict(train_state or {})
    tensors, rng_meta = rng_state()
    state["rng"] = rng_meta
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_tensors(optimizer.state_dict())
        tensors.update(opt_tensors)
        state["optimizer"] = opt_meta
    save_file(tensors, tmp / "train.safetensors")
    write_json(tmp / "config.json", config)
    write_json(tmp / "state.json", state)
    old = run_dir / f".{CHECKPOINT_DIR}.old{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_path(run: str | Path) -> Path:
    """RUN or RUN/checkpoint → the checkpoint folder; a clear error when there is none."""
    run = Path(run)
    ckpt = run if (run / "model.safetensors").is_file() else run / CHECKPOINT_DIR
    if not (ckpt / "model.safetensors").is_file():
        raise CheckpointError(f"{run}: no checkpoint (expected {ckpt}/model.safetensors)")
    return ckpt


def load_config(run: str | Path) -> dict:
    """The config.json of a run's checkpoint."""
    return json.loads((checkpoint_path(run) / "config.json").read_text())


def load_model_state(run: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a run's checkpoint (no pickle involved)."""
    return load_file(checkpoint_path(run) / "model.safetensors")


def load_train_state(run: str | Path, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore optimiser and RNG state from a run's checkpoint; returns the JSON train state."""
    ckpt = checkpoint_path(run)
    state = json.loads((ckpt / "state.json").read_text())
    tensors = load_file(ckpt / "train.safetensors")
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(_optimizer_state(tensors, state["optimizer"]))
    set_rng_state(tensors, state["rng"])
    return state
