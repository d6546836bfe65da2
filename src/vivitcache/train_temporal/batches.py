"""Batch readers of frame features: a whole batch of clips per call, vectorised, in the features' own dtype.

`gather(table, rows, indices)` returns the features of frames `indices` [B, n] of videos `rows` [B] (rows of a
`VideoTable`) as one array [B, n, Din]. No Python runs per clip: frame numbers, chunk numbers and cache slots are
numpy arrays, and the copy out is one fancy index. Features keep the `FeatureRule`'s dtype (float16 for stored CLS
tokens of an fp16 store), so a batch is half the bytes of float32 and is cast on the device (numpy's fp16 → fp32
conversion runs at ~1.3 GB/s here, slower than the gather itself).

- `MemoryBatches`: every part's features in one shared-memory array [F_all, Din]; a batch is one gather.
- `StoreBatches`: streamed from the store. Random access (`gather`) goes through a cache of decoded chunks kept
  in one preallocated slab [slots, chunk_frames, Din]: every frame's chunk is looked up in the cache's sorted
  index, and when some are missing, the batch's distinct chunks are (the missing ones read together, one request
  per run of chunks back to back in a shard file); the batch is then one gather from the slab. Whole-part reads
  (`part`, for `--read sequential`) read each run of up to 256 back-to-back chunks of a part in one request.

Whole parts of the layout `extract` writes are read straight from their shard files (`read_part`, through
`TokenStore.shard_chunks`: every chunk's crc32c checked, no decode); other layouts are decoded through `zarrs`'
codec pipeline when it is installed (`TokenStore.part_tokens`, after its own checksum pass). Chunk reads go
straight to the shard files too (`store.chunks.ShardChunks`), or through zarr's pipeline for a layout our writer
does not make.

Both are `BatchReader`s, the one interface `TokenClipDataset` reads through (no other dispatch). The per-clip
reference readers they must equal live with the tests (`tests/clip_readers.py`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vivitcache.store import StoreError, TokenStore
from vivitcache.train_temporal.features import FeatureRule, StoreReader


@dataclass(frozen=True)
class VideoTable:
    """Where a dataset's videos are, as arrays (row i = video i of the dataset)."""

    ids: tuple[str, ...]
    """Video ids."""
    part: np.ndarray
    """[N] int64, part number (position in the store's sorted part ids)."""
    offset: np.ndarray
    """[N] int64, first frame of the video in its part's tokens array."""
    frames: np.ndarray
    """[N] int64, frames stored for the video."""

    @classmethod
    def build(cls, store: TokenStore, video_ids: list[str]) -> VideoTable:
        number = {p: i for i, p in enumerate(store.part_ids())}
        located = [store.location(v) for v in video_ids]  # (part_id, offset, n); raises for an unknown id
        return cls(
            tuple(video_ids),
            np.array([number[p] for p, _, _ in located], dtype=np.int64),
            np.array([o for _, o, _ in located], dtype=np.int64),
            np.array([n for _, _, n in located], dtype=np.int64),
        )


