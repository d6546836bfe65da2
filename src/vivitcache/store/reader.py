"""Reading a token store: `TokenStore`, a read-only index over the committed parts.

The index (video id → part, offset, frame count, label, source, fps) is built once at open from the commit
records (one file when the consolidated index is fresh). Only committed parts are ever seen: a part being written
lives under `staging/` and appears atomically when its writer commits. Reads go through zarr, which reads each
needed chunk once and checks its crc32c.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

from vivitcache.store.dtypes import decode_tokens
from vivitcache.store.index import read_commits
from vivitcache.store.layout import (
    FRAME_TIMES,
    META,
    PARTS,
    ROOT_KEY,
    SCHEMA,
    TOKENS,
    StoreError,
    StoreLayout,
    read_json,
)

__all__ = ["StoreError", "TokenStore", "read_root"]

VIDEO_FIELDS = ("id", "label", "offset", "num_frames", "source", "fps")


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
    """Read-only view of a store's committed videos. Picklable (zarr arrays are reopened after unpickling)."""

    def __init__(self, path: Path, root: dict, commits: dict[str, dict], problems: list[str]):
        self.path = path
        self.fingerprint: dict = root["fingerprint"]
        self.layout = StoreLayout.from_dict(root["layout"])
        self.classes: list[str] = list(root["classes"])
        self.provenance: dict = root.get("provenance", {})
        self.created: str | None = root.get("created")
        self.problems = problems  # parts left out because their commit record is damaged (strict=False only)
        self._commits = commits
        self._videos: dict[str, dict] = {}
        self.duplicates: list[tuple[str, str, str]] = []  # (id, kept part, ignored part)
        failures: dict[str, dict] = {}
        for part_id in sorted(commits):  # first part (by id) wins a duplicate id: deterministic
            for video in commits[part_id]["videos"]:
                if not isinstance(video, dict) or any(k not in video for k in VIDEO_FIELDS):
                    raise StoreError(f"{path / PARTS / part_id / META}: malformed video entry {video!r}")
                kept = self._videos.get(video["id"])
                if kept is not None:
                    self.duplicates.append((video["id"], kept["part_id"], part_id))
                    continue
                self._videos[video["id"]] = {**video, "part_id": part_id}
            for failure in commits[part_id]["failures"]:
                failures.setdefault(failure["id"], {**failure, "part_id": part_id})
        self._failures = [f for i, f in sorted(failures.items()) if i not in self._videos]
        self._ids = sorted(self._videos)
        self.total_frames = sum(v["num_frames"] for v in self._videos.values())
        self._arrays: dict[tuple[str, str], zarr.Array] = {}

    @classmethod
    def open(cls, path, strict: bool = True) -> TokenStore:
        """Open a store read-only; StoreError if it is missing, not a vivitcache store, or of another schema.

        strict=False leaves out parts with a damaged commit record (listed in `.problems`) instead of raising.
        """
        path = Path(os.path.abspath(path))
        root = read_root(path)
        commits, problems = read_commits(path, strict=strict)
        return cls(path, root, commits, problems)

    def __getstate__(self):
        return {**self.__dict__, "_arrays": {}}

    # ---- the index ----------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Committed video ids, sorted."""
        return list(self._ids)

    def part_ids(self) -> list[str]:
        """Committed part ids, sorted."""
        return sorted(self._commits)

    def commit(self, part_id: str) -> dict:
        """The commit record of one part."""
        if part_id not in self._commits:
            raise StoreError(f"{self.path}: no committed part {part_id!r}")
        return self._commits[part_id]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, video_id) -> bool:
        return video_id in self._videos

    def _video(self, video_id: str) -> dict:
        try:
            return self._videos[video_id]
        except (KeyError, TypeError):
            raise StoreError(f"{self.path}: video id {video_id!r} is not committed in this store") from None

    def label(self, video_id: str) -> int:
        """Class index (into `.classes`), -1 when unlabelled."""
        return int(self._video(video_id)["label"])

    def num_frames(self, video_id: str) -> int:
        return int(self._video(video_id)["num_frames"])

    def fps(self, video_id: str) -> float | None:
        return self._video(video_id)["fps"]

    def source(self, video_id: str) -> str:
        return self._video(video_id)["source"]

    def location(self, video_id: str) -> tuple[str, int, int]:
        """(part_id, offset of its first frame in the part's tokens array, num_frames)."""
        v = self._video(video_id)
        return v["part_id"], int(v["offset"]), int(v["num_frames"])

    def failures(self) -> list[dict]:
        """The failure ledger: [{id, source, error, part_id}] for videos that have no tokens, sorted by id."""
        return [dict(f) for f in self._failures]

    # ---- tokens ---------------------------------------------------------------------------------------------------
    def _array(self, part_id: str, name: str):
        key = (part_id, name)
        arr = self._arrays.get(key)
        if arr is None:
            if part_id not in self._commits:
                raise StoreError(f"{self.path}: no committed part {part_id!r}")
            try:
                arr = zarr.open_array(store=str(self.path / PARTS / part_id / name), mode="r")
            except Exception as e:  # noqa: BLE001 — zarr raises several types for a missing/broken array
                raise StoreError(f"{self.path / PARTS / part_id / name}: cannot open ({e})") from None
            self._arrays[key] = arr
        return arr

    def tokens_array(self, part_id: str):
        """The raw zarr tokens array [F_part, K, D] of one part (stored dtype: float16, or uint16 bf16 bits)."""
        return self._array(part_id, TOKENS)

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
