"""Writing a token store: create or reopen it, plan parts, write each part and publish it atomically.

Commit protocol (safe for many writers on POSIX shared filesystems: NFS, Lustre, GPFS):
1. A part (a fixed group of videos, see `plan_parts`) is written by one `PartWriter` into its own folder
   `staging/<part_id>.<host>.<pid>.<token>/`: whole shards only, never a shard another writer touches (zarr loses
   data when two writers share a shard).
2. At the end the part's `zarr.json` is atomically replaced by the commit record (videos, offsets, failures,
   sha256 of the tokens), then the folder is renamed to `parts/<part_id>` — one atomic `rename(2)`.
3. If `parts/<part_id>` already exists another writer won the race: this copy is deleted, the result says
   `already_committed`. So a part is either absent or complete; a killed writer leaves only a staging folder,
   which `cleanup_stale_staging` removes; resuming rewrites exactly the parts that are not committed.

Creating a store is race-safe the same way: the root is built in a sibling temporary folder and renamed into place;
a process that loses the race opens the winner's store and compares fingerprints.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from vivitcache import __version__, jsonio
from vivitcache.provenance import now_iso
from vivitcache.store.dtypes import encode_tokens
from vivitcache.store.fingerprint import FingerprintMismatchError, canonical_json, fingerprint_diff
from vivitcache.lease import host_name, new_token, owner_alive
from vivitcache.store.claims import DEFAULT_TIMEOUT_S, Claim
from vivitcache.store.index import open_index, update_index
from vivitcache.store.layout import (
    COMMIT_KEY,
    FRAME_TIMES,
    INDEX,
    META,
    PARTS,
    ROOT_KEY,
    SCHEMA,
    STAGING,
    STAGING_KEY,
    TOKENS,
    StoreError,
    StoreLayout,
    check_part_id,
    group_meta,
    source_stat,
    parse_staging_name,
    read_group_attrs,
    staging_name,
    write_json_atomic,
)

DAMAGED = "damaged"
"""Where `move_aside` keeps damaged parts."""

DEFAULT_STALE_AGE_S = 24 * 3600.0
"""A staging folder untouched this long is presumed abandoned even if its writer runs on another host."""


@dataclass
class Part:
    """A unit of work: a fixed group of videos written, committed and resumed together."""

    part_id: str
    """Hex id derived from the sorted video ids (16 hex chars of their sha256)."""
    ids: list[str]
    """The video ids in this part, sorted."""


def plan_parts(video_ids: list[str], videos_per_part: int) -> list[Part]:
    """Sort ids, cut them into groups of `videos_per_part`; each part's id is a hash of its ids (deterministic).

    The same ids and `videos_per_part` always give the same parts, which is what lets a resumed run skip
    committed parts. Duplicate ids are refused (one video must have one place).
    """
    if not isinstance(videos_per_part, int) or videos_per_part < 1:
        raise StoreError(f"videos_per_part must be a positive integer, got {videos_per_part!r}")
    ids = sorted(video_ids)
    for a, b in zip(ids, ids[1:]):
        if a == b:
            raise StoreError(f"duplicate video id {a!r}")
    parts = []
    for start in range(0, len(ids), videos_per_part):
        group = ids[start : start + videos_per_part]
        # JSON of the list, not a plain join: ids may contain any separator, and ["a\nb"] must not equal ["a", "b"].
        digest = hashlib.sha256(json.dumps(group).encode()).hexdigest()[:16]
        parts.append(Part(part_id=digest, ids=group))
    return parts


def _check_video_id(video_id) -> str:
    if not isinstance(video_id, str) or not video_id:
        raise StoreError(f"video id must be a non-empty string, got {video_id!r}")
    return video_id


def _finite_or_none(value) -> float | None:
    """fps as a float, or None when unknown (NaN is not JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


SHARD_TARGET_BYTES = 32 * 2**20
"""Default shard file size: tens of MB, so a store is few large files (K400 at ViT-g: see the README)."""


def shard_frames_for(frame_bytes: int, chunk_frames: int, target_bytes: int = SHARD_TARGET_BYTES) -> int:
    """Frames per shard so that a full shard is at most `target_bytes` (a whole number of chunks, at least one)."""
    chunks = max(1, target_bytes // max(1, frame_bytes * chunk_frames))
    return int(chunks * chunk_frames)


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _disk_bytes(path: Path) -> int:
    return sum(os.stat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)


def _files(path: Path) -> dict[str, int]:
    """{relative path: size} of every file of a part but its own record (what readers and `verify --quick` check)."""
    out = {}
    for folder, _, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, path)
            if rel != META:
                out[rel.replace(os.sep, "/")] = os.stat(full).st_size
    return dict(sorted(out.items()))


def _failure(video_id: str, source, error) -> dict:
    """A ledger entry; the source's stat, taken now, lets a later run see the file changed (`extract/work.py`)."""
    return {"id": video_id, "source": str(source), "error": str(error), "source_stat": source_stat(str(source))}


class StoreWriter:
    """Write access to one store: checks its fingerprint once, hands out `PartWriter`s. Picklable (a path + records)."""

    def __init__(self, path: Path, fingerprint: dict, layout: StoreLayout, classes: list[str]):
        self.path = path
        self.fingerprint = fingerprint
        self.layout = layout
        self.classes = classes

    @classmethod
    def create_or_open(
        cls, path, fingerprint: dict, layout: StoreLayout, classes: list[str], provenance: dict | None = None
    ) -> StoreWriter:
        """Create the store at `path`, or open the existing one; FingerprintMismatchError if it was made differently.

        Fingerprint, layout and classes must all match (labels are indices into `classes`). Safe when several
        processes create the same store at once: exactly one creates it, the others open and compare.
        """
        path = Path(os.path.abspath(path))
        if not isinstance(layout, StoreLayout):
            raise StoreError(f"layout must be a StoreLayout, got {type(layout).__name__}")
        if not isinstance(fingerprint, dict):
            raise StoreError(f"fingerprint must be a dict, got {type(fingerprint).__name__}")
        classes = list(classes)
        if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
            raise StoreError("classes must be distinct strings")
        wanted = {"fingerprint": fingerprint, "layout": layout.to_dict(), "classes": classes}
        # Refuse non-JSON records before anything is written.
        canonical_json({**wanted, "provenance": provenance}, "fingerprint/classes/provenance")
        if not (path / META).exists():
            _create_root(path, {**wanted, "provenance": provenance or {}})
        writer = cls.open(path)
        have = {"fingerprint": writer.fingerprint, "layout": writer.layout.to_dict(), "classes": writer.classes}
        diff = fingerprint_diff(have, wanted)
        if diff:
            context = f"store {path} was made with different settings"
            raise FingerprintMismatchError(diff, context, "store has", "you asked for", _classes_hint(have, wanted))
        return writer

    @classmethod
    def open(cls, path) -> StoreWriter:
        """Open an existing store for writing, taking its fingerprint, layout and classes as they are."""
        from vivitcache.store.reader import read_root  # the one place that validates a root

        path = Path(os.path.abspath(path))
        root = read_root(path)
        return cls(path, root["fingerprint"], StoreLayout.from_dict(root["layout"]), list(root["classes"]))

    # ---- what is done -------------------------------------------------------------------------------------------
    def committed_parts(self) -> set[str]:
        """Ids of the parts with a valid commit record (a damaged part counts as not committed, so it is redone)."""
        return set(open_index(self.path, strict=False).part_ids())

    def committed_ids(self, include_failures: bool = True) -> set[str]:
        """Video ids committed with tokens, plus (by default) those in the failure ledger (from the index)."""
        view = open_index(self.path, strict=False)
        ids = set(view.ids())
        if include_failures:
            ids.update(f["id"] for f in view.failures())
        return ids

    def consolidate(self, force: bool = False, reread: set[str] | frozenset[str] = frozenset()) -> dict:
        """Bring the columnar index up to date (incremental; nothing is written when it is fresh); `reread`: parts
        published by this run, whose records are read again if the index already lists an older part of that id;
        `force`: rebuild from every commit record. Returns {parts, videos, written}."""
        return update_index(self.path, force=force, reread=frozenset(reread))

    def claim(self, part_id: str, timeout_s: float = DEFAULT_TIMEOUT_S, heartbeat_s: float | None = None) -> Claim:
        """A claim on a part (call `.acquire()`): keeps a second live writer from extracting it too."""
        return Claim(self.path, check_part_id(part_id), timeout_s, heartbeat_s)

    def cleanup_stale_staging(self, max_age_s: float | None = DEFAULT_STALE_AGE_S) -> list[str]:
        """Remove staging folders of dead writers: same host with a dead pid, or untouched for `max_age_s` seconds.

        A writer on another host cannot be asked whether it lives, hence the age rule (age = newest file in the
        folder, which a live writer refreshes with every shard); keep `max_age_s` well above the time one shard
        takes. Assumes host names are unique across the cluster. Returns the names removed.
        """
        removed = []
        me, now = host_name(), time.time()
        for entry in _staging_entries(self.path):
            owner = parse_staging_name(entry.name)
            dead = owner is not None and owner["host"] == me and not owner_alive(owner)
            try:
                old = max_age_s is not None and now - _newest_mtime(Path(entry.path)) > max_age_s
            except FileNotFoundError:
                continue  # published or removed meanwhile
            if dead or old:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        for folder in (self.path, self.path / INDEX):  # leftovers of atomic JSON writes
            for tmp in folder.glob(jsonio.TEMP_GLOB) if folder.is_dir() else []:
                if max_age_s is not None and now - tmp.stat().st_mtime > max_age_s:
                    tmp.unlink(missing_ok=True)
        return removed

    def move_aside(self, part_id: str) -> Path | None:
        """Move a committed (damaged) part out of `parts/` into `damaged/<part_id>.<time>.<token>`; returns it
        (None when the part's folder is gone already: nothing to keep).

        Kept for inspection, never read again; delete `damaged/` when done with it."""
        check_part_id(part_id)
        if not (self.path / PARTS / part_id).exists():
            return None
        folder = self.path / DAMAGED
        if not (folder / META).exists():
            folder.mkdir(exist_ok=True)
            write_json_atomic(folder / META, group_meta({}))
        target = folder / f"{part_id}.{time.strftime('%Y%m%dT%H%M%S')}.{new_token()[:8]}"
        os.rename(self.path / PARTS / part_id, target)
        return target

    def part(self, part_id: str) -> PartWriter:
        """A writer for one part; use it as a context manager (commits on clean exit, discards on exception)."""
        return PartWriter(self, check_part_id(part_id))


def _classes_hint(have: dict, wanted: dict) -> str:
    """What to do when only the class list differs, e.g. annotations that hold a subset of the store's classes."""
    if have["classes"] == wanted["classes"]:
        return ""
    missing = [c for c in have["classes"] if c not in wanted["classes"]]
    named = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    what = f"your annotations lack {len(missing)} of its classes ({named}); " if missing else ""
    return (f"{what}pass `--labels FILE` naming the store's classes in its order (a JSON list, or one name per line; "
            "`vivitcache info STORE --json` shows them) so every label keeps its index")


def _staging_entries(root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(root / STAGING) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def staging_dirs(root: Path) -> list[dict]:
    """Every staging folder: {name, part_id, host, pid, age_s, stale}; stale = same host and its writer is dead."""
    out, me, now = [], host_name(), time.time()
    for entry in _staging_entries(root):
        owner = parse_staging_name(entry.name) or {"part_id": None, "host": None, "pid": 0, "token": None}
        try:
            age = now - _newest_mtime(Path(entry.path))
        except FileNotFoundError:
            continue
        stale = owner["host"] == me and not owner_alive(owner)
        out.append({"name": entry.name, "part_id": owner["part_id"], "host": owner["host"], "pid": owner["pid"],
                    "age_s": round(age, 1), "stale": stale})
    return out


def _create_root(path: Path, record: dict) -> None:
    """Build a new store beside `path` and rename it into place; losing the race to another creator is fine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{new_token()}.creating"
    tmp.mkdir()
    try:
        attrs = {ROOT_KEY: {"schema": SCHEMA, "created": now_iso(), "vivitcache_version": __version__, **record}}
        write_json_atomic(tmp / META, group_meta(attrs))
        for child in (PARTS, STAGING):
            (tmp / child).mkdir()
            write_json_atomic(tmp / child / META, group_meta({}))
        try:
            os.rename(tmp, path)  # replaces nothing but an empty folder; fails if the store exists
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise StoreError(f"cannot create store {path}: {e}") from None
            if path.is_file() or path.is_symlink() and not path.is_dir():
                raise StoreError(f"cannot create store {path}: a file is in the way") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class PartWriter:
    """Writes one part: videos streamed in windows, buffered into whole shards, committed atomically at the end.

    ```
    with writer.part(part.part_id) as pw:
        for video in part:
            pw.begin_video(id, label, source, fps)
            for window in ...: pw.append(tokens [n, K, D], frame_times [n])
            pw.end_video()            # or pw.abort_video(error) if decoding failed midway
        pw.add_failure(id, source, error)   # a video that could not even be opened
    pw.result  # {"committed", "already_committed", "frames", "bytes", "videos", "failures", "part_id"}
    ```
    Memory: at most one shard of frames (plus the current window) is buffered.
    """

    def __init__(self, store: StoreWriter, part_id: str):
        self.store, self.part_id, self.layout = store, part_id, store.layout
        self.token, self.host, self.pid = new_token(), host_name(), os.getpid()
        self.staging = store.path / STAGING / staging_name(part_id, self.host, self.pid, self.token)
        self.result: dict | None = None
        self._tokens = None  # zarr array in staging, created on first use
        self._pending: list[np.ndarray] = []  # encoded frames not yet written, starting at self._flushed
        self._pending_n = 0
        self._flushed = 0  # frames written to the array; always a multiple of shard_frames until commit
        self._shard_digests: list[bytes] = []
        self._videos: list[dict] = []
        self._failures: list[dict] = []
        self._times: list[np.ndarray] = []  # frame times of ended videos
        self._ids: set[str] = set()
        self._current: dict | None = None
        self._closed = False

    # ---- context manager --------------------------------------------------------------------------------------
    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False

    @property
    def already_committed(self) -> bool:
        """Whether `parts/<part_id>` exists now (checked before doing the work, it saves it)."""
        return (self.store.path / PARTS / self.part_id / META).exists()

    # ---- videos -----------------------------------------------------------------------------------------------
    def begin_video(self, video_id: str, label: int | str | None, source: str, fps: float | None) -> None:
        """Start a video; `label` is a class index, a class name, or None/-1 for unlabelled."""
        self._check_open()
        if self._current is not None:
            raise StoreError(f"begin_video({video_id!r}) while video {self._current['id']!r} is not ended")
        self._claim_id(video_id)
        self._current = {
            "id": video_id, "label": self._label_index(video_id, label), "offset": self.frames,
            "num_frames": 0, "source": str(source), "fps": _finite_or_none(fps),
            "times": [],
            # Frames of earlier videos in the shard this video starts in, kept so abort_video can rewind.
            "rewind": (self._flushed, list(self._pending), self._pending_n, len(self._shard_digests)),
        }

    def append(self, tokens, frame_times=None) -> None:
        """Add frames to the current video: tokens [n, K, D] float (numpy or torch), frame_times [n] seconds."""
        cur = self._require_video("append")
        k, d = self.layout.tokens_per_frame, self.layout.dim
        shape = tuple(getattr(tokens, "shape", ()))
        if len(shape) != 3 or shape[1:] != (k, d):
            raise StoreError(f"video {cur['id']!r}: tokens must be [n, {k}, {d}], got {list(shape)}")
        n = shape[0]
        times = np.full(n, np.nan) if frame_times is None else np.asarray(frame_times, dtype=np.float64).reshape(-1)
        if times.shape != (n,):
            raise StoreError(f"video {cur['id']!r}: {n} frames but {times.size} frame times")
        if n == 0:
            return
        stored = encode_tokens(tokens, self.layout.dtype)  # [n, K, D]
        self._pending.append(stored)
        self._pending_n += n
        cur["num_frames"] += n
        cur["times"].append(times)
        while self._pending_n >= self.layout.shard_frames:
            self._write_shard(self.layout.shard_frames)

    def end_video(self) -> None:
        """Finish the current video; a video with no frames goes to the failure ledger instead."""
        cur = self._require_video("end_video")
        if cur["num_frames"] == 0:
            self.abort_video("no frames were decoded")
            return
        self._times.extend(cur["times"])
        self._videos.append({k: cur[k] for k in ("id", "label", "offset", "num_frames", "source", "fps")})
        self._current = None

    def abort_video(self, error: str) -> None:
        """Drop the current video's frames (even those already in written shards) and record it as failed."""
        cur = self._require_video("abort_video")
        flushed, pending, pending_n, digests = cur["rewind"]
        self._flushed, self._pending, self._pending_n = flushed, pending, pending_n
        del self._shard_digests[digests:]
        self._current = None
        self._failures.append(_failure(cur["id"], cur["source"], error))

    def add_failure(self, video_id: str, source: str, error: str) -> None:
        """Record a video that could not be processed at all (it gets no tokens)."""
        self._check_open()
        self._claim_id(video_id)
        self._failures.append(_failure(video_id, source, error))

    @property
    def frames(self) -> int:
        """Frames written or buffered so far (the offset the next frame gets)."""
        return self._flushed + self._pending_n

    # ---- commit -----------------------------------------------------------------------------------------------
    def commit(self) -> dict:
        """Write the last shard, the frame times and the commit record, then publish the part by rename."""
        self._check_open()
        if self._current is not None:
            self.discard()
            raise StoreError(f"part {self.part_id}: video {self._current['id']!r} was begun but not ended")
        try:
            result = self._publish()
        except BaseException:
            self.discard()
            raise
        self._closed = True
        self.result = result
        return result

    def discard(self) -> None:
        """Throw the staging copy away; nothing is published."""
        self._closed = True
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.result is None:
            self.result = {"part_id": self.part_id, "committed": False, "already_committed": False,
                           "frames": 0, "bytes": 0, "videos": 0, "failures": 0}

    def _publish(self) -> dict:
        layout, total = self.layout, self.frames
        tokens = self._array()
        if self._pending_n:
            self._write_shard(self._pending_n)
        if tokens.shape[0] != total:
            tokens.resize((total, layout.tokens_per_frame, layout.dim))  # drops shards of an aborted last video
        times = np.concatenate(self._times) if self._times else np.zeros(0)  # [F]
        frame_times = zarr.create_array(
            store=str(self.staging / FRAME_TIMES), shape=(total,), dtype="float64", chunks=(max(total, 1),),
            compressors=[Crc32cCodec()], fill_value=np.nan, dimension_names=("frame",),
            config={"write_empty_chunks": True},  # all-NaN times are data too: the chunk must exist
        )
        if total:
            frame_times[:] = times
        self._check_staging_intact()
        commit = {
            "part_id": self.part_id,
            "videos": self._videos,
            "failures": self._failures,
            "frames": total,
            "bytes": total * layout.frame_bytes,
            "disk_bytes": _disk_bytes(self.staging),
            "files": _files(self.staging),
            "shards": len(self._shard_digests),
            "tokens_sha256": hashlib.sha256(b"".join(self._shard_digests)).hexdigest(),
            "writer": {"host": self.host, "pid": self.pid, "time": now_iso(), "token": self.token,
                       "vivitcache": __version__},
        }
        write_json_atomic(self.staging / META, group_meta({COMMIT_KEY: commit}))  # the commit record, last
        committed = self._rename_into_parts()
        return {"part_id": self.part_id, "committed": committed, "already_committed": not committed,
                "frames": total, "bytes": commit["bytes"], "videos": len(self._videos),
                "failures": len(self._failures)}

    def _rename_into_parts(self) -> bool:
        """Publish the staging folder as parts/<part_id>; False if another writer already did."""
        target = self.store.path / PARTS / self.part_id
        for _ in range(3):
            try:
                os.rename(self.staging, target)
                return True
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOENT):
                    raise StoreError(f"cannot publish part {self.part_id} to {target}: {e}") from None
            try:
                owner = read_group_attrs(target, COMMIT_KEY)
            except StoreError:
                if not self.staging.exists():
                    raise StoreError(f"part {self.part_id}: staging folder vanished before publishing") from None
                # A folder without a valid commit record is damage, not a commit: move it aside and retry.
                aside = self.store.path / STAGING / staging_name(self.part_id, self.host, 0, new_token())
                try:
                    os.rename(target, aside)
                except OSError:
                    pass  # someone else moved or replaced it; retry anyway
                continue
            if owner.get("writer", {}).get("token") == self.token:
                return True  # our rename went through (a retried NFS rename can report ENOENT after success)
            shutil.rmtree(self.staging, ignore_errors=True)
            return False
        raise StoreError(f"cannot publish part {self.part_id}: {target} keeps reappearing without a commit record")

    # ---- internals --------------------------------------------------------------------------------------------
    def _array(self):
        if self._tokens is None:
            k, d, layout = self.layout.tokens_per_frame, self.layout.dim, self.layout
            self.staging.mkdir(parents=True)
            owner = {"part_id": self.part_id, "host": self.host, "pid": self.pid, "token": self.token,
                     "started": now_iso()}
            write_json_atomic(self.staging / META, group_meta({STAGING_KEY: owner}))
            compressors = [ZstdCodec(level=1), Crc32cCodec()] if layout.compression == "zstd" else [Crc32cCodec()]
            self._tokens = zarr.create_array(
                store=str(self.staging / TOKENS), shape=(0, k, d), dtype=layout.numpy_dtype,
                chunks=(layout.chunk_frames, k, d), shards=(layout.shard_frames, k, d), compressors=compressors,
                fill_value=0, dimension_names=("frame", "token", "dim"),
                # All-zero tokens are data (a bring-your-own-features writer may have them): zarr must write the
                # shard, or it would read back only because the fill value happens to match, and verify would fail.
                config={"write_empty_chunks": True},
            )
        return self._tokens

    def _write_shard(self, n: int) -> None:
        """Write the first `n` pending frames as one whole shard (or the last, partial one) in a single call."""
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]  # [P, K, D]
        shard, rest = block[:n], block[n:]
        start, end = self._flushed, self._flushed + n
        tokens = self._array()
        tokens.resize((end, self.layout.tokens_per_frame, self.layout.dim))
        tokens[start:end] = shard
        self._shard_digests.append(hashlib.sha256(np.ascontiguousarray(shard).tobytes()).digest())
        self._flushed = end
        self._pending = [rest] if len(rest) else []
        self._pending_n = len(rest)

    def _check_staging_intact(self) -> None:
        # If cleanup_stale_staging removed this folder under a slow writer, zarr would silently recreate parts of
        # it; publishing that would commit missing shards. The owner record only exists if the folder survived.
        try:
            owner = read_group_attrs(self.staging, STAGING_KEY)
        except StoreError:
            owner = {}
        tokens = self._array()
        shards_ok = all(
            (self.staging / TOKENS / tokens.metadata.encode_chunk_key((i, 0, 0))).is_file()
            for i in range(len(self._shard_digests))
        )
        if owner.get("token") != self.token or not shards_ok:
            raise StoreError(f"part {self.part_id}: staging folder {self.staging} was removed while writing "
                             "(cleanup_stale_staging with too small max_age_s?)")

    def _label_index(self, video_id: str, label) -> int:
        classes = self.store.classes
        if label is None:
            return -1
        if isinstance(label, str):
            if label not in classes:
                raise StoreError(
                    f"video {video_id!r}: label {label!r} is not one of the store's {len(classes)} classes"
                )
            return classes.index(label)
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise StoreError(f"video {video_id!r}: label must be a class index or name, got {label!r}")
        if not -1 <= int(label) < len(classes):
            raise StoreError(f"video {video_id!r}: label {int(label)} outside [-1, {len(classes)})")
        return int(label)

    def _claim_id(self, video_id) -> None:
        _check_video_id(video_id)
        if video_id in self._ids:
            raise StoreError(f"part {self.part_id}: video id {video_id!r} written twice")
        self._ids.add(video_id)

    def _require_video(self, what: str) -> dict:
        self._check_open()
        if self._current is None:
            raise StoreError(f"{what}() without begin_video()")
        return self._current

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"part {self.part_id} is already committed or discarded")