class BatchReader(Protocol):
    """What `TokenClipDataset` reads frame features through, for every read mode: `MemoryBatches` (everything in
    memory) and `StoreBatches` (streamed: a chunk cache for random reads, whole parts for `--read sequential`)."""

    rule: FeatureRule
    """The features' rule: their width (`rule.dim`) and dtype (`rule.dtype`)."""
    streamed: bool
    """True: read from the store as batches need it, so the read-ahead thread and, for `--read sequential`, whole-part
    reads (`sequential.SequentialClips` over `part` and `prefetch`) pay off; False: everything is in memory already,
    and every read mode is one gather."""

    def table(self, video_ids: list[str]) -> VideoTable:
        """Where the videos `video_ids` are (StoreError for one it does not hold)."""

    def gather(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Features of frames `indices` [B, n] of videos `rows` [B] of `table`: [B, n, Din] in `rule.dtype`."""

    def warm(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> int:
        """Read what `gather` of these clips will need into a cache; returns how much had to be read (0: nothing)."""

    def part(self, number: int) -> np.ndarray:
        """Features of a whole part (number = position in the store's sorted part ids): [F_part, Din]."""

    def prefetch(self, number: int) -> None:
        """Bring a part's files in ahead of `part` (and check them), or nothing."""


def check_indices(table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> None:
    """StoreError if a frame index is outside its video (the clip rules never make one; a caller could)."""
    if not indices.size:
        return
    n = table.frames[rows]  # [B]
    # 3 reductions: on every batch, about half the time of an elementwise [B, n] mask
    if indices.min() < 0 or (indices.max(axis=1) >= n).any():
        b = int(np.flatnonzero((indices.min(axis=1) < 0) | (indices.max(axis=1) >= n))[0])
        raise StoreError(f"video {table.ids[rows[b]]!r}: frame index out of range [0, {int(n[b])})")


def read_part(store: TokenStore, rule: FeatureRule, part_id: str) -> np.ndarray:
    """Frame features of a whole part: [F_part, Din] in `rule.dtype`. A part with our writer's layout is read
    straight from its shard files (`TokenStore.shard_chunks`: one request per run of back-to-back inner chunks, into
    the array returned, every chunk's crc32c checked); any other, each shard file in one request, then decoded."""
    chunks = store.shard_chunks(part_id)
    if chunks is None:
        return rule(store.decode(store.part_tokens(part_id)))  # [F_part, Din]
    frames, cf = store.tokens_array(part_id).shape[0], chunks.chunk_shape[0]
    n = -(-frames // cf)  # inner chunks holding the part's frames
    out = np.empty((n,) + chunks.chunk_shape, dtype=chunks.dtype)  # [n, cf, K, D]
    runs, never_written = chunks.runs(np.arange(n), np.arange(n))
    chunks.fill_value(out, never_written)
    for run in runs:
        chunks.read(run, out)
    return rule(store.decode(out.reshape((n * cf,) + chunks.chunk_shape[1:])[:frames]))  # [F_part, Din]


class MemoryBatches:
    """Every video's frame features, read once (whole parts) into one shared-memory array; a batch is one gather.
    A `BatchReader`."""

    streamed = False

    def __init__(self, store_path: str | Path, frame_token: str, video_ids: list[str] | None = None):
        self.store = TokenStore.open(store_path)
        self.rule = FeatureRule(self.store, frame_token)
        ids = self.store.ids() if video_ids is None else list(video_ids)
        numbers = {p: i for i, p in enumerate(self.store.part_ids())}
        wanted = sorted({self.store.location(v)[0] for v in ids})
        sizes = [self.store.tokens_array(p).shape[0] for p in wanted]  # frames per part (array metadata only)
        self.base = np.full(len(numbers), -1, dtype=np.int64)  # [parts] first row of each loaded part
        self.base[[numbers[p] for p in wanted]] = np.cumsum([0] + sizes)[:-1]
        self.size = np.zeros(len(numbers), dtype=np.int64)  # [parts] frames of each loaded part
        self.size[[numbers[p] for p in wanted]] = sizes
        # one array filled part by part (peak memory: the features plus one part); a torch tensor only for its
        # shared memory: spawned DataLoader workers map it instead of copying it
        dtype = torch.from_numpy(np.zeros(0, self.rule.dtype)).dtype
        self.features = torch.empty((sum(sizes), self.rule.dim), dtype=dtype).share_memory_()  # [F, Din]
        self._starts: tuple[VideoTable, np.ndarray] | None = None  # the latest table, its videos' first rows
        for p, start, n in zip(wanted, self.base[[numbers[p] for p in wanted]], sizes):
            self.features.numpy()[start : start + n] = read_part(self.store, self.rule, p)

    def table(self, video_ids: list[str]) -> VideoTable:
        table = VideoTable.build(self.store, video_ids)
        if (self.base[table.part] < 0).any():
            missing = next(v for v, p in zip(video_ids, table.part) if self.base[p] < 0)
            raise StoreError(f"video id {missing!r} was not loaded")
        return table

    def gather(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Features of frames `indices` [B, n] of videos `rows` [B]: [B, n, Din] in `rule.dtype`."""
        check_indices(table, rows, indices)
        if self._starts is None or self._starts[0] is not table:  # the dataset's one table: worked out once
            self._starts = (table, self.base[table.part] + table.offset)  # [N] first row of each video in the array
        frames = self._starts[1][rows][:, None] + indices  # [B, n] rows of the array
        return np.take(self.features.numpy(), frames, axis=0)  # [B, n, Din]; np.take: ~25 % faster than a[frames]

    def warm(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> int:
        return 0  # everything is in memory

    def part(self, number: int) -> np.ndarray:
        """A loaded part's features, a view: [F_part, Din]."""
        start = int(self.base[number])
        if start < 0:
            raise StoreError(f"part {self.store.part_ids()[number]} was not loaded")
        return self.features.numpy()[start : start + int(self.size[number])]

    def prefetch(self, number: int) -> None:
        """Nothing to do: everything is in memory."""


class StoreBatches(StoreReader):
    """Frame features streamed from the store: random batches through a slab cache of decoded chunks, or whole parts.
    A `BatchReader`.

    Picklable as (store path, frame token, cache bytes): the store is reopened (read-only) and the cache starts empty
    in every process that unpickles it (zarr v3 must not be shared across a fork; a DataLoader worker opens its own).
    The cache holds at most `cache_bytes` (at least one slot; a batch that needs more chunks than there are slots is
    served in several rounds).
    """

    streamed = True
    READ_THREADS = 8
    """Reads in flight at once for the missing chunks of one batch (file reads release the GIL): cold reads are
    bound by the storage's latency, not by a core."""
    SCRATCH_BYTES = 64 * 2**20
    """Stored chunks held at once before the rule makes features of them (stores whose features are not the stored
    bytes: bf16, a computed mean, some of several tokens)."""

    def _open(self) -> None:
        self._store = TokenStore.open(self.store_path)
        self.rule = FeatureRule(self._store, self.frame_token)
        self.chunk_frames = self._store.layout.chunk_frames
        slot_bytes = self.chunk_frames * self.rule.dim * np.dtype(self.rule.dtype).itemsize
        self.slots = max(1, self.cache_bytes // slot_bytes)
        self._slab: np.ndarray | None = None  # [slots, chunk_frames, Din], allocated on the first random read
        # the cache's index, as arrays so that a batch's chunks are looked up in one vectorised pass (a dict cost
        # ~0.6 us per chunk: 0.2 ms for the ~350 chunks of a T=32 batch, as much as the gather itself)
        self._keys_held = np.zeros(0, dtype=np.int64)  # [C] sorted chunk keys in the cache
        self._slot_held = np.zeros(0, dtype=np.int64)  # [C] their slots
        self._last_use = np.zeros(self.slots, dtype=np.int64)  # [slots] the batch count when each slot was last used
        self._free = np.arange(self.slots, dtype=np.int64)  # slots holding no chunk, lowest first
        self._uses = 0
        self._lock = threading.Lock()  # the read-ahead thread fills the cache while the loader gathers
        self._part_ids = self._store.part_ids()
        self._pool: ThreadPoolExecutor | None = None  # concurrent chunk reads of one batch
        self._scratch: np.ndarray | None = None  # [n, cf, K, D] stored chunks before the rule (no pass-through)
        self.hits = self.misses = 0

    @property
    def cached_bytes(self) -> int:
        """Bytes of chunks held in the cache now (never more than `cache_bytes`, or one slot)."""
        return 0 if self._slab is None else len(self._keys_held) * self._slab[0].nbytes

    def table(self, video_ids: list[str]) -> VideoTable:
        return VideoTable.build(self._store, video_ids)

    def part(self, number: int) -> np.ndarray:
        """Features of a whole part, read now: [F_part, Din]."""
        return read_part(self._store, self.rule, self._part_ids[number])

    def prefetch(self, number: int) -> None:
        """Read a part's shard files with plain sequential reads and check their checksums (`part` then decodes them
        from the page cache); nothing for a part `part` reads straight from its files (one read does both)."""
        if self._store.shard_chunks(self._part_ids[number]) is None:
            self._store.read_shards(self._part_ids[number])

    # ---- random access ------------------------------------------------------------------------------------------
    def _keys(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = table.offset[rows][:, None] + indices  # [B, n] frame numbers in each video's part
        return (table.part[rows][:, None] << 32) + frames // self.chunk_frames, frames  # chunk keys [B, n]

    def _all_held(self, keys: np.ndarray) -> np.ndarray | None:
        """The slots of chunk keys `keys` [B, n] (any order, repeats) if the cache holds every one, marked used now;
        None otherwise (nothing changed). Lock held. The warm path: a lookup of every key in the sorted index instead
        of `np.unique` first (whose sort cost a T=32 batch about half as much as its gather)."""
        held = self._keys_held
        if not len(held):
            return None
        at = np.minimum(np.searchsorted(held, keys), len(held) - 1)  # [B, n]
        if not np.array_equal(held[at], keys):
            return None
        slots = self._slot_held[at]  # [B, n]
        self._uses += 1
        self._last_use[slots] = self._uses
        self.hits += int(np.count_nonzero(self._last_use == self._uses))  # the batch's distinct chunks
        return slots

    def _fill(self, keys: np.ndarray) -> tuple[np.ndarray, int]:
        """Slots holding chunk keys `keys` ([U] sorted, unique, at most `slots`): read the missing ones, evicting the
        least recently used chunks not needed by this call. Returns the number of chunks read too. Lock held.

        The cache's index learns a chunk only once its read succeeded: a failed read (damage, a vanished file) leaves
        the chunk missing, so the next call reads it again and raises again, never serving a slot's old bytes."""
        if self._slab is None:
            self._slab = np.empty((self.slots, self.chunk_frames, self.rule.dim), dtype=self.rule.dtype)
        self._uses += 1
        held = self._keys_held
        at = np.minimum(np.searchsorted(held, keys), max(len(held) - 1, 0))  # [U]
        hit = held[at] == keys if len(held) else np.zeros(len(keys), dtype=bool)
        slots = np.empty(len(keys), dtype=np.int64)
        slots[hit] = self._slot_held[at[hit]]
        self._last_use[slots[hit]] = self._uses
        missing = keys[~hit]  # sorted
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if not len(missing):
            return slots, 0
        evict = len(missing) - len(self._free)
        if evict > 0:  # full: evict the least recently used (this call's hits are the most recent)
            victims = np.argpartition(self._last_use[self._slot_held], evict - 1)[:evict]
            self._free = np.concatenate([self._free, self._slot_held[victims]])
            keep = np.ones(len(held), dtype=bool)
            keep[victims] = False
            self._keys_held, self._slot_held = self._keys_held[keep], self._slot_held[keep]
        new, self._free = self._free[: len(missing)], self._free[len(missing) :]
        try:
            self._read(missing, new)
        except BaseException:
            self._free = np.concatenate([new, self._free])  # read again next time: nothing was learnt
            raise
        where = np.searchsorted(self._keys_held, missing)
        self._keys_held = np.insert(self._keys_held, where, missing)
        self._slot_held = np.insert(self._slot_held, where, new)
        self._last_use[new] = self._uses
        slots[~hit] = new
        return slots, len(missing)

    def _read(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Decode chunks `keys` (sorted) into `slots`: straight from the shard files where a part has our writer's
        layout (`TokenStore.shard_chunks`), else through zarr."""
        parts = keys >> 32  # [U]
        readers = {p: self._store.shard_chunks(self._part_ids[p]) for p in np.unique(parts).tolist()}
        direct = np.array([readers[p] is not None for p in parts.tolist()], dtype=bool)  # [U]
        if direct.any():
            self._read_direct(keys[direct], slots[direct], readers)
        if not direct.all():
            self._read_zarr(keys[~direct], slots[~direct])

    def _map(self, fn, items: list) -> list:
        """`fn` over `items` on the read threads (inline for one). Every call has ended when this returns or raises
        (the first error, in item order): a read still running must not write into a slot handed out again."""
        if len(items) <= 1:
            return list(map(fn, items))
        self._pool = self._pool or ThreadPoolExecutor(self.READ_THREADS, thread_name_prefix="vivitcache-read")
        futures = [self._pool.submit(fn, item) for item in items]
        wait(futures)
        return [f.result() for f in futures]

    def _read_direct(self, keys: np.ndarray, slots: np.ndarray, readers: dict) -> None:
        """Chunks `keys` into `slots` through `ShardChunks`. Features that are the stored bytes (`rule.passthrough`)
        are read straight into the slab; others into a scratch array of at most `SCRATCH_BYTES` at a time (or one
        chunk), then decoded and put through the rule."""
        cf, layout = self.chunk_frames, self._store.layout
        k, d = layout.tokens_per_frame, layout.dim
        if self.rule.passthrough:
            self._read_runs(keys, readers, self._slab.reshape(self.slots, cf, k, d), slots)  # a view of the slab
            return
        step = max(1, self.SCRATCH_BYTES // (cf * layout.frame_bytes))  # chunks per round
        for lo in range(0, len(keys), step):
            n = min(step, len(keys) - lo)
            if self._scratch is None or len(self._scratch) < n:
                self._scratch = np.empty((n, cf, k, d), dtype=layout.numpy_dtype)  # [n, cf, K, D]
            self._read_runs(keys[lo : lo + n], readers, self._scratch, np.arange(n))
            feats = self.rule(self._store.decode(self._scratch[:n].reshape(-1, k, d)))  # [n·cf, Din]
            self._slab[slots[lo : lo + n]] = feats.reshape(n, cf, -1)

    def _read_runs(self, keys: np.ndarray, readers: dict, out: np.ndarray, targets: np.ndarray) -> None:
        """Chunks `keys` into rows `targets` of `out` [N, cf, K, D]: the reads all in flight at once on the read
        threads, one request per run of chunks back to back in a file, each chunk's crc32c checked."""
        parts, chunks = np.divmod(keys, 1 << 32)  # [U], [U]
        jobs = []
        for p, reader in readers.items():
            mine = parts == p
            if reader is not None and mine.any():
                runs, empty = reader.runs(chunks[mine], targets[mine])
                reader.fill_value(out, empty)
                jobs += [(reader, run) for run in runs]
        self._map(lambda job: job[0].read(job[1], out), jobs)

    def _read_zarr(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Decode chunks `keys` (sorted) into `slots` through zarr: one read per run of consecutive chunks of a part."""
        cf = self.chunk_frames
        runs = np.split(np.arange(len(keys)), np.flatnonzero(np.diff(keys) != 1) + 1)

        def read(run: np.ndarray) -> np.ndarray:
            part, first = divmod(int(keys[run[0]]), 1 << 32)
            arr = self._store.tokens_array(self._part_ids[part])
            start, stop = first * cf, min((first + len(run)) * cf, arr.shape[0])
            return self.rule(self._store.decode(arr[start:stop]))  # [stop - start, Din]

        for run, feats in zip(runs, self._map(read, runs)):
            for k, j in enumerate(run):
                block = feats[k * cf : (k + 1) * cf]  # [<= cf, Din]; a short last chunk leaves its slot's tail unused
                self._slab[slots[j], : len(block)] = block

    def gather(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Features of frames `indices` [B, n] of videos `rows` [B]: [B, n, Din] in `rule.dtype`."""
        check_indices(table, rows, indices)
        keys, frames = self._keys(table, rows, indices)
        within = frames % self.chunk_frames  # [B, n]
        with self._lock:
            slots = self._all_held(keys)  # [B, n], or None: some chunks must be read
            if slots is not None:  # warm: one lookup, one gather
                flat = self._slab.reshape(-1, self.rule.dim)  # [slots * chunk_frames, Din], a view
                return np.take(flat, slots * self.chunk_frames + within, axis=0)  # [B, n, Din]
        unique, inverse = np.unique(keys, return_inverse=True)  # [U], [B, n]
        inverse = inverse.reshape(keys.shape)
        with self._lock:
            if len(unique) <= self.slots:  # one round, one gather: the only [B, n, Din] array made (allocating a
                slots, _ = self._fill(unique)  # second, unused, made the heap fault fresh pages in every batch)
                flat = self._slab.reshape(-1, self.rule.dim)  # [slots * chunk_frames, Din], a view
                return np.take(flat, slots[inverse] * self.chunk_frames + within, axis=0)  # [B, n, Din]
            out = np.empty(keys.shape + (self.rule.dim,), dtype=self.rule.dtype)  # [B, n, Din]
            for lo in range(0, len(unique), self.slots):  # the batch needs more chunks than there are slots
                slots, _ = self._fill(unique[lo : lo + self.slots])  # [<= slots]
                flat = self._slab.reshape(-1, self.rule.dim)  # [slots * chunk_frames, Din], a view
                mask = (inverse >= lo) & (inverse < lo + self.slots)
                out[mask] = np.take(flat, slots[inverse[mask] - lo] * self.chunk_frames + within[mask], axis=0)
        return out

    def warm(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> int:
        """Read the chunks of these clips into the cache (the read-ahead thread calls this); returns how many had to
        be read."""
        keys, _ = self._keys(table, rows, indices)
        with self._lock:
            if self._all_held(keys) is not None:
                return 0
        unique = np.unique(keys)[: self.slots]
        with self._lock:
            return self._fill(unique)[1]
