"""Inner chunks of a part's tokens array read straight from its shard files: `ShardChunks`.

The random-read path of stage 2 (`train_temporal.batches.StoreBatches`) needs a few hundred scattered inner chunks
per batch. Read through zarr-python, each chunk goes through its per-chunk asyncio codec pipeline (the shard index
read again for every request, one file open per chunk, an output buffer per read), which costs far more CPU than
reading the bytes: the profile in BENCHMARKS.md ("Cold random reads") finds most of a cold epoch there, not in
storage. zarrs would be fast, but it skips the inner chunks' crc32c on reads smaller than a shard
(`reader.check_shard`), so it cannot serve chunk reads. Hence this hand-written reader of the one layout our writer
makes (zarr v3 sharding codec, index at the end with `bytes` + `crc32c`; inner chunks `bytes` (little-endian),
optionally `zstd`, then `crc32c`), checking what zarr checks:

- each shard's index is read once per process (its crc32c checked, every entry bounded by the data) and kept with
  the file's identity then (inode, size, mtime, ctime); every later read compares the identity of the file it opened
  with it, and when the file changed (a flip, a rewrite by `repair` or a writer, chunks moved), it reads the index
  again from the file it opened and reads the run's chunks where that index puts them (a file changed less than
  `SETTLED_NS` before its index was read has it read again every time: its timestamps cannot tell yet);
- a run of inner chunks that lie back to back in the file is one `preadv` (uncompressed: straight into the caller's
  array, the 4-byte checksums into a side buffer, no copy); every chunk's crc32c is checked before it counts;
- damage (a missing or short file, a checksum mismatch, an entry past the data) is a `StoreDamageError` naming the
  part and the file.

Any other layout (an array zarr could read but our writer never made) gets no `ShardChunks` (`of` returns None) and
stays on zarr's pipeline.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ShardingCodecIndexLocation, ZstdCodec

from vivitcache.store.layout import REPAIR_HINT, StoreDamageError

EMPTY = 2**64 - 1
"""Offset and size of an inner chunk never written (zarr reads it as the fill value)."""
MAX_RUN = 256
"""Chunks of one `preadv` at most (two buffers each, under the kernel's 1024)."""
SETTLED_NS = 2 * 10**9
"""A file changed less than this before its index was read may change again without its identity changing (its
timestamps are as coarse as the filesystem's clock: a tick, up to 2 s on some): its index is read again each time."""


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is written or replaced: inode, size, mtime, ctime (ctime cannot be set back)."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def shard_index(tail, inner: int, file_bytes: int, chunk_crc: bool = True,
                chunk_bytes: int | None = None) -> np.ndarray:
    """(offset, nbytes) of each inner chunk from the last `16 * inner + 4` bytes (`tail`) of a shard file of
    `file_bytes` bytes: [inner, 2] uint64 (`EMPTY` for a chunk never written). ValueError unless the index's crc32c
    matches and every written chunk lies in the data before the index, holds its own crc32c (`chunk_crc`) and, when
    given, is `chunk_bytes` long."""
    size = inner * 16
    if len(tail) != size + 4:
        raise ValueError(f"{file_bytes} bytes: shorter than its shard index")
    if google_crc32c.value(bytes(tail[:size])) != int.from_bytes(bytes(tail[size:]), "little"):
        raise ValueError("crc32c checksum mismatch in the shard index")
    pairs = np.frombuffer(bytes(tail), dtype="<u8", count=2 * inner).reshape(inner, 2)  # [inner, 2]
    written = pairs[:, 0] != EMPTY
    bad = written & ((pairs[:, 1] < 4 * chunk_crc) | (pairs[:, 0] + pairs[:, 1] > file_bytes - size - 4))
    if chunk_bytes is not None:
        bad |= written & (pairs[:, 1] != chunk_bytes)
    if bad.any():
        at = int(pairs[np.argmax(bad), 0])
        raise ValueError(f"inner chunk at byte {at} runs past the data or has the wrong size")
    return pairs


def read_into(fd: int, buffers: list[memoryview], offset: int) -> int:
    """`preadv` into `buffers` from byte `offset` until they are full or the file ends; returns the bytes read. A
    single `preadv` may return less (a signal, some network filesystems): the rest is asked for again."""
    done = 0
    while buffers:
        got = os.preadv(fd, buffers, offset + done)
        if got == 0:
            break
        done += got
        while buffers and got >= len(buffers[0]):  # drop the buffers filled, cut into the one filled in part
            got -= len(buffers[0])
            buffers = buffers[1:]
        if buffers and got:
            buffers = [buffers[0][got:], *buffers[1:]]
    return done


@dataclass(frozen=True)
class Run:
    """Inner chunks that lie back to back in one shard file: read with one request."""

    shard: int
    planned: tuple | None
    """The identity of the file whose index placed these chunks (None: an index to read again before trusting)."""
    chunks: np.ndarray
    """[m] the chunks' numbers within the shard."""
    offset: int
    """Byte offset of the first chunk in the file."""
    sizes: np.ndarray
    """[m] bytes of each chunk, its crc32c included."""
    targets: np.ndarray
    """[m] where each chunk goes: its row of the caller's output array."""


