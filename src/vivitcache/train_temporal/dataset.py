"""`TokenClipDataset`: stage-2 clips of frame features from cached tokens, for `training.loop.fit`.

Batches: the DataLoader hands the dataset a batch's indices at once (`__getitems__`), which returns the collated
batch, training `(features [B, T, Din], labels [B])`, evaluation `(features [B, V, T, Din], labels [B])`, gathered
in one vectorised pass through the reader (`batches.BatchReader`: `MemoryBatches` or `StoreBatches`, whose
`streamed` flag is the only thing the dataset asks of it beyond reading); features keep the reader's dtype (float16
for stored CLS tokens of an fp16 store) and are cast on the device. `dataset[i]` is a batch of one, in float32.

A training clip depends only on (seed, epoch, index), so DataLoader workers, DDP ranks and a resumed run all draw
the same clip for the same sample, whichever reader reads it.

Sample order (`resolve_read` picks one for `--read auto`): `read="random"` leaves it to `fit`'s `ResumableSampler` (a seeded permutation); `read="sequential"`
gives the sampler the order of `sequential.order_epoch` (parts in a seeded order, shuffle buffers across parts),
and a streamed reader then reads each part whole (`sequential.SequentialClips`). In memory, both orders read the
same array.

Background prefetch: with DataLoader workers (`--workers N`, spawn context) each worker reads its own batches
ahead (the DataLoader's prefetch). Without workers, a read-ahead thread walks the sample order `fit` (or
`evaluate`) hands over from its sampler (`follow`) and reads the chunks of the next clips into the cache while the
model trains (random reads only). It only warms the cache: values never depend on it, and an error it meets
(a damaged part ahead) is raised to the consumer at its next batch.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from vivitcache.train_temporal.batches import BatchReader
from vivitcache.train_temporal.clip_frames import TrainClips, clip_keys, eval_indices, train_clips
from vivitcache.train_temporal.clip_window import ClipWindow
from vivitcache.train_temporal.config import READ_MODES, AugmentConfig
from vivitcache.train_temporal.sequential import (
    EpochOrder,
    SequentialClips,
    order_epoch,
)


@dataclass(frozen=True)
class VideoEntry:
    """One video of a split: what a clip needs to know without opening the store."""

    id: str
    """Video id in the store."""
    num_frames: int
    """Frames stored for it."""
    label: int
    """Class index."""


def videos_sha256(*splits: list[VideoEntry]) -> str:
    """Identity of the data a run uses: sha256 of (split, id, frames, label) of every video of `splits`, in order.
    A store that grew, lost a part or was relabelled since the run started gives another value."""
    digest = hashlib.sha256()
    for k, videos in enumerate(splits):
        digest.update("".join(f"{k}\t{v.id}\t{v.num_frames}\t{v.label}\n" for v in videos).encode())
    return digest.hexdigest()


def resolve_read(read: str, in_memory: bool, workers: int, streams: int, feature_bytes: int, cache_bytes: int) -> str:
    """`--read auto` made concrete, from BENCHMARKS.md ("Stage-2 loader"): `random` in memory, and when the
    features (`feature_bytes`) fit the chunk cache of a loader that keeps it between epochs (no DataLoader workers:
    `fit` starts them afresh every epoch, with empty caches), since every epoch after the first is then served from
    memory (25-116 k clips/s here, against 4-11 k for sequential epochs read again from the page cache); otherwise
    `sequential`, which reads the store once per epoch in whole parts instead of chunk by chunk (cold: 1.0-2.3x the
    random reader here, more where a request costs milliseconds). Random too when `workers` does not divide
    `streams`."""
    if read != "auto":
        return read
    if in_memory or (workers == 0 and feature_bytes <= cache_bytes) or (workers > 0 and streams % workers):
        return "random"
    return "sequential"


def collate_batch(batch):
    """The DataLoader's collate function for `TokenClipDataset`: `__getitems__` already returns the batch."""
    return batch


