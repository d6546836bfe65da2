"""The formats users pick instead of a token store for cached features, as batch readers for the benchmarks.

- `NpyBatches`: one `.npy` file per video ([F, Din], video_features' layout), read through `np.load(mmap_mode='r')`
  maps opened on a video's first clip of a pass and kept for the pass (`reset` closes them all; a fresh map per clip
  would cost an open, a header parse and an mmap each);
- `Hdf5Batches`: one HDF5 file with one contiguous dataset [F, Din] per video (h5py's default layout), read with
  h5py's fancy indexing (`dataset[frames]`, frames increasing and unique, as h5py requires).

Both speak the batch-reader protocol (`batches.BatchReader`), so `TokenClipDataset` reads them with the project's
clip rule: the same clips, the same batches, only the storage differs. `bench_loader.py` reads both through fit's
own DataLoader; `profile_cold_read.py` reads the `.npy` peer for its reference rate. Their files are written by
`export` from the store's features part by part (`batches.read_part`: the same tokens, the same dtype as
`MemoryBatches`, one part in memory at a time). Only the HDF5 peer needs h5py (imported when used, `H5PY_HINT`
when missing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vivitcache.store import TokenStore
from vivitcache.train_temporal.batches import VideoTable, check_indices, read_part
from vivitcache.train_temporal.features import FeatureRule

H5PY_HINT = "the HDF5 peer needs h5py: .venv/bin/pip install -e '.[bench]' (or pip install h5py)"


def h5py_module():
    """h5py, imported only by the HDF5 peer (the .npy peer runs without it); ImportError with `H5PY_HINT`."""
    try:
        import h5py
    except ImportError as e:
        raise ImportError(H5PY_HINT) from e
    return h5py


def export(store: TokenStore, folder: Path, frame_token: str = "cls", hdf5: bool = True) -> dict[str, Path]:
    """Write every video's features (`frame_token`'s rule) as one .npy per video (`folder/npy/<id>.npy`) and, with
    `hdf5`, one HDF5 file (`folder/features.h5`), a part at a time; each is reused when already there (written under
    a temporary name, renamed when complete). Returns the paths ("npy", and "hdf5" with `hdf5`)."""
    paths = {"npy": folder / "npy"} | ({"hdf5": folder / "features.h5"} if hdf5 else {})
    todo = {k: p for k, p in paths.items() if not p.exists()}
    if todo:
        tmp = {k: p.with_name(p.name + ".tmp") for k, p in todo.items()}
        if "npy" in tmp:
            tmp["npy"].mkdir(parents=True, exist_ok=True)
        h5 = h5py_module().File(tmp["hdf5"], "w") if "hdf5" in tmp else None
        rule, videos = FeatureRule(store, frame_token), {}
        for vid in store.ids():
            part, start, n = store.location(vid)
            videos.setdefault(part, []).append((vid, start, n))
        try:
            for part, where in sorted(videos.items()):
                feats = read_part(store, rule, part)  # [F_part, Din]
                for vid, start, n in where:
                    video = feats[start : start + n]  # [n, Din]
                    if "npy" in tmp:
                        np.save(tmp["npy"] / f"{vid}.npy", video)
                    if h5 is not None:
                        h5.create_dataset(vid, data=video)
        finally:
            if h5 is not None:
                h5.close()
        for k, p in todo.items():
            tmp[k].rename(p)
    return paths


def peer_table(video_ids: list[str], frames: dict[str, int]) -> VideoTable:
    """A table of videos each in its own file: part 0, offset 0."""
    n = len(video_ids)
    return VideoTable(tuple(video_ids), np.zeros(n, np.int64), np.zeros(n, np.int64),
                      np.array([frames[v] for v in video_ids], dtype=np.int64))


class _PeerBatches:
    """What both peers share: the protocol's in-memory flags, the table, and nothing to warm or read whole."""

    streamed = False  # no chunk cache to warm, no whole parts: every read mode is `gather`

    def __init__(self, frames: dict[str, int], dim: int, dtype):
        self.frames, self.dim, self.dtype = frames, dim, dtype

    def table(self, video_ids: list[str]) -> VideoTable:
        return peer_table(video_ids, self.frames)

    def warm(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> int:
        return 0

    def part(self, number: int) -> np.ndarray:
        raise NotImplementedError("peer readers read clips, not parts")

    def prefetch(self, number: int) -> None:
        """Nothing: no parts."""

    def files(self) -> list[Path]:
        raise NotImplementedError


class NpyBatches(_PeerBatches):
    """One `.npy` per video, through memory maps (see the module docstring)."""

    def __init__(self, folder: Path, frames: dict[str, int], dim: int, dtype):
        super().__init__(frames, dim, dtype)
        self.folder = folder
        self._maps: dict[int, np.ndarray] = {}

    def files(self) -> list[Path]:
        return [self.folder / f"{v}.npy" for v in self.frames]

    def reset(self) -> None:
        """Close every map (a mapped page is not dropped from the page cache while its map lives)."""
        self._maps.clear()

    def gather(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
        check_indices(table, rows, indices)
        out = np.empty(indices.shape + (self.dim,), dtype=self.dtype)  # [B, n, Din]
        for b, (row, idx) in enumerate(zip(rows.tolist(), indices)):
            m = self._maps.get(row)
            if m is None:
                m = self._maps[row] = np.load(self.folder / f"{table.ids[row]}.npy", mmap_mode="r")  # [F, Din]
            out[b] = m[idx]
        return out


class Hdf5Batches(_PeerBatches):
    """One HDF5 file, a dataset per video (see the module docstring)."""

    def __init__(self, path: Path, frames: dict[str, int], dim: int, dtype):
        super().__init__(frames, dim, dtype)
        self.path = path
        self._file = None
        self._sets: dict[int, object] = {}

    def files(self) -> list[Path]:
        return [self.path]

    def reset(self) -> None:
        """Close the file (h5py keeps no data of a contiguous dataset once closed)."""
        self._sets.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def gather(self, table: VideoTable, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
        check_indices(table, rows, indices)
        self._file = self._file or h5py_module().File(self.path, "r")
        out = np.empty(indices.shape + (self.dim,), dtype=self.dtype)  # [B, n, Din]
        for b, (row, idx) in enumerate(zip(rows.tolist(), indices)):
            ds = self._sets.get(row)
            if ds is None:
                ds = self._sets[row] = self._file[table.ids[row]]
            frames, inverse = np.unique(idx, return_inverse=True)  # h5py: increasing, no repeats
            out[b] = ds[frames][inverse.reshape(-1)]
        return out
