"""Reading a token store: `TokenStore`, a read-only view of the committed parts.

Videos are looked up in the columnar index (`index.py`: memory-mapped, shared between processes, parts published
since the last index update read from their commit records). Only committed parts are ever seen: a part being
written lives under `staging/` and appears atomically when its writer commits.

A reader never hands out tokens it has not checked the way `verify --quick` does: the first time a process touches a
part, its commit record is read and compared with the index, and every file the record lists is checked for
presence and size (a deleted shard would otherwise read as zeros, a truncated one may too). Reads go through zarr,
which checks each chunk's crc32c; a failure becomes a `StoreDamageError` naming the part and the file. Batches of
scattered chunks (stage 2's random reads) are read by `chunks.ShardChunks` (`shard_chunks`), which checks them the
same way without zarr's per-chunk pipeline. Whole parts (`part_tokens`) are decoded by zarrs instead, which is much
faster but does not check crc32c on partly filled shards, so their shard files are first read and checked here
(`read_shards`, `check_shard`).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from contextlib import nullcontext
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from vivitcache.store.chunks import EMPTY, ShardChunks, shard_index
from vivitcache.store.dtypes import decode_tokens
from vivitcache.store.index import VIDEO_FIELDS, open_index, read_commit, read_commit_digest
from vivitcache.store.layout import (
    FRAME_TIMES,
    META,
    PARTS,
    REPAIR_HINT,
    ROOT_KEY,
    SCHEMA,
    TOKENS,
    StoreDamageError,
    StoreError,
    StoreLayout,
    read_json,
)

__all__ = ["StoreDamageError", "StoreError", "TokenStore", "VIDEO_FIELDS", "read_root"]


def read_root(path: Path) -> dict:
    """The root record (`attributes["vivitcache"]`) of the store at `path`; StoreError saying why it is not one."""
    if not path.exists():
        raise StoreError(f"{path}: no such token store")
    if not path.is_dir():
        raise StoreError(f"{path}: not a folder (a token store is a .zarr folder)")
    if not (path / META).is_file():
        kind = "a zarr v2 store" if (path / ".zgroup").exists() or (path / ".zarray").exists() else "not a zarr store"
        raise StoreError(f"{path}: {kind}, not a vivitcache token store (no zarr.json)")
    meta = read_json(path / META)
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    root = attrs.get(ROOT_KEY) if isinstance(attrs, dict) else None
    if not isinstance(root, dict):
        raise StoreError(f"{path}: a zarr store but not a vivitcache token store (no {ROOT_KEY!r} attributes)")
    schema = root.get("schema")
    if schema != SCHEMA:
        hint = "upgrade vivitcache" if isinstance(schema, int) and schema > SCHEMA else "re-extract it"
        raise StoreError(f"{path}: store schema {schema!r}, this vivitcache reads schema {SCHEMA} ({hint})")
    for key, kind in (("fingerprint", dict), ("layout", dict), ("classes", list)):
        if not isinstance(root.get(key), kind):
            raise StoreError(f"{path}: root record has no valid {key!r}")
    return root


class TokenStore:
    """Read-only view of a store's committed videos. Picklable (the index is re-mapped after unpickling)."""

    def __init__(self, path: Path, root: dict, strict: bool = True):
        self.path = path
        self.strict = strict
        self.fingerprint: dict = root["fingerprint"]
        self.layout = StoreLayout.from_dict(root["layout"])
        self.classes: list[str] = list(root["classes"])
        self.provenance: dict = root.get("provenance", {})
        self.created: str | None = root.get("created")
        self._index = open_index(path, strict=strict)
        self.problems = self._index.problems  # parts left out because their commit record is damaged (strict=False)
        self._arrays: dict[tuple[str, str, bool], CheckedArray] = {}  # (part, array, through zarrs)
        self._checked: set[str] = set()
        self._shards_checked: set[str] = set()  # parts whose shard checksums `read_shards` checked
        self._chunk_readers: dict[str, ShardChunks | None] = {}

    @classmethod
    def open(cls, path, strict: bool = True) -> TokenStore:
        """Open a store read-only; StoreError if it is missing, not a vivitcache store, or of another schema.

        strict=False leaves out parts with a damaged commit record (listed in `.problems`) instead of raising.
        """
        path = Path(os.path.abspath(path))
        return cls(path, read_root(path), strict=strict)

    def __getstate__(self):
        return {"path": self.path, "strict": self.strict}

    def __setstate__(self, state):
        self.__init__(state["path"], read_root(state["path"]), strict=state["strict"])

    # ---- the index ----------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Committed video ids, sorted."""
        return list(self._index.ids())

    def part_ids(self) -> list[str]:
        """Committed part ids, sorted."""
        return self._index.part_ids()

    def commit(self, part_id: str) -> dict:
        """The commit record of one part (read from the part; checked against the index)."""
        self._check_part(part_id)
        return read_commit(self.path, part_id)

    @property
    def total_frames(self) -> int:
        return self._index.total_frames()

    @property
    def duplicates(self) -> list[tuple[str, str, str]]:
        """(id, kept part, ignored part) for ids committed twice; the smaller part id wins, deterministically."""
        return self._index.duplicates()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, video_id) -> bool:
        return self._index.find(video_id) is not None

    def _row(self, video_id: str):
        found = self._index.find(video_id)
        if found is None:
            raise StoreError(f"{self.path}: video id {video_id!r} is not committed in this store")
        return found

    def label(self, video_id: str) -> int:
        """Class index (into `.classes`), -1 when unlabelled (the newest label record wins over the commit's)."""
        seg, row = self._row(video_id)
        return self._index.label(seg, row, video_id)

    def num_frames(self, video_id: str) -> int:
        seg, row = self._row(video_id)
        return int(seg.num_frames[row])

    def fps(self, video_id: str) -> float | None:
        seg, row = self._row(video_id)
        fps = float(seg.fps[row])
        return None if np.isnan(fps) else fps

    def source(self, video_id: str) -> str:
        seg, row = self._row(video_id)
        return seg.source[row]

    def location(self, video_id: str) -> tuple[str, int, int]:
        """(part_id, offset of its first frame in the part's tokens array, num_frames)."""
        seg, row = self._row(video_id)
        return seg.part_names[int(seg.part[row])], int(seg.offset[row]), int(seg.num_frames[row])

    def failures(self) -> list[dict]:
        """The failure ledger: [{id, source, error, part_id}] for videos that have no tokens, sorted by id."""
        return self._index.failures()

    def part_sums(self) -> dict[str, int]:
        """Totals over committed parts from the index: frames, videos, failures, disk_bytes, files."""
        return self._index.part_sums()

    # ---- checks -----------------------------------------------------------------------------------------------------
    def _check_part(self, part_id: str) -> None:
        """What `verify --quick` checks, once per part and process, before any of its tokens are handed out."""
        if part_id in self._checked:
            return
        where = self._index.part_row(part_id)
        if where is None:
            raise StoreError(f"{self.path}: no committed part {part_id!r}")
        try:
            commit, digest = read_commit_digest(self.path, part_id)
            seg, p = where
            if digest != seg.digest[p]:
                raise StoreDamageError(f"part {part_id}: {self.path / PARTS / part_id / META} differs from the "
                                       "record the index holds (re-published since, or edited by hand; "
                                       f"`vivitcache index {self.path}` re-reads every record)")
            check_part_files(self.path / PARTS / part_id, commit, self.layout)
        except StoreDamageError as e:
            raise StoreDamageError(f"{self.path}: {e} ({REPAIR_HINT})") from None
        self._checked.add(part_id)

    # ---- tokens ---------------------------------------------------------------------------------------------------
    def _array(self, part_id: str, name: str, fast: bool = False) -> CheckedArray:
        key = (part_id, name, fast)
        arr = self._arrays.get(key)
        if arr is None:
            self._check_part(part_id)
            folder = self.path / PARTS / part_id / name
            pipeline = codec_pipeline() if fast else None
            try:
                with _OPEN_LOCK, zarr.config.set({"codec_pipeline.path": pipeline}) if pipeline else nullcontext():
                    raw = zarr.open_array(store=str(folder), mode="r")  # keeps the pipeline it was opened with
            except Exception as e:  # noqa: BLE001 — zarr raises several types for a missing/broken array
                raise StoreDamageError(f"part {part_id}: {folder}: cannot open ({e}) ({REPAIR_HINT})") from None
            arr = self._arrays[key] = CheckedArray(raw, part_id, folder)
        return arr

    def tokens_array(self, part_id: str) -> CheckedArray:
        """The tokens array [F_part, K, D] of one part (stored dtype: float16, or uint16 bf16 bits), checked."""
        return self._array(part_id, TOKENS)

    def shard_chunks(self, part_id: str) -> ShardChunks | None:
        """The direct reader of the part's inner token chunks (`chunks.py`: checked as zarr checks them, without its
        per-chunk pipeline), or None when its tokens array is not laid out as our writer makes it (read it through
        `tokens_array` then). The part's files are checked first, as for every read."""
        if part_id not in self._chunk_readers:
            arr = self.tokens_array(part_id)
            self._chunk_readers[part_id] = ShardChunks.of(part_id, arr.folder, arr)
        return self._chunk_readers[part_id]

    def read_shards(self, part_id: str) -> int:
        """Read the part's token shard files front to back, each in one pass, and check every crc32c in them
        (`check_shard`); afterwards `part_tokens` decodes them from the page cache. Returns the bytes read.

        Hand-written reads because zarr (zarrs too) reads a cold shard as many chunk-sized requests, some in
        parallel, which defeats the kernel's read-ahead: measured on our 15 MiB shards, zarrs read them cold at
        0.8-0.95 GB/s against 1.5-1.7 GB/s for plain sequential reads of the same files (BENCHMARKS.md)."""
        arr = self.tokens_array(part_id)  # checks the part's files first
        sharding = arr.metadata.codecs[0]
        if arr.shards is None:  # not sharded: zarr's pipeline (the fallback of `part_tokens`) checks every chunk
            return 0
        inner = int(np.prod(arr.shards)) // int(np.prod(sharding.chunk_shape))  # inner chunks per shard
        total = 0
        for f in sorted(f for f in (arr.folder / "c").rglob("*") if f.is_file()):
            data = _read_whole(f)  # [bytes] uint8, read-only
            try:
                check_shard(data, inner, isinstance(sharding.codecs[-1], Crc32cCodec))
            except ValueError as e:
                raise StoreDamageError(f"part {part_id}: {f}: unreadable ({e}) ({REPAIR_HINT})") from None
            total += len(data)
        self._shards_checked.add(part_id)
        return total

    def part_tokens(self, part_id: str) -> np.ndarray:
        """Every token of a part, read whole: [F_part, K, D] in the stored dtype. Its shards' checksums are checked
        first (`read_shards`, unless this process did already); then zarrs decodes them (`codec_pipeline`), much
        faster than zarr's own pipeline on our shards (BENCHMARKS.md, "Stage-2 loader")."""
        if part_id not in self._shards_checked:
            self.read_shards(part_id)
        checked = part_id in self._shards_checked  # sharded, every checksum checked: zarrs may decode it
        return self._array(part_id, TOKENS, fast=checked)[:]

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Stored values → floats: identity for fp16, bf16 bits → float32."""
        return decode_tokens(raw, self.layout.dtype)

    def video(self, video_id: str) -> np.ndarray:
        """All frames of a video: [T, K, D] float16 (fp16 store) or float32 (bf16 store)."""
        part_id, offset, n = self.location(video_id)
        return self.decode(self.tokens_array(part_id)[offset : offset + n])

    def clip(self, video_id: str, frame_indices) -> np.ndarray:
        """Frames at `frame_indices` (any order, repeats allowed): [len, K, D]; each needed chunk is read once."""
        part_id, offset, n = self.location(video_id)
        idx = np.asarray(frame_indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise StoreError(f"video {video_id!r}: frame indices must be a 1-D list of integers, got {idx.dtype} "
                             f"{list(idx.shape)}")
        k, d = self.layout.tokens_per_frame, self.layout.dim
        if idx.size == 0:
            return self.decode(np.zeros((0, k, d), dtype=self.layout.numpy_dtype))
        if idx.min() < 0 or idx.max() >= n:
            raise StoreError(f"video {video_id!r}: frame index out of range [0, {n}) in {idx.min()}..{idx.max()}")
        unique, inverse = np.unique(idx, return_inverse=True)  # sorted frames to read, and where each goes
        frames = offset + unique
        arr = self.tokens_array(part_id)
        chunk = self.layout.chunk_frames
        chunks_needed = len(np.unique(frames // chunk))
        chunks_spanned = int(frames[-1] // chunk - frames[0] // chunk + 1)
        if chunks_needed == chunks_spanned:  # dense: one contiguous read touches exactly the needed chunks
            raw = arr[int(frames[0]) : int(frames[-1]) + 1][unique - unique[0]]
        else:  # sparse: orthogonal selection reads only the chunks holding the wanted frames
            raw = arr.get_orthogonal_selection((frames, slice(None), slice(None)))
        return self.decode(raw[inverse.reshape(-1)])  # [len, K, D]

    def frame_times(self, video_id: str) -> np.ndarray:
        """Presentation time in seconds of every stored frame of a video: [T] float64 (NaN if unknown)."""
        part_id, offset, n = self.location(video_id)
        return self._array(part_id, FRAME_TIMES)[offset : offset + n]

    def __repr__(self) -> str:
        return (f"TokenStore({str(self.path)!r}, videos={len(self)}, frames={self.total_frames}, "
                f"tokens={self.layout.tokens}, K={self.layout.tokens_per_frame}, D={self.layout.dim}, "
                f"{self.layout.dtype})")


_OPEN_LOCK = threading.Lock()  # zarr's config is process-wide: one opener at a time sets and restores it


def codec_pipeline() -> str | None:
    """The codec pipeline `TokenStore.part_tokens` decodes whole parts with: zarrs' (Rust, the same format) when
    installed and not turned off with VIVITCACHE_ZARRS=0; on our shards it decodes many times faster than zarr's
    default pipeline (measured in BENCHMARKS.md, "Stage-2 loader"). Slices stay on zarr's own pipeline and chunk
    batches go to `chunks.ShardChunks`, both checking each chunk's crc32c: zarrs does not on reads smaller than a
    shard (`check_shard`)."""
    if os.environ.get("VIVITCACHE_ZARRS", "1") == "0" or importlib.util.find_spec("zarrs") is None:
        return None
    return "zarrs.ZarrsCodecPipeline"


_THREAD = threading.local()


def _read_whole(f: Path) -> np.ndarray:
    """File `f`'s bytes as a read-only uint8 array over a buffer reused by this thread (a fresh one per file would
    cost page faults each time)."""
    n = f.stat().st_size
    buffer = getattr(_THREAD, "buffer", None)
    if buffer is None or len(buffer) < n:
        buffer = _THREAD.buffer = bytearray(max(n, 8 << 20))
    view, done = memoryview(buffer), 0
    with open(f, "rb", buffering=0) as fh:
        while done < n and (got := fh.readinto(view[done : min(n, done + (8 << 20))])):
            done += got
    data = np.frombuffer(buffer, dtype=np.uint8, count=done)
    data.flags.writeable = False
    return data


def check_shard(data: np.ndarray, inner_chunks: int, chunk_crc: bool) -> None:
    """ValueError unless every crc32c of one shard file (`data`, read-only uint8) matches: its index's and, with
    `chunk_crc`, each inner chunk's.

    Hand-written because zarrs (0.2.3) decodes a shard without checking its inner chunks' crc32c whenever a read
    covers less than the whole shard, and a part's last shard is always partly filled, so zarrs would hand out
    flipped bytes as tokens (tests/test_loader.py shows it). The layout is the zarr v3 sharding codec's, index at the
    end: `inner_chunks` pairs of little-endian uint64 (offset, nbytes; 2**64 - 1 for a chunk never written), then the
    index's crc32c; each inner chunk ends with the crc32c of the bytes before it."""
    tail = data[-inner_chunks * 16 - 4 :] if len(data) >= inner_chunks * 16 + 4 else data[:0]
    pairs = shard_index(tail, inner_chunks, len(data), chunk_crc)  # [inner_chunks, (offset, nbytes)]
    for offset, nbytes in pairs[pairs[:, 0] != EMPTY].tolist():
        chunk = data[offset : offset + nbytes]
        if chunk_crc and google_crc32c.value(chunk[:-4]) != int.from_bytes(chunk[-4:].tobytes(), "little"):
            raise ValueError(f"crc32c checksum mismatch in the inner chunk at byte {offset}")


