"""The formats users pick instead of a token store for cached features, as batch readers for `bench_loader.py`.

- `NpyBatches`: one `.npy` file per video ([F, Din], video_features' layout), read through `np.load(mmap_mode='r')`
  maps opened on a video's first clip of a pass and kept for the pass (`reset` closes them all; a fresh map per clip
  would cost an open, a header parse and an mmap each);
- `Hdf5Batches`: one HDF5 file with one contiguous dataset [F, Din] per video (h5py's default layout), read with
  h5py's fancy indexing (`dataset[frames]`, frames increasing and unique, as h5py requires).

Both speak the batch-reader protocol (`batches.BatchReader`), so `TokenClipDataset` reads them through fit's own
DataLoader with the project's clip rule: the same clips, the same batches, only the storage differs. Their files
are written from a `MemoryBatches`' features (the same tokens, the same dtype).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vivitcache.train_temporal.batches import MemoryBatches, VideoTable, check_indices

H5PY_HINT = "the HDF5 peer needs h5py: .venv/bin/pip install -e '.[bench]' (or pip install h5py)"


def export(memory: MemoryBatches, folder: Path) -> dict[str, Path]:
    """Write every video of `memory` as one .npy per video (`folder/npy/<id>.npy`) and one HDF5 file
    (`folder/features.h5`); reused when already there. Returns the two paths."""
    import h5py

    npy, h5 = folder / "npy", folder / "features.h5"
    ids = memory.store.ids()
    table = memory.table(ids)
    if not h5.is_file():
        npy.mkdir(parents=True, exist_ok=True)
        feats = memory.features.numpy()  # [F, Din]
        tmp = h5.with_suffix(".tmp")
        with h5py.File(tmp, "w") as f:
            for vid, start, n in zip(ids, memory.base[table.part] + table.offset, table.frames):
                video = feats[start : start + n]  # [n, Din]
                np.save(npy / f"{vid}.npy", video)
                f.create_dataset(vid, data=video)
        tmp.rename(h5)
    return {"npy": npy, "hdf5": h5}


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
        import h5py

        check_indices(table, rows, indices)
        self._file = self._file or h5py.File(self.path, "r")
        out = np.empty(indices.shape + (self.dim,), dtype=self.dtype)  # [B, n, Din]
        for b, (row, idx) in enumerate(zip(rows.tolist(), indices)):
            ds = self._sets.get(row)
            if ds is None:
                ds = self._sets[row] = self._file[table.ids[row]]
            frames, inverse = np.unique(idx, return_inverse=True)  # h5py: increasing, no repeats
            out[b] = ds[frames][inverse.reshape(-1)]
        return out