class ReadAhead:
    """A daemon thread that calls `warm(indices)` for the samples of `order`, at most `window` ahead of the consumer,
    `block` samples per call. It stops early once `PATIENCE` calls in a row read nothing (`warm` returned 0): the
    cache then holds what this pass needs, and the thread would only take the GIL from the loader (a gather that
    releases it waits up to the switch interval to get it back)."""

    PATIENCE = 8

    def __init__(self, order: list[int], warm, window: int, block: int = 1):
        self.order, self.warm, self.window, self.block = order, warm, window, block
        self.position = {index: k for k, index in enumerate(order)}
        self.consumed = -1  # position in `order` of the latest sample handed out
        self.stopped = False
        self.error: Exception | None = None  # what stopped the thread, raised to the consumer by `consumed_sample`
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="vivitcache-read-ahead", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k = idle = 0
        while k < len(self.order):
            with self.cond:
                self.cond.wait_for(lambda: self.stopped or k <= self.consumed + self.window)
                if self.stopped:
                    return
                k = max(k, self.consumed + 1)  # never warm what was already read
                stop = min(k + self.block, self.consumed + self.window + 1, len(self.order))
            if k >= len(self.order):
                return
            try:
                read = self.warm(self.order[k:stop])
            except Exception as e:  # noqa: BLE001 — any failure is the consumer's: raised at its next sample
                self.error = e
                return
            idle = idle + 1 if read == 0 else 0
            if idle >= self.PATIENCE:
                return
            k = stop

    def consumed_sample(self, index: int) -> None:
        """The consumer reads sample `index` now; raises what made the thread fail (a damaged part ahead)."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error
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

    collate_fn = staticmethod(collate_batch)
    WINDOW_FRAMES = 8192
    """Frame indices drawn at once along `follow`'s order (`ClipWindow`): a few batches, where the clip rule's cost
    per clip has levelled off (BENCHMARKS.md, "Stage-2 loader")."""

    def __init__(
        self,
        videos: list[VideoEntry],
        features: BatchReader,
        frames: int,
        train: bool,
        seed: int = 0,
        views: int = 1,
        augment: AugmentConfig | None = None,
        read_ahead: int = 0,
        read: str = "random",
        batch: int = 1,
        streams: int = 4,
        shuffle_buffer: int = 512,
        world: int | None = None,
    ):
        if read not in READ_MODES:
            raise ValueError(f"read={read!r}: use one of {', '.join(READ_MODES)}")
        self.videos = list(videos)
        self.features = features
        self.frames, self.train, self.seed, self.views = frames, train, seed, views
        self.augment = augment or AugmentConfig()
        self.read_ahead = read_ahead
        self.read = read if train else "random"  # evaluation reads its fixed views in index order
        self.batch, self.streams, self.shuffle_buffer = batch, streams, shuffle_buffer
        self.world = world  # DDP ranks of the sequential order: the sampler's, once it asks for `epoch_order`
        self.num_frames = np.array([v.num_frames for v in self.videos], dtype=np.int64)  # [N]
        self.labels = np.array([v.label for v in self.videos], dtype=np.int64)  # [N] (numpy: indexing a torch
        # tensor costs ~8 us a batch, numpy ~2)
        self.table = features.table([v.id for v in self.videos])
        self.epoch = 0
        self._ahead: ReadAhead | None = None
        self._walk: list[int] | None = None  # the order this rank's samples will be asked in (`follow`)
        self._window: ClipWindow | None = None  # this epoch's clips drawn ahead along `_walk` (training)
        self._order: tuple[tuple[int, int], EpochOrder] | None = None
        self._sequential: SequentialClips | None = None
        self._slab: np.ndarray | None = None  # the sequential reader's slab, kept for the next epoch (no page faults)

    def __getstate__(self):
        return {**self.__dict__, "_ahead": None, "_sequential": None, "_slab": None, "_window": None}

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        """Training clips of epoch `epoch` (fit calls this before each epoch)."""
        self.epoch = epoch
        if self._sequential is not None:
            self._sequential.close()
            self._slab = self._sequential.slab
        self._sequential = None
        self._walk = self._window = None  # the new epoch's order comes with the next `follow`
        self.stop_read_ahead()

    # ---- which frames -------------------------------------------------------------------------------------------
    def clip_indices(self, rows: np.ndarray, ahead: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame indices of samples `rows` [B]: train ([B, T], zeroed mask [B, T] or None), eval ([B, V, T], None).
        `ahead` (the consumer's thread only): from the clips drawn ahead along `follow`'s order when it has them."""
        if self.train:
            clips = self._window.lookup(rows) if ahead and self._window is not None else None
            clips = clips if clips is not None else self._draw(rows)
            return clips.indices, clips.zeroed
        return eval_indices(self.num_frames[rows], self.frames, self.views), None

    def _draw(self, rows: np.ndarray) -> TrainClips:
        """The training clips of samples `rows` [B] this epoch (the clip rule)."""
        return train_clips(self.num_frames[rows], self.frames, clip_keys(self.seed, self.epoch, rows), self.augment)

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame indices of one sample: train ([T], zeroed mask [T] or None), eval ([V, T], None)."""
        idx, zeroed = self.clip_indices(np.array([index], dtype=np.int64))
        return idx[0], None if zeroed is None else zeroed[0]

    def _gather(self, rows: np.ndarray, gather) -> np.ndarray:
        """Features of samples `rows` [B] through `gather(rows, indices [B, n])`: [B, T, Din] or [B, V, T, Din]."""
        idx, zeroed = self.clip_indices(rows, ahead=True)
        x = gather(rows, idx.reshape(len(rows), -1))  # [B, T or V·T, Din]
        if zeroed is not None:
            x[zeroed] = 0
        return x.reshape(idx.shape + x.shape[-1:])

    # ---- batches (the training and evaluation path) -------------------------------------------------------------
    def __getitems__(self, indices: list[int]):
        """The batch of samples `indices`: (features [B, T, Din] or [B, V, T, Din] in the reader's dtype, labels [B])."""
        rows = np.asarray(indices, dtype=np.int64)  # [B]
        self._follow(indices[-1])
        if self.read == "sequential" and self.features.streamed:  # whole parts (in memory: the same gather)
            x = self._sequential_clips().take(rows)
        else:
            x = self._gather(rows, lambda r, i: self.features.gather(self.table, r, i))
        return torch.from_numpy(x), torch.from_numpy(self.labels[rows])

    def _sequential_clips(self) -> SequentialClips:
        if self._sequential is None:
            table = self.table
            make = lambda rows, feats: self._gather(  # noqa: E731
                rows, lambda r, i: np.take(feats, table.offset[r][:, None] + i, axis=0))
            order = self.order_of(self.epoch, self.world or 1)
            worker = get_worker_info()
            workers = (worker.num_workers, worker.id) if worker is not None else (1, 0)
            # the most clips waiting at once: the shuffle buffers, one part per piece and a batch
            capacity = min(len(self.videos), self.shuffle_buffer + self.streams * int(np.bincount(table.part).max())
                           + self.batch)
            self._sequential = SequentialClips(order, table.part, self.features.part, make,
                                               prefetch=self.features.prefetch,
                                               workers=workers,
                                               slab=self._slab, capacity=capacity)
            self._slab = None
        return self._sequential

    def order_of(self, epoch: int, world: int) -> EpochOrder:
        """The sequential order of epoch `epoch` over `world` ranks (cached for the latest epoch)."""
        key = (epoch, world)
        if self._order is None or self._order[0] != key:
            self._order = (key, order_epoch(self.table.part, self.table.offset, self.seed, epoch, world, self.streams,
                                          self.batch, self.shuffle_buffer, drop_last=self.train))
        return self._order[1]

    def epoch_order(self, epoch: int, rank: int, world: int) -> list[int] | None:
        """The samples of rank `rank` in epoch `epoch` in the order `fit`'s sampler must visit them; None: the
        sampler's own seeded permutation (`read="random"`)."""
        if self.read != "sequential":
            return None
        self.world = world
        return self.order_of(epoch, world).rank_order(rank)

    # ---- one sample ---------------------------------------------------------------------------------------------
    def __getitem__(self, index: int):
        """Sample `index`, a batch of one: (features [T, Din] or [V, T, Din] float32, label)."""
        self._follow(index)
        x = self._gather(np.array([index], dtype=np.int64), lambda r, i: self.features.gather(self.table, r, i))
        return torch.from_numpy(x[0].astype(np.float32)), self.videos[index].label

    # ---- read-ahead (main process, no DataLoader workers, random reads) ------------------------------------------
    def follow(self, order: list[int]) -> None:
        """The order this rank's samples will be asked in, handed over by `fit` / `evaluate` from their sampler: the
        read-ahead thread walks it (the dataset never rebuilds the loop's sampler)."""
        self.stop_read_ahead()
        self._walk = list(order)
        if self.train and get_worker_info() is None:  # workers get batches apart: each draws its own
            size = max(self.batch, self.WINDOW_FRAMES // max(1, self.frames))
            self._window = ClipWindow(self._walk, size, self._draw, len(self.videos))

    def _warm(self, indices: list[int]) -> int:
        """Warm the reader's cache for these samples; returns how much it read."""
        rows = np.asarray(indices, dtype=np.int64)
        idx, _ = self.clip_indices(rows)
        return self.features.warm(self.table, rows, idx.reshape(len(rows), -1))

    def _follow(self, index: int) -> None:
        if (self.read_ahead <= 0 or get_worker_info() is not None or not self.features.streamed
                or self.read == "sequential" or self._walk is None):
            return
        if self._ahead is not None and self._ahead.position.get(index, -1) < self._ahead.consumed:
            self.stop_read_ahead()  # a new pass over the data (evaluation after evaluation): start over
        if self._ahead is None:
            self._ahead = ReadAhead(self._walk, self._warm, self.read_ahead, max(1, self.batch))
        self._ahead.consumed_sample(index)

    def stop_read_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.stop()
            self._ahead = None
