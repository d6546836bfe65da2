"""A deterministic, resumable, rank-aware sampler.

Hand-written because torch's `DistributedSampler` cannot start in the middle of an epoch, which exact
`--resume` after a mid-epoch checkpoint needs. The order depends only on (seed, epoch), so an interrupted
and an uninterrupted run see the same samples in the same order. A dataset may give its own order per (epoch, rank,
world) instead of the seeded permutation (`order`, e.g. the part-by-part order of `--read sequential`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's draws (the sample order, the DataLoader's worker seeds): a function of (seed, epoch)."""
    return seed * 1_000_003 + epoch


class ResumableSampler(Sampler[int]):
    """Shuffled (or sequential) indices for one rank; `set_epoch`, and `skip` samples already seen this epoch."""

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1, drop_last: bool = True,
                 order: Callable[[int, int, int], list[int] | None] | None = None):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.order = order  # (epoch, rank, world) → this rank's samples in order, or None: the seeded permutation
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start epoch `epoch`, skipping the first `skip` samples of this rank (resume inside an epoch)."""
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        given = self.order(self.epoch, self.rank, self.world) if self.order is not None else None
        if given is not None:  # a dataset's own order (`--read sequential`), already split across ranks
            return given
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.drop_last:  # training: every rank gets the same count, so DDP steps stay in lock-step
            order = order[: len(order) - len(order) % self.world]
        # eval (drop_last=False): ranks may differ by one sample; counts are summed over ranks, nothing is doubled
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return len(self._indices()) - self.skip
