"""`TrainState`: where one training run stands, the JSON part of its checkpoint.

torchtitan keeps its train state as a `Stateful` component under a fixed checkpoint key; this is ours. The model,
optimiser and scheduler have their own `state_dict`s; everything else a resume needs is here, so `fit` never packs
or unpacks loose variables by string keys.

What a resume on another number of processes does: the data order of an epoch is a function of (seed, epoch) and
of the number of processes (each rank takes every world-th sample of the epoch's permutation, or its own parts with
`--read sequential`). At an epoch boundary no sample of the epoch is seen yet, so a resume on another world size
sees every remaining sample exactly once, as a run of that size would; it is allowed. Inside an epoch the samples
already seen were dealt over the old world size, so the new ranks would revisit some and skip others: refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from vivitcache.errors import UserError


class ResumeWorldSizeError(UserError):
    """A mid-epoch checkpoint resumed on another number of processes."""


@dataclass
class TrainState:
    """Counters, clocks and the last evaluation of one run; saved at every checkpoint (`state.json`)."""

    epoch: int = 0
    """Epochs finished."""
    step_in_epoch: int = 0
    """Optimiser steps done in the current epoch (0 at an epoch boundary)."""
    step: int = 0
    """Optimiser steps done in all."""
    world_size: int | None = None
    """Processes the run trained with (None in checkpoints made before it was recorded)."""
    seconds: float = 0.0
    """Training wall time before this process started (resumed runs add theirs)."""
    peak_memory_bytes: int = 0
    """Peak memory of the earlier processes of this run."""
    metrics_lines: int = 0
    """Lines of metrics.jsonl that belong to this checkpoint (a resume drops later ones)."""
    last_eval: dict = field(default_factory=dict)
    """The last evaluation (val top-1/top-5/loss, confusion matrix)."""
    best_val_top1: float | None = None
    """The best val top-1 seen at an epoch end."""
    val_history: list = field(default_factory=list)
    """[val top-1, val loss] of every epoch end, in order (what a sweep's pruning ranks by)."""
    stopped: str | None = None
    """Why the run stopped before its last epoch (a sweep's pruning), or None."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Load from a checkpoint's state.json (keys of other components, e.g. `scheduler`, are ignored)."""
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])

    def check_world_size(self, world: int) -> None:
        """Refuse a mid-epoch resume on another number of processes (module docstring)."""
        if self.world_size is None or self.world_size == world or self.step_in_epoch == 0:
            return
        raise ResumeWorldSizeError(
            f"--resume: the checkpoint is {self.step_in_epoch} steps into epoch {self.epoch + 1} with "
            f"{self.world_size} process(es), and this run has {world}: resume with {self.world_size} (torchrun "
            "--nproc-per-node), or from an epoch-end checkpoint, which any number of processes can continue")

    def finish_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def record_eval(self, result: dict) -> None:
        self.last_eval = result
        top1 = result.get("val_top1")
        self.val_history.append([top1, result.get("val_loss")])
        if top1 is not None and (self.best_val_top1 is None or top1 > self.best_val_top1):
            self.best_val_top1 = top1
