"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

    RUN/checkpoint/model.safetensors   model state (stage 1: spatial + adapter + temporal + head)
    RUN/checkpoint/train.safetensors   optimiser moments and torch RNG state
    RUN/checkpoint/config.json         the run's config (what made it) + provenance + spatial weights sha256
    RUN/checkpoint/state.json          epoch, step, optimiser param groups, scheduler, sampler, numpy/python RNG

A checkpoint is written to a sibling temp folder `.checkpoint.tmp<pid>` (files fsynced), then swapped in with
two renames: `checkpoint` → `.checkpoint.old<pid>`, `.checkpoint.tmp<pid>` → `checkpoint`; the old one is removed
last. POSIX has no atomic swap of two folders, so a kill between the renames leaves no `checkpoint/` but a complete
`.checkpoint.old<pid>`: `checkpoint_path` falls back to it, and `recover_checkpoint` (at the start of the next run)
renames it back. A resumed run then redoes the steps since that checkpoint, with the same result bit for bit. A
temp folder is never read: it may be partial (full disk, kill while writing), and the next run removes it.
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vivitcache.errors import UserError
from vivitcache.jsonio import write_json_atomic

CHECKPOINT_DIR = "checkpoint"
FILES = ("model.safetensors", "train.safetensors", "config.json", "state.json")
"""What a complete checkpoint folder holds (state.json is written last)."""
TMP_PREFIX, OLD_PREFIX = f".{CHECKPOINT_DIR}.tmp", f".{CHECKPOINT_DIR}.old"


class CheckpointError(UserError, ValueError):
    """A run folder without a usable checkpoint, or a checkpoint that could not be written."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write a run's JSON atomically (`jsonio.write_json_atomic`); values JSON does not know are written as strings."""
    write_json_atomic(path, data, indent=2, default=str)


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
    """Write RUN/checkpoint crash-safely (module docstring); `train_state` is JSON (epoch, step, scheduler, …).

    A failed write (e.g. a full disk) removes its temp folder, leaves the previous checkpoint as it was, and raises
    CheckpointError.
    """
    run_dir = Path(run_dir)
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
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
        write_json(tmp / "state.json", state)  # last: a folder with state.json is complete
        for name in ("model.safetensors", "train.safetensors"):
            _fsync(tmp / name)
        _fsync(tmp)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as SafetensorError, not OSError
        shutil.rmtree(tmp, ignore_errors=True)
        why = getattr(e, "strerror", None) or str(e).removeprefix("Error while serializing: ")
        raise CheckpointError(f"{run_dir}: cannot write a checkpoint ({why}); the previous one is kept") from e
    old = run_dir / f"{OLD_PREFIX}{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)  # a kill before this line: `checkpoint_path` falls back to `old`
    _fsync(run_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def _fallbacks(run_dir: Path) -> list[Path]:
    """Complete `.checkpoint.old*` folders (a kill between the swap's renames), newest step first."""
    def step(folder: Path) -> int:
        try:
            return int(json.loads((folder / "state.json").read_text()).get("step", -1))
        except (OSError, ValueError, AttributeError):
            return -1

    olds = [p for p in run_dir.glob(f"{OLD_PREFIX}*") if p.is_dir() and _complete(p)] if run_dir.is_dir() else []
    return sorted(olds, key=step, reverse=True)


def recover_checkpoint(run_dir: str | Path) -> list[str]:
    """Put a run folder's checkpoint back in order before a run writes into it (the caller holds its lock).

    No `checkpoint/` but a complete `.checkpoint.old*` (a kill between the swap's renames): renamed back, one
    atomic rename. Then every temp folder (possibly partial) and every other old folder is removed. Returns what
    was done, as short notes.
    """
    run_dir = Path(run_dir)
    notes = []
    final = run_dir / CHECKPOINT_DIR
    if not final.exists():
        olds = _fallbacks(run_dir)
        if olds:
            os.rename(olds[0], final)
            notes.append(f"restored {CHECKPOINT_DIR}/ from {olds[0].name} (a run was killed while swapping "
                         "checkpoints)")
    for leftover in sorted([*run_dir.glob(f"{TMP_PREFIX}*"), *run_dir.glob(f"{OLD_PREFIX}*")]):
        shutil.rmtree(leftover, ignore_errors=True)
        notes.append(f"removed {leftover.name} (left by a run that stopped while writing a checkpoint)")
    return notes


def checkpoint_path(run: str | Path) -> Path:
    """RUN or RUN/checkpoint → the checkpoint folder; a clear error when there is none.

    Without RUN/checkpoint, a complete `.checkpoint.old*` left by a kill between the swap's renames is used (read
    only: `recover_checkpoint` renames it back when a run next writes into RUN).
    """
    run = Path(run)
    ckpt = run if (run / "model.safetensors").is_file() else run / CHECKPOINT_DIR
    if not (ckpt / "model.safetensors").is_file():
        olds = _fallbacks(run) if not ckpt.exists() else []
        if olds:
            return olds[0]
        raise CheckpointError(f"{run}: no checkpoint (expected {ckpt}/model.safetensors)")
    return ckpt


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:  # missing, unreadable, hand-edited into invalid JSON
        raise CheckpointError(f"{path}: unreadable checkpoint file ({e})") from e


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:  # truncated, damaged header, not safetensors
        raise CheckpointError(f"{path}: unreadable checkpoint file ({e})") from e


def load_config(run: str | Path) -> dict:
    """The config.json of a run's checkpoint."""
    return _read_json(checkpoint_path(run) / "config.json")


def check_same_data(run: str | Path, saved: dict, config: dict) -> None:
    """CheckpointError, one line, when a resumed run's data (`data_sha256` of its record: the videos, frame counts
    and labels it trains and validates on) is not the data it started on: a store that grew, lost a part or was
    relabelled since. A resumed run must be the uninterrupted one."""
    if "data_sha256" in saved and saved["data_sha256"] != config.get("data_sha256"):
        store = config.get("store") or saved.get("store") or "its store"
        raise CheckpointError(f"--resume: {run} was started on other data than {store} holds now (videos, frame "
                              "counts or labels changed since); a resumed run must continue the same data: start a "
                              "new run with another --out, or replace this one with --overwrite")


def load_model_state(run: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a run's checkpoint (no pickle involved)."""
    return _read_tensors(checkpoint_path(run) / "model.safetensors")


def load_train_state(run: str | Path, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore optimiser and RNG state from a run's checkpoint; returns the JSON train state."""
    ckpt = checkpoint_path(run)
    state = _read_json(ckpt / "state.json")
    tensors = _read_tensors(ckpt / "train.safetensors")
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(_optimizer_state(tensors, state["optimizer"]))
    set_rng_state(tensors, state["rng"])
    return state
