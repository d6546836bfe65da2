"""`TokenClipDataset`: stage-2 clips of frame features from cached tokens, for `training.loop.fit`.

Items: training `(features [T, Din] float32, label)`, evaluation `(features [V, T, Din] float32, label)`.
A training clip depends only on (seed, epoch, index), so DataLoader workers, DDP ranks and a resumed run all draw
the same clip for the same sample.

Background prefetch: with DataLoader workers (`--workers N`, spawn context) each worker reads its own batches
ahead (the DataLoader's prefetch). Without workers, a read-ahead thread walks the epoch's sample order (the same
`ResumableSampler` order `fit` uses) and reads the chunks of the next clips into the cache while the model trains.
It only warms the cache: values never depend on it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from vivitcache.train_temporal.clips import clip_rng, drop_tokens, eval_indices, train_indices
from vivitcache.train_temporal.config import AugmentConfig
from vivitcache.training.sampler import ResumableSampler


@dataclass(frozen=True)
class VideoEntry:
    """One video of a split: what a clip needs to know without opening the store."""

    id: str
    """Video id in the store."""
    num_frames: int
    """Frames stored for it."""
    label: int
    """Class index."""


class ReadAhead:
    """A daemon thread that calls `warm(i)` for the samples of `order`, at most `window` ahead of the consumer."""

    def __init__(self, order: list[int], warm, window: int):
        self.order, self.warm, self.window = order, warm, window
        self.position = {index: k for k, index in enumerate(order)}
        self.consumed = -1  # position in `order` of the latest sample handed out
        self.stopped = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="vivitcache-read-ahead", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k = 0
        while k < len(self.order):
            with self.cond:
                self.cond.wait_for(lambda: self.stopped or k <= self.consumed + self.window)
                if self.stopped:
                    return
                k = max(k, self.consumed + 1)  # never warm what was already read
            if k >= len(self.order):
                return
            try:
                self.warm(self.order[k])
            except Exception:  # noqa: BLE001 — the reading path raises the same error with its context
                return
            k += 1

    def consumed_sample(self, index: int) -> None:
        with self.cond:
            self.consumed = max(self.consumed, self.position.get(index, self.consumed))
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join()


class TokenClipDataset(Dataset):
    """Clips of T frame features per video: random segments (train) or fixed views (eval)."""

    def __init__(
        self,
        videos: list[VideoEntry],
        features,
        frames: int,
        train: bool,
        seed: int = 0,
        views: int = 1,
        augment: AugmentConfig | None = None,
        read_ahead: int = 0,
    ):
        self.videos = list(videos)
        self.features = features  # StreamedFeatures or InMemoryFeatures
        self.frames, self.train, self.seed, self.views = frames, train, seed, views
        self.augment = augment or AugmentConfig()
        self.read_ahead = read_ahead
        self.epoch = 0
        self._ahead: ReadAhead | None = None

    def __getstate__(self):
        return {**self.__dict__, "_ahead": None}

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        """Training clips of epoch `epoch` (fit calls this before each epoch)."""
        self.epoch = epoch
        self.stop_read_ahead()

    def indices(self, index: int) -> tuple[np.ndarray, np.random.Generator | None]:
        """Frame indices of sample `index`: train [T] with the clip's generator, eval [V, T] and None."""
        video = self.videos[index]
        if self.train:
            rng = clip_rng(self.seed, self.epoch, index)
            return train_indices(video.num_frames, self.frames, rng, self.augment), rng
        return eval_indices(video.num_frames, self.frames, self.views), None

    def __getitem__(self, index: int):
        self._follow(index)
        video = self.videos[index]
        idx, rng = self.indices(index)
        feats = self.features.clip(video.id, idx.reshape(-1))  # [T or V·T, Din] float32 numpy
        if self.train:
            if self.augment.token_dropout > 0:
                feats = drop_tokens(feats, rng, self.augment.token_dropout, self.augment.token_dropout_mode)
            return torch.from_numpy(feats), video.label  # [T, Din]
        return torch.from_numpy(feats).view(self.views, self.frames, -1), video.label  # [V, T, Din]

    # ---- read-ahead (main process, no DataLoader workers) ---------------------------------------------------------
    def _order(self) -> list[int]:
        """The order `fit`'s sampler visits this rank's samples in (the read-ahead follows it)."""
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        sampler = ResumableSampler(len(self), self.seed, shuffle=self.train, rank=rank, world=world,
                                   drop_last=self.train)
        sampler.set_epoch(self.epoch)
        return list(sampler)

    def _warm(self, index: int) -> None:
        idx, _ = self.indices(index)
        self.features.warm(self.videos[index].id, idx.reshape(-1))

    def _follow(self, index: int) -> None:
        if self.read_ahead <= 0 or get_worker_info() is not None or not hasattr(self.features, "cache"):
            return
        if self._ahead is not None and self._ahead.position.get(index, -1) < self._ahead.consumed:
            self.stop_read_ahead()  # a new pass over the data (evaluation after evaluation): start over
        if self._ahead is None:
            self._ahead = ReadAhead(self._order(), self._warm, self.read_ahead)
        self._ahead.consumed_sample(index)

    def stop_read_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.stop()
            self._ahead = None
