"""`--read sequential`: an epoch that reads every part of the store once, whole, for cluster filesystems.

The epoch's order (`order_epoch`, pure index math on (seed, epoch)):

1. the parts in a seeded random order; the training videos of each part in file order: one stream of videos;
2. cut into `world` equal contiguous ranges, one per DDP rank (training drops the last `N % world` videos of the
   epoch's order so every rank takes the same number of steps; they differ every epoch);
3. each rank's range cut into `streams` contiguous pieces of whole batches; each piece goes through its own
   WebDataset-style shuffle buffer: a part enters the buffer whole, and while the buffer holds more than
   `buffer / streams` videos (`buffer` is per rank), a uniformly random one leaves it;
4. the rank's order takes one batch from each piece in turn. The DataLoader hands batch j to worker j % workers,
   so with `workers` dividing `streams` a worker only ever reads its own pieces' parts, and no two ranks or workers
   read the same part, except the (at most one) part at each cut, which both neighbours read.

Reading (`SequentialClips`, one per process and epoch): a part is read whole the first time one of its videos is
asked for (straight from its shard files, every chunk's checksum checked: `batches.read_part`; background threads
read the parts coming next), and the clips of all of its videos still to come in the same piece are
gathered from it at once (one vectorised gather per part) into a slab of clip slots; a batch is one gather from
the slab. Clips depend only on (seed, epoch, index), so a resumed epoch (the sampler skips the samples already
seen) re-reads the parts it needs and gives exactly the same batches.

What it gives up against `--read random`: a batch draws from the few parts in the shuffle buffers, not from the
whole store, so its videos are correlated when parts are (parts follow the order of the annotation file, often by
class); the order depends on the number of ranks and `streams` (not on the number of workers).
What it buys: every byte of the store is read once per epoch, in large sequential requests, and no chunk cache is
needed; clips are gathered straight from decoded parts.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class EpochOrder:
    """The order of one sequential epoch over a dataset of N videos."""

    pieces: list[np.ndarray]
    """world * streams arrays of dataset rows, each in its emission order; piece r * streams + s is rank r's s-th."""
    piece_of: np.ndarray
    """[N] int64, the piece of each video (-1: left out this epoch)."""
    position: np.ndarray
    """[N] int64, position of each video in its piece's order."""
    streams: int
    """Pieces per rank."""
    batch: int
    """Samples per batch of one rank (the interleaving unit)."""

    def rank_order(self, rank: int) -> list[int]:
        """Rank `rank`'s samples: batch j from piece j % streams, in turn; a last partial batch at the end."""
        mine = self.pieces[rank * self.streams : (rank + 1) * self.streams]
        blocks = [[p[i : i + self.batch] for i in range(0, len(p), self.batch)] for p in mine]
        full = [[b for b in bs if len(b) == self.batch] for bs in blocks]
        order = [full[j % self.streams][j // self.streams] for j in range(sum(map(len, full)))]
        order += [b for bs in blocks for b in bs if len(b) < self.batch]
        return np.concatenate(order).tolist() if order else []


def _shuffle(rows: np.ndarray, parts: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """WebDataset's shuffle buffer over `rows` (grouped by part, in stream order): a part enters whole; while more
    than `buffer` videos wait, a uniformly random one leaves. Returns the emission order."""
    draws = rng.random(len(rows))  # one draw per emitted video
    out, waiting, k = np.empty(len(rows), dtype=np.int64), [], 0
    for group in np.split(rows, np.flatnonzero(np.diff(parts)) + 1):
        waiting.extend(group.tolist())
        while len(waiting) > buffer:
            j = int(draws[k] * len(waiting))
            out[k], waiting[j] = waiting[j], waiting[-1]
            waiting.pop()
            k += 1
    rest = np.asarray(waiting, dtype=np.int64)
    out[k:] = rest[np.argsort(draws[k:], kind="stable")]
    return out


def order_epoch(part: np.ndarray, offset: np.ndarray, seed: int, epoch: int, world: int, streams: int, batch: int,
               buffer: int, drop_last: bool = True) -> EpochOrder:
    """The order of a sequential epoch for videos at (`part`, `offset`) ([N] each): see the module docstring."""
    n = len(part)
    rng = np.random.default_rng([seed, epoch, 0x5E9])
    parts = np.unique(part)
    rank_of_part = np.empty(int(parts.max()) + 1 if n else 0, dtype=np.int64)
    rank_of_part[parts] = rng.permutation(len(parts))
    stream = np.lexsort((offset, rank_of_part[part]))  # [N] parts in seeded order, videos in file order
    per_rank = [n // world + (not drop_last and r < n % world) for r in range(world)]
    bounds = np.cumsum([0] + per_rank)
    pieces = []
    for r in range(world):
        ranked = stream[bounds[r] : bounds[r + 1]]
        whole = len(ranked) // batch
        sizes = [(whole // streams + (s < whole % streams)) * batch for s in range(streams)]
        sizes[-1] += len(ranked) - whole * batch  # the partial last batch stays with the last piece
        cuts = np.cumsum([0] + sizes)
        for s in range(streams):
            rows = ranked[cuts[s] : cuts[s + 1]]
            piece_rng = np.random.default_rng([seed, epoch, 0x5E9, r, s])
            pieces.append(_shuffle(rows, part[rows], max(1, buffer // streams), piece_rng))  # `buffer` per rank
    piece_of = np.full(n, -1, dtype=np.int64)
    position = np.zeros(n, dtype=np.int64)
    for i, p in enumerate(pieces):
        piece_of[p] = i
        position[p] = np.arange(len(p))
    return EpochOrder(pieces, piece_of, position, streams, batch)


class SequentialClips:
    """One process's reading of one sequential epoch: whole parts in, clips out of a slab of clip slots.

    `read_part(number)` gives a part's frame features [F_part, Din]; `make_clips(rows, feats)` gathers the training
    clips of dataset rows `rows` from it: [n, T, Din]; `prefetch(number)` (optional) brings a part's files into the
    page cache with plain sequential reads (and checks their checksums), for readers that decode them from there.

    Read-ahead, on `READ_THREADS` background threads (file reads and decoding release the GIL): at the first
    batch the process works out the parts it will read, in order (`schedule`: its rank's samples, the batches its
    DataLoader worker gets), and from then on keeps the next `DECODE_AHEAD` parts read and decoded and the
    `PREFETCH_AHEAD` after them in the page cache. So the file reads of coming parts, the decoding of the next ones
    and the gathers of the current one overlap, and an epoch runs near the files' sequential read speed
    (BENCHMARKS.md, "Stage-2 loader"). The first batch waits for its shuffle buffer: the parts it needs to fill it.

    Memory: the slab holds the clips read but not yet handed out, at most about the shuffle buffers' videos of this
    process plus one part's per piece (it grows when more are needed; `capacity` is its first size, and a slab handed
    in from the previous epoch is reused), plus `DECODE_AHEAD` decoded parts.
    """

    READ_THREADS = 2
    """Parts read at once (file reads of one part overlap another's decoding)."""
    DECODE_AHEAD = 2
    """Parts read and decoded ahead of the one in use."""
    PREFETCH_AHEAD = 2
    """Parts after those whose files are read into the page cache ahead."""

    def __init__(self, order: EpochOrder, part: np.ndarray, read_part: Callable[[int], np.ndarray],
                 make_clips: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 prefetch: Callable[[int], None] | None = None, workers: tuple[int, int] = (1, 0),
                 slab: np.ndarray | None = None, capacity: int = 0):
        self.epoch_order, self.part = order, part
        self.read_part, self.make_clips, self.prefetch = read_part, make_clips, prefetch
        self.workers = workers  # (DataLoader workers, this one's id); (1, 0) in the main process
        self.slot_of = np.full(len(part), -1, dtype=np.int64)  # [N] slot of each clip waiting in the slab
        self.slab = slab  # [slots, T, Din]
        self.capacity = capacity
        self.free = np.arange(len(slab) if slab is not None else 0, dtype=np.int64)  # free slots (a stack)
        by_part = np.argsort(part, kind="stable")
        self._members = np.split(by_part, np.searchsorted(part[by_part], np.arange(1, int(part.max()) + 1)))
        self.schedule: list[tuple[int, int]] | None = None  # (piece, part) loads of this process, in order
        self._at: dict[tuple[int, int], int] = {}  # (piece, part) → its place in `schedule`
        self._ahead: dict[int, Future] = {}  # place in `schedule` → its part's features, read ahead
        self._submitted = -1  # the last place in `schedule` read ahead
        # parts whose files were (or are being) read into the page cache: their prefetch, or None when read inline
        self._prefetched: dict[int, Future | None] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.parts_read = 0

    def _schedule_reads(self, first: int) -> None:
        """`schedule`: the loads of this process, (piece, part) in first-needed order over its samples from `first`
        (the first one asked for: a resumed epoch starts mid-way) on; a batch comes from one piece, and a part is
        loaded once per piece that needs it. The DataLoader hands batch j to worker j % workers."""
        epoch = self.epoch_order
        order = np.asarray(epoch.rank_order(int(epoch.piece_of[first]) // epoch.streams), dtype=np.int64)
        workers, me = self.workers
        if workers > 1:
            batch = np.arange(len(order)) // epoch.batch
            order = order[batch % workers == me]
        order = order[int(np.argmax(order == first)) :]
        self.schedule = list(dict.fromkeys(zip(epoch.piece_of[order].tolist(), self.part[order].tolist())))
        self._at = {load: k for k, load in enumerate(self.schedule)}
        self._read_ahead(-1)

    def _read_ahead(self, k: int) -> None:
        """Schedule entry `k` is being loaded: keep the next parts decoded and the ones after them prefetched."""
        for j in range(max(self._submitted, k) + 1, min(k + 1 + self.DECODE_AHEAD, len(self.schedule))):
            self._ahead[j] = self._submit(self._fetch, self.schedule[j][1])
            self._submitted = j
        later = self.schedule[k + 1 + self.DECODE_AHEAD : k + 1 + self.DECODE_AHEAD + self.PREFETCH_AHEAD]
        for _, number in later if self.prefetch is not None else []:
            if number not in self._prefetched:
                self._prefetched[number] = self._submit(self.prefetch, number)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Training clips of dataset rows `rows` [B] (in this epoch's order for this process): [B, T, Din]."""
        if self.schedule is None and len(rows):
            self._schedule_reads(int(rows[0]))
        missing = rows[self.slot_of[rows] < 0]
        for number in dict.fromkeys(self.part[missing].tolist()):  # parts in first-needed order
            self._load(number, missing[self.part[missing] == number])
        slots = self.slot_of[rows]
        out = np.take(self.slab, slots, axis=0)  # [B, T, Din]
        self.slot_of[rows] = -1
        self.free = np.concatenate([self.free, slots])
        return out

    def _fetch(self, number: int) -> np.ndarray:
        """A part's features: its files read sequentially first (unless a prefetch did or does it), then decoded.

        Waits for that part's prefetch, whose error (damage its checksum pass found) is then this read's. No
        deadlock: a prefetch is submitted before the fetch of the same part, so a FIFO pool has started it."""
        if self.prefetch is not None and number not in self._prefetched:
            self._prefetched[number] = None
            self.prefetch(number)
        elif self._prefetched.get(number) is not None:
            self._prefetched[number].result()
        return self.read_part(number)

    def _submit(self, fn, number: int) -> Future:
        self._pool = self._pool or ThreadPoolExecutor(self.READ_THREADS, thread_name_prefix="vivitcache-part-ahead")
        return self._pool.submit(fn, number)

    def _load(self, number: int, wanted: np.ndarray) -> None:
        """Read part `number` and slot the clips of its videos still to come in the pieces of `wanted`."""
        members = self._members[number]
        piece, position = self.epoch_order.piece_of, self.epoch_order.position
        pending = np.zeros(len(members), dtype=bool)
        for s in np.unique(piece[wanted]):
            first = position[wanted][piece[wanted] == s].min()
            pending |= (piece[members] == s) & (position[members] >= first)
        rows = members[pending & (self.slot_of[members] < 0)]
        k = self._at.get((int(piece[wanted[0]]), number))  # None: not scheduled (a caller off the order)
        ahead = self._ahead.pop(k, None)
        if k is not None:
            self._read_ahead(k)
        feats = ahead.result() if ahead is not None else self._fetch(number)  # [F_part, Din]
        clips = self.make_clips(rows, feats)  # [n, T, Din]
        self.parts_read += 1
        slots = self._alloc(len(rows), clips)
        self.slab[slots] = clips
        self.slot_of[rows] = slots

    def _alloc(self, n: int, like: np.ndarray) -> np.ndarray:
        if self.slab is None or self.slab.shape[1:] != like.shape[1:] or self.slab.dtype != like.dtype:
            self.slab = np.empty((max(self.capacity, n),) + like.shape[1:], dtype=like.dtype)
            self.free = np.arange(len(self.slab), dtype=np.int64)
        if len(self.free) < n:  # grow (doubling), keeping the waiting clips
            old = len(self.slab)
            grown = max(2 * old, old + n - len(self.free))
            slab = np.empty((grown,) + self.slab.shape[1:], dtype=self.slab.dtype)
            slab[:old] = self.slab
            self.slab = slab
            self.free = np.concatenate([self.free, np.arange(old, grown)])
        slots, self.free = self.free[-n:] if n else self.free[:0], self.free[: len(self.free) - n]
        return slots

    def close(self) -> None:
        """Stop the read-ahead (reads in progress finish; queued ones are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @property
    def waiting_bytes(self) -> int:
        """Bytes of clips read and not yet handed out."""
        return 0 if self.slab is None else int((self.slot_of >= 0).sum()) * self.slab[0].nbytes
