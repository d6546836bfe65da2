"""The training loop shared by stage 1 (pixels), stage 2 (cached tokens) and sweeps (many stage-2 configs).

A stage provides a `Task` (model, how to call it, datasets); `fit` does the rest: AdamW + warmup-cosine,
label smoothing, gradient clipping and accumulation, autocast, DDP under torchrun (only rank 0 writes),
eval each epoch over fixed views, checkpoints (epoch ends and every N steps) and exact `--resume`. `fit_many`
trains several `Member`s (`training/member.py`) on one stream of batches; `fit` is `fit_many` of one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vivitcache.config import OptimConfig, RunConfig
from vivitcache.device import autocast, autocast_dtype, resolve_device
from vivitcache.errors import ConfigError
from vivitcache.progress import console, make_progress
from vivitcache.provenance import provenance
from vivitcache.training import run_folder
from vivitcache.training.checkpoint import CHECKPOINT_DIR
from vivitcache.training.member import Member
from vivitcache.training.metrics import plot_curves, topk_correct, write_summary
from vivitcache.training.runtime import Distributed, PeakMemory, worker_init_fn
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
        worker_init_fn=worker_init_fn(workers),  # workers die with this process, even by kill -9
    )


@torch.no_grad()
def evaluate_many(
    models: list[nn.Module],
    forward: ForwardFn,
    dataset: Dataset,
    num_classes: int,
    device: torch.device,
    batch_size: int,
    dtype: torch.dtype | None = None,
    dist: Distributed | None = None,
    workers: int = 0,
) -> list[dict]:
    """`evaluate` for several models in one pass over the dataset: each batch is read and moved once."""
    dist = dist or Distributed(device)
    sampler = ResumableSampler(len(dataset), 0, shuffle=False, rank=dist.rank, world=dist.world, drop_last=False)
    if hasattr(dataset, "follow"):
        dataset.follow(list(sampler))
    for model in models:
        model.eval()
    sums = torch.zeros(len(models), 4, dtype=torch.float64)  # [M, (n, top1, top5, loss)]
    confusion = torch.zeros(len(models), num_classes, num_classes, dtype=torch.int64)  # [M, true, predicted]
    for x, y in _loader(dataset, batch_size, sampler, workers, pin=device.type == "cuda"):
        B, V = x.shape[:2]
        x = to_device(x, device).flatten(0, 1)  # [B·V, ...]
        for j, model in enumerate(models):
            with autocast(device, dtype):
                logits = forward(model, x)  # [B·V, C]
            probs = logits.float().softmax(-1).view(B, V, -1).mean(1).cpu()  # [B, C]
            t1, t5 = topk_correct(probs, y)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum")
            sums[j] += torch.tensor([B, t1, t5, float(loss)], dtype=torch.float64)
            confusion[j].index_put_((y, probs.argmax(-1)), torch.ones(B, dtype=torch.int64), accumulate=True)
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(confusion)
    results = []
    for j in range(len(models)):
        n = max(1.0, float(sums[j, 0]))
        results.append({
            "val_top1": float(sums[j, 1]) / n,
            "val_top5": float(sums[j, 2]) / n,
            "val_loss": float(sums[j, 3]) / n,
            "val_videos": int(sums[j, 0]),
            "confusion": confusion[j].tolist(),
        })
    return results


def evaluate(model: nn.Module, forward: ForwardFn, dataset: Dataset, num_classes: int, device: torch.device,
             batch_size: int, dtype: torch.dtype | None = None, dist: Distributed | None = None,
             workers: int = 0) -> dict:
    """Top-1/top-5/loss over the dataset, logits averaged over views (softmax), plus the confusion matrix."""
    return evaluate_many([model], forward, dataset, num_classes, device, batch_size, dtype, dist, workers)[0]


@dataclass
class Spec:
    """One model `fit_many` trains: its task, optimiser settings and run folder."""

    task: Task
    optim: OptimConfig
    out: Path
    rng: torch.Tensor | None = None
    """CPU RNG state the member's stream starts from (None: the state at `fit_many`). A sweep builds every model
    first, so it captures each one's state right after its build: where a separate run's stream would start."""


Prune = Callable[[int, list[Member]], list[Member]]
"""(epochs done, every member) → the members to stop now (a sweep's pruning). It is called once every member
still training has finished that epoch and been evaluated, before their checkpoints are written."""


def fit(task: Task, optim: OptimConfig, run: RunConfig) -> dict:
    """Train `task` for `optim.epochs` epochs into `run.out`; returns the summary (also in summary.json)."""
    return fit_many([Spec(task, optim, Path(run.out))], run)[0]


def fit_many(specs: list[Spec], run: RunConfig, prune: Prune | None = None, title: str | None = None) -> list[dict]:
    """Train every spec on the same batches (one read, one gather, one move to the device per batch) into its own
    run folder; returns their summaries. The specs share the training and validation sets, the batch size,
    accumulation and precision; each has its own model, optimiser, schedule, RNG stream and epochs.

    Each run folder is prepared first (`run_folder`: refused when used by something else or by a live run, locked
    while this run writes, its checkpoint recovered after a crash); `run.resume` continues each one's checkpoint.
    """
    first = specs[0].optim
    for spec in specs:
        if spec.optim.epochs < 1:
            raise ConfigError(f"--epochs {spec.optim.epochs}: must be at least 1")
        shared = [(spec.optim.batch_size, spec.optim.accum_steps, spec.optim.precision), spec.task.train_set]
        if shared != [(first.batch_size, first.accum_steps, first.precision), specs[0].task.train_set]:
            raise ValueError("fit_many: specs must share the data, batch size, accumulation and precision")
    dist = Distributed(resolve_device(run.device))
    per_step = dist.world * first.accum_steps
    if first.batch_size % per_step:
        raise ConfigError(f"--batch-size {first.batch_size}: must divide by processes × --accum-steps = {per_step}")
    micro = first.batch_size // per_step
    train_set = specs[0].task.train_set
    sampler = ResumableSampler(len(train_set), run.seed, shuffle=True, rank=dist.rank, world=dist.world,
                               order=getattr(train_set, "epoch_order", None))
    steps_per_epoch = len(sampler) // micro // first.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {first.batch_size}: more than the {len(train_set)} training videos")

    locks = []
    try:
        if dist.is_main:  # only rank 0 writes; the others follow its decision after the barrier
            for spec in specs:
                lock, notes = run_folder.open_run_folder(spec.out, run.resume, run.overwrite)
                locks.append(lock)
                for note in notes:
                    console.print(f"note: {note}", highlight=False, soft_wrap=True)
        dist.barrier()
        members = [Member(spec.task, spec.optim, spec.out, dist, steps_per_epoch,
                          {"config": spec.task.config, "provenance": provenance()}, spec.rng) for spec in specs]
        for member in members:
            member.start(bool(run.resume) and (member.out / CHECKPOINT_DIR / "model.safetensors").is_file())
        return _train(members, run, micro, sampler, prune, title or specs[0].task.title)
    finally:
        for lock in locks:
            lock.release()
        dist.close()  # the process group ends with the run (torchrun's processes then exit cleanly)


def _train(members: list[Member], run: RunConfig, micro: int, sampler: ResumableSampler, prune: Prune | None,
           title: str) -> list[dict]:
    """Epochs → steps → evaluation, pruning and checkpoints at each epoch end; then the summaries."""
    dist, optim = members[0].dist, members[0].optim
    dtype = autocast_dtype(optim.precision, dist.device)
    task = members[0].task
    epochs = max(m.optim.epochs for m in members)
    t0 = time.perf_counter()
    with PeakMemory(dist.device) as mem, make_progress(dist.is_main) as progress:
        bar = progress.add_task(title or "train", total=sum(m.total_steps for m in members),
                                completed=sum(m.state.step for m in members), info="")
        for epoch in range(min(m.state.epoch for m in members), epochs):
            todo = [m for m in members if m.wants(epoch)]
            if not todo:
                continue
            progress.update(bar, description=f"{title} epoch {epoch + 1}/{epochs}")
            _train_epoch(todo, epoch, run, micro, sampler, dtype, progress, bar, lambda: (time.perf_counter() - t0, mem.peak_bytes))
            for m in todo:
                m.state.finish_epoch()
            if task.val_set is not None:
                results = evaluate_many([m.model for m in todo], task.forward, task.val_set, task.num_classes,
                                        dist.device, micro, dtype, dist, run.workers)
                for m, result in zip(todo, results):
                    m.record_eval(result, m.state.seconds + time.perf_counter() - t0)
                    if dist.is_main:
                        top1, top5 = 100 * result["val_top1"], 100 * result["val_top5"]
                        name = "" if len(members) == 1 else f"{m.out.name}: "
                        progress.console.print(f"{name}epoch {epoch + 1}: val top-1 {top1:.1f}%  top-5 {top5:.1f}%")
            if prune is not None:
                for m in prune(epoch + 1, members):
                    m.state.stopped = f"pruned after epoch {epoch + 1}"
            for m in todo:
                m.save(time.perf_counter() - t0, mem.peak_bytes)
            dist.barrier()
    return [_finish(m, time.perf_counter() - t0, mem.peak_bytes) for m in members]


def _train_epoch(todo: list[Member], epoch: int, run: RunConfig, micro: int, sampler: ResumableSampler,
                 dtype: torch.dtype | None, progress, bar, clock: Callable[[], tuple[float, int]]) -> None:
    """One epoch's steps for the members in `todo`, each batch read and moved to the device once for all of them.
    The data order is a function of (seed, epoch) alone, so (epoch, step in epoch) is the whole loader state: the
    loader starts at the least advanced member, and a member further on waits until the loader reaches it."""
    dist, optim, train_set = todo[0].dist, todo[0].optim, todo[0].task.train_set
    accum, steps_per_epoch = optim.accum_steps, todo[0].steps_per_epoch
    skip = min(m.state.step_in_epoch for m in todo)
    for m in todo:
        m.model.train()
    sampler.set_epoch(epoch, skip=skip * micro * accum)
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    if hasattr(train_set, "follow"):  # a dataset that reads ahead walks the order it will be asked in
        train_set.follow(list(sampler))
    tick, seen = time.perf_counter(), 0
    for i, (x, y) in enumerate(_loader(train_set, micro, sampler, run.workers, dist.device.type == "cuda")):
        step_in_epoch, last_micro = skip + i // accum, (i + 1) % accum == 0
        x, y = to_device(x, dist.device), y.to(dist.device, non_blocking=True)
        active = [m for m in todo if m.wants(epoch, step_in_epoch)]
        for m in active:
            m.micro_step(x, y, last_micro, lambda: autocast(dist.device, dtype), accum, m.optim.label_smoothing)
        seen += len(y) * dist.world
        if not last_micro:
            continue
        rate = seen / max(1e-9, time.perf_counter() - tick)
        saved = False
        for m in active:
            m.optimizer_step()
            progress.update(bar, advance=1)
            if m.state.step % run.log_every == 0 or m.state.step_in_epoch == steps_per_epoch:
                progress.update(bar, info=m.log_train(y, epoch, rate))
            if run.checkpoint_every and m.state.step % run.checkpoint_every == 0 and \
                    m.state.step_in_epoch < steps_per_epoch:
                m.save(*clock())
                saved = True
        if saved:
            dist.barrier()
        if step_in_epoch + 1 == steps_per_epoch:
            break


def _finish(m: Member, seconds: float, peak_bytes: int) -> dict:
    """A member's summary.json (and confusion.json, curves.png) once its training ended."""
    task = m.task
    summary = {
        "val_top1": m.state.last_eval.get("val_top1"),
        "val_top5": m.state.last_eval.get("val_top5"),
        "val_loss": m.state.last_eval.get("val_loss"),
        "best_val_top1": m.state.best_val_top1,
        "epochs": m.optim.epochs,
        "epochs_done": m.state.epoch,
        "stopped": m.state.stopped,
        "steps": m.state.step,
        "seconds": m.state.seconds + seconds,
        "peak_memory_bytes": max(m.state.peak_memory_bytes, peak_bytes),
        "device": str(m.dist.device),
        "processes": m.dist.world,
        "trainable_params": sum(p.numel() for p in m.model.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in m.model.parameters()),
        **task.extra_summary,
        "config": task.config,
        "provenance": m.ckpt_config["provenance"],
    }
    if m.dist.is_main:
        write_summary(m.out / "summary.json", summary)
        if m.state.last_eval:
            write_summary(m.out / "confusion.json", {"classes": task.config.get("classes"),
                                                     "matrix": m.state.last_eval["confusion"]})
        plot_curves(m.out / "metrics.jsonl", m.out / "curves.png", task.title)
    return summary
