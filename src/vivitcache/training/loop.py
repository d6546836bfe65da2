"""The training loop shared by stage 1 (pixels) and stage 2 (cached tokens).

A stage provides a `Task` (model, how to call it, datasets); `fit` does the rest: AdamW + warmup-cosine,
label smoothing, gradient clipping and accumulation, autocast, DDP under torchrun (only rank 0 writes),
eval each epoch over fixed views, checkpoints (epoch ends and every N steps) and exact `--resume`.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vivitcache.config import OptimConfig, RunConfig
from vivitcache.errors import ConfigError
from vivitcache.progress import console, make_progress
from vivitcache.provenance import provenance
from vivitcache.training import run_folder
from vivitcache.training.checkpoint import (
    CHECKPOINT_DIR, CheckpointError, load_config, load_model_state, load_train_state, save_checkpoint,
)
from vivitcache.training.metrics import MetricsLog, plot_curves, topk_correct, write_summary
from vivitcache.training.runtime import Distributed, PeakMemory, autocast, autocast_dtype, resolve_device
from vivitcache.training.sampler import ResumableSampler, epoch_seed

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def call_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward of both stages: pixels [B, T, C, H, W] (stage 1) or frame features [B, T, Din] (stage 2) → logits."""
    return model(x)  # [B, classes]


@dataclass
class Task:
    """What a stage hands to `fit`."""

    model: nn.Module
    """The model; parameters with requires_grad=False stay frozen."""
    forward: ForwardFn
    """(model, inputs [B, ...]) → logits [B, classes]."""
    train_set: Dataset
    """Items (inputs, label); may have `set_epoch(epoch)` for per-epoch sampling."""
    val_set: Dataset | None
    """Items (inputs [V, ...], label) with V fixed views; None skips eval."""
    num_classes: int
    """Number of classes (confusion matrix size)."""
    config: dict
    """The full run config, saved in the checkpoint and compared on resume."""
    title: str = ""
    """Title of the PNG curve."""
    frames_per_sample: int = 1
    """Frames in one training sample (reported as frames/s)."""
    extra_summary: dict = field(default_factory=dict)
    """Fields added to summary.json."""


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases, position embeddings and CLS tokens (1-D or named); the spatial
    ViT's parameters (`spatial.*`) at `optim.spatial_lr_scale` × the LR (0: left out, i.e. frozen)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        name = name.removeprefix("module.")
        spatial = name.startswith("spatial.")
        if not p.requires_grad or (spatial and optim.spatial_lr_scale == 0):
            continue
        decays = not (p.ndim <= 1 or "pos_embed" in name or "cls_token" in name)
        groups.setdefault((spatial, decays), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": optim.weight_decay if decays else 0.0,
                "lr": optim.lr * (optim.spatial_lr_scale if spatial else 1.0),
            }
            for (spatial, decays), params in sorted(groups.items())
        ],
        lr=optim.lr,
        betas=(0.9, 0.999),
    )


