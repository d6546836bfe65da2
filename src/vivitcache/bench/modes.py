"""The three stage-2 cost modes, one function each. Each runs ONE mode in the current process and returns its figures.

    (a) end_to_end          spatial ViT + adapter + temporal + head trained on decoded pixels
    (b) frozen_on_the_fly   spatial ViT frozen (requires_grad False, eval mode, under no_grad) but run on every frame
                            of every clip, every epoch; adapter + temporal + head trained (the paper's method)
    (c) cached_tokens       adapter + temporal + head on the tokens `extract` cached: `train_temporal.run_train`, the
                            product path (store → streamed frame features → `TokenClipDataset`)

All three start from the same stage-1 run (`init`) and go through `training.loop.fit`: same optimiser, schedule,
batch, accumulation, seed, split, eval and checkpoints. `run.bench` calls each in its own spawned process.

Seconds per epoch are the training epoch alone: `fit` logs, at the last step of every epoch, clips_per_s = clips of
that epoch / seconds since the epoch started (its DataLoader created; decoding, forward, backward and optimiser steps
included), so clips / clips_per_s is the epoch's training time. Evaluation and checkpoint writing, which `fit` also
does each epoch, are outside it (they are in `fit_seconds`).

Peak memory: `peak_memory_bytes` is the mode process's own peak RSS (`process_peak_rss`), imports included;
`fit_peak_memory_bytes` is what `fit` measured over training (`training.runtime.PeakMemory`: sampled RSS on CPU,
the CUDA allocator's peak on a GPU).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.layers import PatchEmbed
from torch import nn

from vivitcache.bench.config import BenchConfig
from vivitcache.config import ModelConfig, OptimConfig, RunConfig
from vivitcache.data.annotations import load_annotations
from vivitcache.data.clips import VideoClipDataset
from vivitcache.data.transforms import Preprocess
from vivitcache.hashing import state_dict_sha256
from vivitcache.models.spatial import SpatialSpec
from vivitcache.models.vivit import ViViT
from vivitcache.runs import RunRecord, Stage1Run, load_stage1
from vivitcache.train_temporal import TrainConfig, run_train
from vivitcache.training.checkpoint import load_model_state
from vivitcache.training.loop import Task, call_model, fit
from vivitcache.training.metrics import MetricsLog
from vivitcache.training.runtime import _rss_bytes, seed_everything

MODE_NAMES = {
    "a": "end to end (spatial trainable)",
    "b": "spatial frozen, run on the fly (paper)",
    "c": "cached tokens (vivitcache)",
}
"""Mode id → what it is."""


@dataclass(frozen=True)
class ModeInputs:
    """What one mode needs (picklable: sent to the mode's spawned process)."""

    cfg: BenchConfig
    """The benchmark settings (model, frames, epochs, batch, seed, threads, device)."""
    data: str
    """Annotations of the videos (absolute path)."""
    init: str
    """The stage-1 run every mode starts from (spatial ViT + adapter + temporal + head)."""
    store: str
    """The token store extracted from `init`'s spatial ViT (mode c only)."""
    out: str
    """This mode's run folder."""


# ------------------------------------------------------------------------------------------------ measuring
def process_peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (VmHWM of /proc/self/status).

    Not `resource.getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries the peak of the pre-exec address space into it,
    and Python spawns through vfork, so a child spawned from a 1.5 GB parent reports at least 1.5 GB (measured).
    VmHWM is the peak of the process's own address space.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


class SpatialFrameCounter:
    """Frames (images) through any timm ViT in this process, counted at its patch embedding, which every image passes
    exactly once; by phase: `train`/`eval` as `counted(forward)` sets it from the model's mode, else `other`.

    A process-wide module hook, so it also sees models it was not handed: mode (c)'s is built inside `run_train`.
    """

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.phase = "other"
        self._handle = None

    def _hook(self, module: nn.Module, args, output) -> None:
        if isinstance(module, PatchEmbed):
            self.counts[self.phase] += int(args[0].shape[0])  # args[0]: [N, C, H, W]

    def counted(self, forward):
        """`forward` that first sets the phase from the model's train/eval mode."""

        def wrapped(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            self.phase = "train" if model.training else "eval"
            return forward(model, x)

        return wrapped

    def __enter__(self) -> "SpatialFrameCounter":
        self._handle = nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def train_epochs(metrics: Path, batch_size: int) -> list[dict]:
    """[{epoch, clips, seconds, loss}] of every training epoch (loss: of its last step), from `fit`'s metrics.jsonl
    (module docstring)."""
    last: dict[int, dict] = {}
    for row in MetricsLog(metrics).rows():
        if row.get("kind") == "train" and row["step"] >= last.get(row["epoch"], {"step": -1})["step"]:
            last[row["epoch"]] = row
    epochs, step_before = [], 0
    for epoch in sorted(last):
        row = last[epoch]
        clips = (row["step"] - step_before) * batch_size
        epochs.append({"epoch": epoch, "clips": clips, "seconds": clips / row["clips_per_s"], "loss": row["loss"]})
        step_before = row["step"]
    return epochs


# ------------------------------------------------------------------------------------------------ shared settings
def optim_config(cfg: BenchConfig) -> OptimConfig:
    """The optimiser settings of every mode (fp32 on CPU: `auto`)."""
    return OptimConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, accum_steps=cfg.accum_steps)


def run_config(cfg: BenchConfig, out: str) -> RunConfig:
    """Run settings of every mode: no DataLoader workers (decoding, if any, is part of the epoch), one view."""
    return RunConfig(out=out, seed=cfg.seed, device=cfg.device, workers=0, eval_views=1)


def _result(mode: str, cfg: BenchConfig, summary: dict, out: str, start: float, rss_after_imports: int,
            frames: Counter, extra: dict) -> dict:
    epochs = train_epochs(Path(out) / "metrics.jsonl", cfg.batch_size)
    clips = epochs[0]["clips"]
    seconds_per_epoch = sum(e["seconds"] for e in epochs) / len(epochs)
    return {
        "mode": mode,
        "name": MODE_NAMES[mode],
        "seconds_per_epoch": seconds_per_epoch,
        "epoch_seconds": [e["seconds"] for e in epochs],
        "fit_seconds": summary["seconds"],
        "mode_seconds": time.perf_counter() - start,
        "peak_memory_bytes": process_peak_rss(),
        "rss_after_imports_bytes": rss_after_imports,
        "fit_peak_memory_bytes": summary["peak_memory_bytes"],
        "val_top1": summary["val_top1"],
        "val_top5": summary["val_top5"],
        "val_loss": summary["val_loss"],
        "train_loss": epochs[-1]["loss"],
        "val_videos": summary.get("val_videos"),
        "epochs": len(epochs),
        "train_clips_per_epoch": clips,
        "frames_per_clip": cfg.frames,
        "frames_per_second": clips * cfg.frames / seconds_per_epoch,
        "spatial_frames_train": frames["train"],
        "spatial_frames_eval": frames["eval"],
        "spatial_frames": sum(frames.values()),
        "trainable_params": summary["trainable_params"],
        "params": summary["params"],
        "torch_threads": torch.get_num_threads(),
        "device": summary["device"],
        "run": out,
        **extra,
    }


# ------------------------------------------------------------------------------------------------ (a) and (b)
class FrozenSpatialViViT(ViViT):
    """ViViT whose spatial ViT stays frozen: always in eval mode, run under no_grad (its parameters need no grad)."""

    def train(self, mode: bool = True) -> "FrozenSpatialViViT":
        super().train(mode)
        self.spatial.eval()
        return self

    def frame_features(self, video):  # video: [B, T, C, H, W]
        with torch.no_grad():
            return super().frame_features(video)  # [B, T, Din]


def build_from_stage1(model_cls: type[ViViT], stage1: Stage1Run) -> ViViT:
    """The stage-1 run's whole ViViT (spatial included) as `model_cls`, with its weights."""
    m: ModelConfig = dataclasses.replace(stage1.model)
    # the one recipe every consumer of a stage-1 spatial model uses (built on meta, the run's weights assigned)
    spec = SpatialSpec(m.spatial, m.img_size, m.patch_size, m.spatial_depth, checkpoint=str(stage1.path))
    spatial = spec.build().requires_grad_(True)  # (a) trains it; (b) freezes it again
    model = model_cls(m, spatial, spatial.embed_dim)
    model.load_state_dict(stage1.state)
    return model


def _pixel_mode(inputs: ModeInputs, mode: str) -> dict:
    """(a) or (b): the stage-1 run's ViViT trained on decoded clips, spatial trainable (a) or frozen (b)."""
    start, rss_after_imports = time.perf_counter(), _rss_bytes()
    cfg = inputs.cfg
    seed_everything(cfg.seed)
    stage1 = load_stage1(inputs.init)
    if stage1.model.num_frames != cfg.frames:
        raise ValueError(f"bench: init {inputs.init} has {stage1.model.num_frames} frames, the bench {cfg.frames}")
    frozen = mode == "b"
    model = build_from_stage1(FrozenSpatialViViT if frozen else ViViT, stage1)
    if frozen:
        model.spatial.requires_grad_(False)
    dataset = load_annotations(inputs.data, seed=cfg.seed)  # the split stage 2 (c) resolves from the init's data
    common = dict(preprocess=Preprocess.from_dict(stage1.preprocess), fps=stage1.fps, stride=stage1.stride,
                  seed=cfg.seed)
    # in store-id order, as (c) lists its videos: sample i is the same video, and so the same clip, in every mode
    train_records, val_records = (sorted(dataset.split(s), key=lambda r: r.id) for s in ("train", "val"))
    train_set = VideoClipDataset(train_records, cfg.frames, train=True, **common)
    val_set = VideoClipDataset(val_records, cfg.frames, train=False, views=1, **common) if val_records else None
    spatial_before = state_dict_sha256(model.spatial)
    counter = SpatialFrameCounter()
    task = Task(
        model=model,
        forward=counter.counted(call_model),
        train_set=train_set,
        val_set=val_set,
        num_classes=len(dataset.classes),
        config=RunRecord(stage=f"bench-{mode}", model=model.cfg, classes=dataset.classes,
                         settings={"mode": mode, "bench": cfg.to_dict(), "init": inputs.init, "data": inputs.data}
                         ).to_json(),
        title=f"bench ({mode}) {MODE_NAMES[mode]}",
        frames_per_sample=cfg.frames,
        extra_summary={"val_videos": len(val_records)},
    )
    with counter:
        summary = fit(task, optim_config(cfg), run_config(cfg, inputs.out))
    return _result(mode, cfg, summary, inputs.out, start, rss_after_imports, counter.counts, {
        "spatial_in_model": True,
        "spatial_trainable": not frozen,
        "spatial_params": sum(p.numel() for p in model.spatial.parameters()),
        "spatial_sha256_before": spatial_before,
        "spatial_sha256_after": state_dict_sha256(model.spatial),
    })


def run_end_to_end(inputs: ModeInputs) -> dict:
    """(a): spatial ViT + adapter + temporal + head trained end to end on decoded pixels."""
    return _pixel_mode(inputs, "a")


def run_frozen_on_the_fly(inputs: ModeInputs) -> dict:
    """(b): spatial ViT frozen but run on every frame of every clip each epoch; adapter + temporal + head trained."""
    return _pixel_mode(inputs, "b")


# ------------------------------------------------------------------------------------------------ (c)
def run_cached_tokens(inputs: ModeInputs) -> dict:
    """(c): adapter + temporal + head trained on the store's cached tokens by `vivitcache train`'s own code."""
    start, rss_after_imports = time.perf_counter(), _rss_bytes()
    cfg = inputs.cfg
    train_cfg = TrainConfig(store=inputs.store, frames=cfg.frames, init=inputs.init, optim=optim_config(cfg),
                            run=run_config(cfg, inputs.out))
    with SpatialFrameCounter() as counter:
        summary = run_train(train_cfg)
    stage2 = load_model_state(inputs.out)
    return _result("c", cfg, summary, inputs.out, start, rss_after_imports, counter.counts, {
        "spatial_in_model": any(k.startswith("spatial.") for k in stage2),
        "spatial_trainable": False,
        "spatial_params": sum(v.numel() for k, v in stage2.items() if k.startswith("spatial.")),
        "spatial_sha256_before": summary["config"]["spatial_sha256"],  # the store's tokens came from these weights
        "spatial_sha256_after": None,  # no spatial ViT in the stage-2 model
    })


MODES = {"a": run_end_to_end, "b": run_frozen_on_the_fly, "c": run_cached_tokens}
"""Mode id → the function that runs it."""