class CheckedArray:
    """A part's zarr array whose read errors (crc32c mismatch, undecodable shard) name the part and the file.

    Everything but reading is the zarr array's own (`shape`, `dtype`, `chunks`, `shards`, `metadata`, ...).
    """

    def __init__(self, array, part_id: str, folder: Path):
        self._array, self.part_id, self.folder = array, part_id, folder

    def __getattr__(self, name):
        return getattr(self._array, name)

    def __len__(self) -> int:
        return self._array.shape[0]

    def _read(self, fn, selection):
        try:
            return fn(selection)
        except (StoreError, IndexError, TypeError):
            raise
        except Exception as e:  # noqa: BLE001 — zarr/numcodecs raise ValueError/RuntimeError for bad bytes
            raise StoreDamageError(
                f"part {self.part_id}: {self._files(selection)}: unreadable ({type(e).__name__}: {e}) "
                f"({REPAIR_HINT})") from None

    def _files(self, selection) -> str:
        first = selection[0] if isinstance(selection, tuple) else selection
        shard = (self._array.shards or self._array.chunks)[0]
        if isinstance(first, slice):
            start, stop, _ = first.indices(self._array.shape[0])
            keys = range(start // shard, max(start, stop - 1) // shard + 1)
        else:
            keys = sorted({int(i) // shard for i in np.asarray(first).reshape(-1)})
        rank = len(self._array.shape)
        names = [str(self.folder / self._array.metadata.encode_chunk_key((k,) + (0,) * (rank - 1))) for k in keys]
        return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

    def __getitem__(self, selection):
        return self._read(self._array.__getitem__, selection)

    def get_orthogonal_selection(self, selection):
        return self._read(self._array.get_orthogonal_selection, selection)


def check_part_files(part: Path, commit: dict, layout: StoreLayout) -> None:
    """StoreDamageError unless every file the commit record lists is there with its recorded size.

    Records written before file sizes were recorded (no `files`): every shard covering committed frames and the
    frame-times chunk must exist (zarr reads a missing one as the fill value: zeros, NaN).
    """
    files = commit.get("files")
    if files is None:
        shard = layout.shard_frames
        names = [f"{TOKENS}/c/{i}/0/0" for i in range(-(-commit["frames"] // shard))]
        names += [f"{FRAME_TIMES}/c/0"] if commit["frames"] else []
        names += [f"{TOKENS}/{META}", f"{FRAME_TIMES}/{META}"]
        files = {n: None for n in names}
    for name, size in files.items():
        try:
            have = os.stat(part / name).st_size
        except FileNotFoundError:
            raise StoreDamageError(f"part {part.name}: {part / name} is missing") from None
        if size is not None and have != size:
            raise StoreDamageError(f"part {part.name}: {part / name} has {have} bytes, its commit record says {size} "
                                   "(truncated or changed after commit)")
