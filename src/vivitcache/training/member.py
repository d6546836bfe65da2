"""`Member`: one model being trained by `fit` (a run) or `fit` over many (a sweep): its model, optimiser, schedule,
`TrainState`, RNG stream, metrics log and run folder. The loader is the caller's: members share batches.

Each member keeps its own torch RNG stream (dropout), swapped in around everything it does (`rng_scope`), so a
member of a sweep draws exactly what the same config draws when trained alone under the same seed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vivitcache.config import OptimConfig
from vivitcache.training.checkpoint import (
    CheckpointError, check_same_data, load_config, load_model_state, load_train_state, save_checkpoint,
)
from vivitcache.training.metrics import MetricsLog, topk_correct
from vivitcache.training.runtime import Distributed
from vivitcache.training.schedule import build_optimizer, warmup_cosine
from vivitcache.training.state import TrainState


def check_resume_config(out: Path, config: dict) -> None:
    try:
        saved = load_config(out)["config"]
    except CheckpointError as e:
        raise CheckpointError(f"--resume: {e}") from e
    # how a run was started is not what it is: resume and overwrite may differ between launches
    check_same_data(out, saved, config)
    strip = lambda c: {**c, "run": {**c["run"], "resume": False, "overwrite": False}}  # noqa: E731
    if strip(saved) != strip(config):
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise CheckpointError(f"--resume: {out} was made with a different config (differs in {diff})")



class Member:
    """A model with its optimiser, warmup-cosine schedule and state, writing into its own run folder."""

    def __init__(self, task, optim: OptimConfig, out: Path, dist: Distributed, steps_per_epoch: int,
                 ckpt_config: dict, rng: torch.Tensor | None = None):
        self.task, self.optim, self.out, self.dist = task, optim, Path(out), dist
        self.ckpt_config = ckpt_config
        self.model = task.model.to(dist.device)
        self.total_steps = optim.epochs * steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = build_optimizer(self.model, optim)
        schedule = warmup_cosine(self.total_steps, round(optim.warmup_epochs * steps_per_epoch), optim.lr, optim.min_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=dist.is_main)
        self.state = TrainState(world_size=dist.world)
        self.rng = torch.get_rng_state() if rng is None else rng
        self.cuda_rng = torch.cuda.get_rng_state(dist.device) if dist.device.type == "cuda" else None
        self.train_model = self.model
        self.loss: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self, resume: bool) -> None:
        """Load the checkpoint (`resume`) or start metrics.jsonl; then wrap the model for DDP."""
        if resume:
            check_resume_config(self.out, self.task.config)
            self.model.load_state_dict(load_model_state(self.out))
            with self.rng_scope():
                saved = load_train_state(self.out, self.optimizer)  # restores the RNG into this member's stream
            self.scheduler.load_state_dict(saved["scheduler"])
            self.state.load_state_dict(saved)
            self.state.check_world_size(self.dist.world)
            self.state.world_size = self.dist.world
            self.log.truncate(self.state.metrics_lines)
        elif self.dist.is_main:
            self.log.path.write_text("")  # exists from the start: a later --resume knows a run began here
        if self.dist.world > 1:
            device = self.dist.device
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    @contextlib.contextmanager
    def rng_scope(self):
        """Run a block on this member's RNG stream, keeping where it got to."""
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.dist.device)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            if self.cuda_rng is not None:
                self.cuda_rng = torch.cuda.get_rng_state(self.dist.device)

    def wants(self, epoch: int, step_in_epoch: int | None = None) -> bool:
        """Whether this member trains at (epoch, step in epoch), or (step None) still has epoch `epoch` to finish.
        A member ahead of the loader (a resumed sweep whose members were saved at different steps) waits."""
        if self.state.stopped is not None or self.state.epoch != epoch or epoch >= self.optim.epochs:
            return False
        return step_in_epoch is None or self.state.step_in_epoch == step_in_epoch

    # ------------------------------------------------------------------------------------------------ one step
    def micro_step(self, x: torch.Tensor, y: torch.Tensor, last_micro: bool, autocast_ctx, accum_steps: int,
                   label_smoothing: float) -> None:
        """Forward and backward of one micro-batch; gradients all-reduced on the last micro-step only
        (nanoGPT's require_backward_grad_sync, through DDP's own no_sync)."""
        sync = self.train_model.no_sync() if self.dist.world > 1 and not last_micro else contextlib.nullcontext()
        with self.rng_scope(), sync:
            with autocast_ctx():
                logits = self.task.forward(self.train_model, x)  # [b, C]
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            (loss / accum_steps).backward()
        self.loss, self.logits = loss, logits

    def optimizer_step(self) -> None:
        if self.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        self.state.step_in_epoch += 1

    def log_train(self, y: torch.Tensor, epoch: int, rate: float) -> str:
        """A metrics.jsonl train row; the only device syncs of a step (`.item()`), and only on logging steps."""
        loss_value = self.loss.item()
        acc = topk_correct(self.logits.detach().float(), y, ks=(1,))[0] / len(y)
        self.log.log(kind="train", step=self.state.step, epoch=epoch, loss=loss_value, acc=acc,
                     lr=self.scheduler.get_last_lr()[0], clips_per_s=rate,
                     frames_per_s=rate * self.task.frames_per_sample)
        return f"loss {loss_value:.3f} acc {acc:.2f} {rate:.1f} clips/s"

    def record_eval(self, result: dict, seconds: float) -> None:
        """Keep the evaluation and log it with the run's wall time so far (`seconds`: training and evaluation since the
        run began, earlier processes of a resumed run included): time-to-accuracy curves read it."""
        self.state.record_eval(result)
        self.log.log(kind="eval", step=self.state.step, epoch=self.state.epoch, seconds=seconds,
                     **{k: v for k, v in result.items() if k != "confusion"})

    def save(self, seconds: float, peak_bytes: int) -> None:
        """Checkpoint (rank 0; the caller holds the barrier): model, optimiser, scheduler, RNG and `TrainState`."""
        if not self.dist.is_main:
            return
        state = TrainState(**{**self.state.state_dict(), "seconds": self.state.seconds + seconds,
                              "peak_memory_bytes": max(self.state.peak_memory_bytes, peak_bytes),
                              "metrics_lines": self.log.lines()})
        with self.rng_scope():
            save_checkpoint(self.out, self.model.state_dict(), self.ckpt_config, self.optimizer,
                            {**state.state_dict(), "scheduler": self.scheduler.state_dict()})
