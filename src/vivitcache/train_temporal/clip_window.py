"""`ClipWindow`: the training clips of the samples to come, drawn a window at a time.

The clip rule (`clip_frames.train_clips`) is a few dozen numpy calls per batch whatever its size, so on a batch of
32 clips it costs about as much as gathering them from memory; over a window of several batches it costs a
fraction per clip (BENCHMARKS.md, "Stage-2 loader"). `fit` hands the dataset the order it will ask for samples in
(`TokenClipDataset.follow`), so the dataset draws the clips of the next `size` samples of that order at once and
serves each batch's from them. A clip depends only on (seed, epoch, index) and the rule treats every clip on its
own, so a clip drawn in a window is the one drawn alone, bit for bit; a batch that is not next in the order is
drawn alone (`lookup` gives None). Used from the consumer's thread only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vivitcache.train_temporal.clip_frames import TrainClips


class ClipWindow:
    """The clips of `size` consecutive samples of `order` at a time, from `draw(rows) -> TrainClips`."""

    def __init__(self, order: list[int], size: int, draw: Callable[[np.ndarray], TrainClips], samples: int):
        self.order = np.asarray(order, dtype=np.int64)  # [M] dataset rows in the order they will be asked for
        self.size, self.draw = size, draw
        self.position = np.full(samples, -1, dtype=np.int64)  # [N] place of each row in `order` (-1: not in it)
        self.position[self.order] = np.arange(len(self.order))
        self.slot = np.full(samples, -1, dtype=np.int64)  # [N] row of each sample in the window (-1: not in it)
        self.rows = self.order[:0]  # [W] the window's samples
        self.clips: TrainClips | None = None  # the window's clips: indices [W, T], zeroed [W, T] or None

    def lookup(self, rows: np.ndarray) -> TrainClips | None:
        """The clips of samples `rows` [B]; None when they are not within `size` consecutive places of `order`."""
        if len(rows) == 0:
            return None
        slot = self.slot[rows]  # [B]
        if slot.min() < 0:
            places = self.position[rows]  # [B]
            first = int(places.min())
            if first < 0 or int(places.max()) - first >= self.size:
                return None
            self._draw(first)
            slot = self.slot[rows]
        zeroed = self.clips.zeroed
        return TrainClips(self.clips.indices[slot], None if zeroed is None else zeroed[slot])

    def _draw(self, first: int) -> None:
        """Draw the clips of the `size` samples of `order` from place `first` on."""
        self.slot[self.rows] = -1
        self.rows = self.order[first : first + self.size]  # [W]
        self.clips = self.draw(self.rows)
        self.slot[self.rows] = np.arange(len(self.rows))