def warmup_cosine(total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup from ~0, then cosine down to min_lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))) / lr

    return factor


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch to the device; half-precision inputs (fp16 frame features) cross as they are, cast there."""
    x = x.to(device, non_blocking=True)
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _loader(dataset: Dataset, batch: int, sampler: ResumableSampler, workers: int, pin: bool = False) -> DataLoader:
    # spawn, not fork: zarr v3 and torch threads can deadlock in forked workers.
    # A dataset with a `collate_fn` reads whole batches itself (`__getitems__`, e.g. stage 2); pinned for a GPU.
    # Own generator: a DataLoader otherwise draws its worker seed from the global RNG, which would make a resumed
    # run's dropout stream differ from an uninterrupted one. Datasets seed their sampling from (seed, epoch, index).
    generator = torch.Generator().manual_seed(epoch_seed(sampler.seed, sampler.epoch))
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        multiprocessing_context="spawn" if workers > 0 else None,
        # not persistent: workers hold copies of the dataset, and `set_epoch` (which picks the epoch's clips) only
        # reaches copies made after it; the cost is one worker start per epoch, paid only with --workers > 0
        persistent_workers=False,
        drop_last=sampler.drop_last,
        generator=generator,
        collate_fn=getattr(dataset, "collate_fn", None),
        pin_memory=pin,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    forward: ForwardFn,
    dataset: Dataset,
    num_classes: int,
    device: torch.device,
    batch_size: int,
    dtype: torch.dtype | None = None,
    dist: Distributed | None = None,
    workers: int = 0,
) -> dict:
    """Top-1/top-5/loss over the dataset, logits averaged over views (softmax), plus the confusion matrix."""
    dist = dist or Distributed(device)
    sampler = ResumableSampler(len(dataset), 0, shuffle=False, rank=dist.rank, world=dist.world, drop_last=False)
    if hasattr(dataset, "follow"):
        dataset.follow(list(sampler))
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # [n, top1, top5, loss]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # [true, predicted]
    for x, y in _loader(dataset, batch_size, sampler, workers, pin=device.type == "cuda"):
        B, V = x.shape[:2]
        with autocast(device, dtype):
            logits = forward(model, to_device(x, device).flatten(0, 1))  # [B·V, C]
        probs = logits.float().softmax(-1).view(B, V, -1).mean(1).cpu()  # [B, C]
        t1, t5 = topk_correct(probs, y)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum")
        sums += torch.tensor([B, t1, t5, float(loss)], dtype=torch.float64)
        confusion.index_put_((y, probs.argmax(-1)), torch.ones(B, dtype=torch.int64), accumulate=True)
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(confusion)
    n = max(1.0, float(sums[0]))
    return {
        "val_top1": float(sums[1]) / n,
        "val_top5": float(sums[2]) / n,
        "val_loss": float(sums[3]) / n,
        "val_videos": int(sums[0]),
        "confusion": confusion.tolist(),
    }


def _check_resume_config(out: Path, config: dict) -> None:
    try:
        saved = load_config(out)["config"]
    except CheckpointError as e:
        raise CheckpointError(f"--resume: {e}") from e
    # how a run was started is not what it is: resume and overwrite may differ between launches
    strip = lambda c: {**c, "run": {**c["run"], "resume": False, "overwrite": False}}  # noqa: E731
    if strip(saved) != strip(config):
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise CheckpointError(f"--resume: {out} was made with a different config (differs in {diff})")


def fit(task: Task, optim: OptimConfig, run: RunConfig) -> dict:
    """Train `task` for `optim.epochs` epochs into `run.out`; returns the summary (also in summary.json).

    The run folder is prepared first (`run_folder`: refused when used by something else or by a live run, locked
    while this run writes, its checkpoint recovered after a crash); `run.resume` continues its checkpoint.
    """
    if optim.epochs < 1:
        raise ConfigError(f"--epochs {optim.epochs}: must be at least 1")
    device = resolve_device(run.device)
    dist = Distributed(device)
    device = dist.device
    per_step = dist.world * optim.accum_steps
    if optim.batch_size % per_step:
        raise ConfigError(f"--batch-size {optim.batch_size}: must divide by processes × --accum-steps = {per_step}")
    micro = optim.batch_size // per_step
    sampler = ResumableSampler(len(task.train_set), run.seed, shuffle=True, rank=dist.rank, world=dist.world,
                               order=getattr(task.train_set, "epoch_order", None))
    steps_per_epoch = len(sampler) // micro // optim.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {optim.batch_size}: more than the {len(task.train_set)} training videos")

    out = Path(run.out)
    lock = None
    if dist.is_main:  # only rank 0 writes; the others follow its decision after the barrier
        lock, notes = run_folder.open_run_folder(out, run.resume, run.overwrite)
        for note in notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
    dist.barrier()
    resume = bool(run.resume) and (out / CHECKPOINT_DIR / "model.safetensors").is_file()
    try:
        return _fit(task, optim, run, dist, out, resume, micro, sampler, steps_per_epoch)
    finally:
        if lock is not None:
            lock.release()
        dist.close()  # the process group ends with the run (torchrun's processes then exit cleanly)


def _fit(task: Task, optim: OptimConfig, run: RunConfig, dist: Distributed, out: Path, resume: bool, micro: int,
         sampler: ResumableSampler, steps_per_epoch: int) -> dict:
    device = dist.device
    dtype = autocast_dtype(optim.precision, device)
    model = task.model.to(device)
    total_steps = optim.epochs * steps_per_epoch
    optimizer = build_optimizer(model, optim)
    schedule = warmup_cosine(total_steps, round(optim.warmup_epochs * steps_per_epoch), optim.lr, optim.min_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    log = MetricsLog(out / "metrics.jsonl", enabled=dist.is_main)
    ckpt_config = {"config": task.config, "provenance": provenance()}

    epoch, step_in_epoch, step, seconds_before, peak_before = 0, 0, 0, 0.0, 0
    last_eval: dict = {}
    if resume:
        _check_resume_config(out, task.config)
        model.load_state_dict(load_model_state(out))
        state = load_train_state(out, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        epoch, step_in_epoch, step = state["epoch"], state["step_in_epoch"], state["step"]
        seconds_before, peak_before = state["seconds"], state["peak_memory_bytes"]
        last_eval = state["last_eval"]
        log.truncate(state["metrics_lines"])
    elif dist.is_main:
        log.path.write_text("")  # exists from the start: a later --resume knows a run began here

    train_model = model
    if dist.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    t0 = time.perf_counter()

    def save(ep: int, s_in_ep: int) -> None:
        if dist.is_main:
            save_checkpoint(
                out,
                model.state_dict(),
                ckpt_config,
                optimizer,
                {
                    "epoch": ep,
                    "step_in_epoch": s_in_ep,
                    "step": step,
                    "scheduler": scheduler.state_dict(),
                    "seconds": seconds_before + time.perf_counter() - t0,
                    "peak_memory_bytes": max(peak_before, mem.peak_bytes),
                    "metrics_lines": log.lines(),
                    "last_eval": last_eval,
                },
            )
        dist.barrier()

    with PeakMemory(device) as mem, make_progress(dist.is_main) as progress:
        bar = progress.add_task(task.title or "train", total=total_steps, completed=step, info="")
        while epoch < optim.epochs:
            model.train()
            # the data order is a function of (seed, epoch) alone, so (epoch, step_in_epoch) of the checkpoint is the
            # whole loader state: the samples already seen this epoch are skipped
            sampler.set_epoch(epoch, skip=step_in_epoch * micro * optim.accum_steps)
            if hasattr(task.train_set, "set_epoch"):
                task.train_set.set_epoch(epoch)
            if hasattr(task.train_set, "follow"):  # a dataset that reads ahead walks the order it will be asked in
                task.train_set.follow(list(sampler))
            tick, seen = time.perf_counter(), 0
            for i, (x, y) in enumerate(_loader(task.train_set, micro, sampler, run.workers, device.type == "cuda")):
                x, y = to_device(x, device), y.to(device, non_blocking=True)
                last_micro = (i + 1) % optim.accum_steps == 0
                # gradients are all-reduced on the last micro-step of an optimiser step only (nanoGPT's
                # require_backward_grad_sync, through DDP's own no_sync)
                with (train_model.no_sync() if dist.world > 1 and not last_micro else nullcontext()):
                    with autocast(device, dtype):
                        logits = task.forward(train_model, x)  # [b, C]
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=optim.label_smoothing)
                    (loss / optim.accum_steps).backward()
                seen += len(y) * dist.world
                if not last_micro:
                    continue
                if optim.grad_clip > 0:
                    nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                step_in_epoch += 1
                rate = seen / max(1e-9, time.perf_counter() - tick)
                progress.update(bar, advance=1, description=f"{task.title} epoch {epoch + 1}/{optim.epochs}")
                if step % run.log_every == 0 or step_in_epoch == steps_per_epoch:
                    # the only device syncs of a step (`.item()`), and only on logging steps
                    loss_value = loss.item()
                    acc = topk_correct(logits.detach().float(), y, ks=(1,))[0] / len(y)
                    progress.update(bar, info=f"loss {loss_value:.3f} acc {acc:.2f} {rate:.1f} clips/s")
                    log.log(
                        kind="train", step=step, epoch=epoch, loss=loss_value, acc=acc,
                        lr=scheduler.get_last_lr()[0], clips_per_s=rate,
                        frames_per_s=rate * task.frames_per_sample,
                    )
                if run.checkpoint_every and step % run.checkpoint_every == 0 and step_in_epoch < steps_per_epoch:
                    save(epoch, step_in_epoch)
                if step_in_epoch == steps_per_epoch:
                    break
            epoch, step_in_epoch = epoch + 1, 0
            if task.val_set is not None:
                last_eval = evaluate(
                    model, task.forward, task.val_set, task.num_classes, device, micro, dtype, dist, run.workers
                )
                log.log(kind="eval", step=step, epoch=epoch, **{k: v for k, v in last_eval.items() if k != "confusion"})
                if dist.is_main:
                    top1, top5 = 100 * last_eval["val_top1"], 100 * last_eval["val_top5"]
                    progress.console.print(f"epoch {epoch}: val top-1 {top1:.1f}%  top-5 {top5:.1f}%")
            save(epoch, 0)

    seconds = seconds_before + time.perf_counter() - t0
    summary = {
        "val_top1": last_eval.get("val_top1"),
        "val_top5": last_eval.get("val_top5"),
        "val_loss": last_eval.get("val_loss"),
        "epochs": optim.epochs,
        "steps": step,
        "seconds": seconds,
        "peak_memory_bytes": max(peak_before, mem.peak_bytes),
        "device": str(device),
        "processes": dist.world,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in model.parameters()),
        **task.extra_summary,
        "config": task.config,
        "provenance": ckpt_config["provenance"],
    }
    if dist.is_main:
        write_summary(out / "summary.json", summary)
        if last_eval:
            write_summary(out / "confusion.json", {"classes": task.config.get("classes"), "matrix": last_eval["confusion"]})
        plot_curves(out / "metrics.jsonl", out / "curves.png", task.title)
    return summary
