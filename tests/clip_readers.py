"""Per-clip reference readers of frame features, for tests and benchmarks: what the batch readers of
`vivitcache.train_temporal.batches` (`StoreBatches`, `MemoryBatches`) must equal, and what they replaced.

Both give `clip(video_id, frame_indices)` as float32 [n, Din], one clip at a time, through the same `FeatureRule`:

- `StreamedFeatures` reads whole chunks (`store.tokens_array(part)` sliced on chunk boundaries), turns each into
  frame features once and keeps them in an LRU cache bounded in bytes (`ChunkCache`);
- `InMemoryFeatures` reads every part once at start and keeps only the frame features, in shared memory.

They also speak the batch-reader protocol (`batches.BatchReader`: `table`, `gather`, `warm`, ...) with a loop over
`clip`, so a `TokenClipDataset` reads through them per clip; that is the reference path the tests compare the
vectorised readers with, and the baseline `benchmarks/bench_loader.py` times.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from vivitcache.store import StoreError, TokenStore
from vivitcache.train_temporal.batches import VideoTable
from vivitcache.train_temporal.features import FeatureRule, StoreReader


class PerClip:
    """The batch-reader protocol over `clip(video_id, frame_indices)` and `warm_clip(video_id, frame_indices)`: a
    batch is a loop over its clips (float32). No whole-part reads: not for `--read sequential`."""

    store: TokenStore
    rule: FeatureRule
    streamed = True

    def table(self, video_ids: list[str]) -> VideoTable:
        return VideoTable.build(self.store, video_ids)

    def gather(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """[B, n, Din] float32: clip by clip."""
        return np.stack([self.clip(table.ids[r], i) for r, i in zip(rows, indices)])

    def warm(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> int:
        return sum(self.warm_clip(table.ids[r], i) for r, i in zip(rows, indices))

    def part(self, number: int) -> np.ndarray:
        raise NotImplementedError("per-clip readers read clips, not whole parts")

    def prefetch(self, number: int) -> None:
        raise NotImplementedError("per-clip readers read clips, not whole parts")


class ChunkCache:
    """A thread-safe LRU of decoded chunks (frame features), bounded in bytes.

    Hand-written because `functools.lru_cache` bounds the number of entries, not their bytes, and cannot be
    filled from a read-ahead thread.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, int], value: np.ndarray) -> None:
        size = value.nbytes
        with self._lock:
            if size > self.max_bytes or key in self._items:
                return
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._items)


class StreamedFeatures(StoreReader, PerClip):
    """Frame features streamed from the store in whole chunks through an LRU cache (the per-clip reference).
    Pickles as (store path, frame token, cache bytes): a DataLoader worker reopens the store, with an empty cache."""

    def _open(self) -> None:
        self._store = TokenStore.open(self.store_path)  # read-only
        self.rule = FeatureRule(self._store, self.frame_token)
        self.cache = ChunkCache(self.cache_bytes)

    def _chunks(self, part_id: str, wanted: np.ndarray) -> list[np.ndarray]:
        """Frame features of the chunks `wanted` (sorted, unique) of one part: from the cache, else read whole."""
        store = self.store
        found = [self.cache.get((part_id, int(c))) for c in wanted]
        missing = [int(c) for c, f in zip(wanted, found) if f is None]
        if missing:
            arr, cf = store.tokens_array(part_id), store.layout.chunk_frames
            total = arr.shape[0]
            # one read per run of consecutive missing chunks, each starting and ending on chunk boundaries
            runs = np.split(np.asarray(missing), np.flatnonzero(np.diff(missing) != 1) + 1)
            read: dict[int, np.ndarray] = {}
            for run in runs:
                start, stop = int(run[0]) * cf, min((int(run[-1]) + 1) * cf, total)
                feats = self.rule(store.decode(arr[start:stop]))  # [stop - start, Din]
                for c in run:
                    block = feats[(int(c) - int(run[0])) * cf : (int(c) - int(run[0]) + 1) * cf]  # [<= cf, Din]
                    # a chunk of a longer run gets its own memory: the cache must not pin the whole run
                    read[int(c)] = block.copy() if len(run) > 1 else block
                    self.cache.put((part_id, int(c)), read[int(c)])
            found = [f if f is not None else read[int(c)] for c, f in zip(wanted, found)]
        return found

    def warm_clip(self, video_id: str, frame_indices: np.ndarray) -> int:
        """Read the chunks a clip needs into the cache (the read-ahead thread calls this); returns how many."""
        part_id, offset, _ = self.store.location(video_id)
        cf = self.store.layout.chunk_frames
        misses = self.cache.misses
        self._chunks(part_id, np.unique((offset + np.asarray(frame_indices)) // cf))
        return self.cache.misses - misses

    def clip(self, video_id: str, frame_indices: np.ndarray) -> np.ndarray:
        """Features of frames `frame_indices` (any order, repeats allowed) of a video: [n, Din] float32."""
        part_id, offset, n = self.store.location(video_id)
        idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise StoreError(f"video {video_id!r}: frame index out of range [0, {n})")
        cf = self.store.layout.chunk_frames
        frames = offset + idx  # [n] frame numbers in the part
        chunk_of = frames // cf
        wanted = np.unique(chunk_of)
        blocks = self._chunks(part_id, wanted)
        out = np.empty((len(idx), self.rule.dim), dtype=np.float32)  # [n, Din]
        which = np.searchsorted(wanted, chunk_of)  # [n] block of each frame
        for j, block in enumerate(blocks):  # gathered block by block: no concatenated copy of the chunks
            rows = np.flatnonzero(which == j)
            out[rows] = block[frames[rows] - wanted[j] * cf]
        return out


class InMemoryFeatures(PerClip):
    """Every video's frame features, read once from the store (whole shards at a time) into shared memory."""

    streamed = False

    def __init__(self, store_path: str | Path, frame_token: str, video_ids: list[str] | None = None):
        self.store = store = TokenStore.open(store_path)
        self.rule = FeatureRule(store, frame_token)
        ids = store.ids() if video_ids is None else list(video_ids)
        self.location = {v: store.location(v) for v in ids}  # id -> (part_id, offset, n)
        self.parts: dict[str, torch.Tensor] = {}
        step = store.layout.shard_frames
        for part_id in sorted({p for p, _, _ in self.location.values()}):
            arr = store.tokens_array(part_id)
            blocks = [self.rule(store.decode(arr[s : s + step])) for s in range(0, arr.shape[0], step)]
            # a torch tensor only for its shared memory: spawned workers map it instead of copying it
            self.parts[part_id] = torch.from_numpy(np.concatenate(blocks)).share_memory_()  # [F_part, Din]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts.values())

    def warm_clip(self, video_id: str, frame_indices: np.ndarray) -> int:
        """Nothing to do: everything is in memory."""
        return 0

    def clip(self, video_id: str, frame_indices: np.ndarray) -> np.ndarray:
        """Features of frames `frame_indices` of a video: [n, Din] float32."""
        try:
            part_id, offset, n = self.location[video_id]
        except KeyError:
            raise StoreError(f"video id {video_id!r} was not loaded") from None
        idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise StoreError(f"video {video_id!r}: frame index out of range [0, {n})")
        return self.parts[part_id].numpy()[offset + idx].astype(np.float32)  # [n, Din]