class ShardChunks:
    """The inner chunks [cf, K, D] of one part's sharded tokens array, read and checked without zarr's pipeline."""

    def __init__(self, part_id: str, folder: Path, metadata, zstd: bool):
        self.part_id, self.folder, self.metadata, self.zstd = part_id, folder, metadata, zstd
        sharding = metadata.codecs[0]
        self.chunk_shape = tuple(sharding.chunk_shape)  # (cf, K, D)
        self.per_shard = metadata.chunk_grid.chunk_shape[0] // self.chunk_shape[0]  # inner chunks per shard
        self.dtype = np.dtype(metadata.data_type.to_native_dtype()).newbyteorder("<")
        self.fill = metadata.fill_value
        self.payload = int(np.prod(self.chunk_shape)) * self.dtype.itemsize  # bytes of one decoded chunk
        # shard → (its file's identity when read, or None; [per_shard, 2] (offset, nbytes), checked): one tuple, so
        # the read threads never see an index with another file's identity
        self._index: dict[int, tuple[tuple | None, np.ndarray]] = {}

    @classmethod
    def of(cls, part_id: str, folder: Path, array) -> ShardChunks | None:
        """A reader of `array`'s chunks (a zarr array of a part's tokens) if it has our writer's layout, else None."""
        meta = array.metadata
        if len(meta.codecs) != 1 or not isinstance(meta.codecs[0], ShardingCodec) or len(meta.shape) != 3:
            return None
        sharding = meta.codecs[0]
        inner, index = [type(c) for c in sharding.codecs], [type(c) for c in sharding.index_codecs]
        codecs = (*sharding.codecs, *sharding.index_codecs)
        little = all(c.endian is not None and c.endian.value == "little" for c in codecs if isinstance(c, BytesCodec))
        zstd = inner == [BytesCodec, ZstdCodec, Crc32cCodec]
        ok = little and (inner == [BytesCodec, Crc32cCodec] or zstd) and index == [BytesCodec, Crc32cCodec]
        shard, inner_shape = tuple(meta.chunk_grid.chunk_shape), tuple(sharding.chunk_shape)
        whole = inner_shape[1:] == shard[1:] == tuple(meta.shape[1:]) and shard[0] % inner_shape[0] == 0
        if not (ok and whole) or sharding.index_location != ShardingCodecIndexLocation.end:
            return None
        return cls(part_id, folder, meta, zstd)

    # ---- where the chunks are -----------------------------------------------------------------------------------
    def file(self, shard: int) -> Path:
        return self.folder / self.metadata.encode_chunk_key((shard, 0, 0))

    def damage(self, shard: int, why: str) -> StoreDamageError:
        return StoreDamageError(f"part {self.part_id}: {self.file(shard)}: unreadable ({why}) ({REPAIR_HINT})")

    def _open(self, shard: int) -> int:
        try:
            return os.open(self.file(shard), os.O_RDONLY)
        except FileNotFoundError:
            raise StoreDamageError(f"part {self.part_id}: {self.file(shard)} is missing ({REPAIR_HINT})") from None

    def index(self, shard: int) -> np.ndarray:
        """(offset, nbytes) of every inner chunk of shard `shard`: [per_shard, 2] uint64, read once and checked."""
        return self._held(shard)[1]

    def _held(self, shard: int) -> tuple[tuple | None, np.ndarray]:
        """The shard's index held and the identity of the file it was read from; read first if none is held."""
        found = self._index.get(shard)
        if found is not None:
            return found
        fd = self._open(shard)
        try:
            return self._load(fd, shard, os.fstat(fd))
        finally:
            os.close(fd)

    def _load(self, fd: int, shard: int, st: os.stat_result) -> tuple[tuple | None, np.ndarray]:
        """Read and check the index of the shard file open as `fd` (fstat `st`, taken before), and hold it."""
        size, end = self.per_shard * 16, st.st_size
        tail = os.pread(fd, size + 4, end - size - 4) if end >= size + 4 else b""
        try:
            pairs = shard_index(tail, self.per_shard, end, chunk_bytes=None if self.zstd else self.payload + 4)
        except ValueError as e:
            raise self.damage(shard, str(e)) from None
        settled = time.time_ns() - st.st_ctime_ns >= SETTLED_NS
        held = (identity(st) if settled else None, pairs)
        self._index[shard] = held  # one assignment of a whole value: safe on the read threads
        return held

    def runs(self, chunks: np.ndarray, targets: np.ndarray) -> tuple[list[Run], np.ndarray]:
        """The reads of inner chunks `chunks` ([n] sorted chunk numbers of the array) into rows `targets` [n]:
        (runs of chunks back to back in a file, the targets of chunks never written: [e])."""
        shards, within = np.divmod(chunks, self.per_shard)  # [n], [n]
        out, empty = [], []
        for s in np.unique(shards).tolist():
            mine = shards == s
            runs, never = self._plan(s, self._held(s), within[mine], targets[mine])
            out += runs
            empty.append(never)
        return out, np.concatenate(empty) if empty else np.zeros(0, dtype=np.int64)

    @staticmethod
    def _plan(shard: int, held: tuple, within: np.ndarray, targets: np.ndarray) -> tuple[list[Run], np.ndarray]:
        """Chunks `within` [m] (sorted numbers within the shard) into rows `targets` [m], placed by index `held`:
        (its runs of chunks back to back, the targets of chunks never written)."""
        planned, index = held
        pairs = index[within]  # [m, 2]
        written = pairs[:, 0] != EMPTY
        pairs, within, t = pairs[written].astype(np.int64), within[written], targets[written]
        cut = np.flatnonzero(pairs[1:, 0] != pairs[:-1, 0] + pairs[:-1, 1]) + 1  # not back to back
        cut = np.union1d(cut, np.arange(MAX_RUN, len(pairs), MAX_RUN)).astype(np.int64)
        runs = [Run(shard, planned, c, int(p[0, 0]), p[:, 1], tt)
                for p, c, tt in zip(np.split(pairs, cut), np.split(within, cut), np.split(t, cut)) if len(p)]
        return runs, targets[~written]

    # ---- reading ------------------------------------------------------------------------------------------------
    def read(self, run: Run, out: np.ndarray) -> None:
        """Read one run into rows `run.targets` of `out` ([N, cf, K, D] in the stored dtype, C-contiguous), every
        chunk's crc32c checked; StoreDamageError naming the part and the file."""
        fd = self._open(run.shard)
        try:
            st = os.fstat(fd)
            runs = [run]
            if run.planned != identity(st):
                # The file is not the one whose index placed the run (written or replaced since, or too fresh to
                # tell): its chunks may have moved, and a valid chunk at a stale offset would pass its crc32c. So
                # the run's chunks are placed again by the index of the file open now.
                runs, never = self._placed_again(run, fd, st)
                self.fill_value(out, never)
            for r in runs:
                self._read_run(fd, r, out)
        finally:
            os.close(fd)

    def _placed_again(self, run: Run, fd: int, st: os.stat_result) -> tuple[list[Run], np.ndarray]:
        """The run's chunks placed by the index of the shard file open as `fd` (fstat `st`): the one held if it is
        that file's, else read from it: (runs, targets of chunks never written)."""
        held = self._index.get(run.shard)
        if held is None or held[0] != identity(st):
            held = self._load(fd, run.shard, st)
        placed = held[1][run.chunks].astype(np.int64)  # [m, 2]
        if placed[0, 0] == run.offset and (np.diff(placed[:, 0]) == placed[:-1, 1]).all() \
                and np.array_equal(placed[:, 1], run.sizes):  # where they were (a fresh file, read again)
            return [run], np.zeros(0, dtype=np.int64)
        return self._plan(run.shard, held, run.chunks, run.targets)

    def _read_run(self, fd: int, run: Run, out: np.ndarray) -> None:
        """`read` of a run placed by the index of the file open as `fd`."""
        want = int(run.sizes.sum())
        if self.zstd:
            data = bytearray(want)
            buffers = [memoryview(data)]
        else:
            crcs = bytearray(4 * len(run.sizes))
            views = memoryview(crcs)
            buffers = []
            for j, t in enumerate(run.targets.tolist()):
                buffers += [memoryview(out[t]).cast("B"), views[4 * j : 4 * j + 4]]
        got = read_into(fd, buffers, run.offset)
        if got != want:
            raise self.damage(run.shard, f"ends {want - got} bytes before the inner chunks at byte {run.offset} do")
        if self.zstd:
            self._decode_zstd(run, bytes(data), out)
            return
        for j, t in enumerate(run.targets.tolist()):
            chunk = out[t].view()
            chunk.flags.writeable = False  # google_crc32c takes read-only buffers only
            if google_crc32c.value(chunk) != int.from_bytes(crcs[4 * j : 4 * j + 4], "little"):
                at = run.offset + int(run.sizes[:j].sum())
                raise self.damage(run.shard, f"crc32c checksum mismatch in the inner chunk at byte {at}")

    def _decode_zstd(self, run: Run, data: bytes, out: np.ndarray) -> None:
        from numcodecs import Zstd  # zarr's ZstdCodec decodes with it

        start = 0
        for size, t in zip(run.sizes.tolist(), run.targets.tolist()):
            chunk, at = data[start : start + size], run.offset + start
            if google_crc32c.value(chunk[:-4]) != int.from_bytes(chunk[-4:], "little"):
                raise self.damage(run.shard, f"crc32c checksum mismatch in the inner chunk at byte {at}")
            try:
                raw = Zstd().decode(chunk[:-4])
            except Exception as e:  # noqa: BLE001 — numcodecs raises RuntimeError/ValueError for bad frames
                raise self.damage(run.shard, f"inner chunk at byte {at}: {e}") from None
            if len(raw) != self.payload:
                raise self.damage(run.shard, f"inner chunk at byte {at} decodes to {len(raw)} bytes")
            out[t] = np.frombuffer(raw, dtype=self.dtype).reshape(self.chunk_shape)
            start += size

    def fill_value(self, out: np.ndarray, targets: np.ndarray) -> None:
        """What zarr reads for chunks never written: the fill value."""
        out[targets] = self.fill
