"""The `.npy` peer that `benchmarks/profile_cold_read.py` shares with `bench_loader.py` (`benchmarks/peer_readers.py`):
written part by part from a `TokenStore` with the features `MemoryBatches` holds, complete or not there at all, and
usable without h5py (only the HDF5 peer asks for it, with `H5PY_HINT`). That its batches equal ours through
`TokenClipDataset` is `tests/test_loader_peers.py`'s."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_loader import entries, make_store

from vivitcache.store import TokenStore
from vivitcache.train_temporal.batches import MemoryBatches

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_readers.py"


def import_without_h5py(monkeypatch):
    """A fresh copy of `peer_readers`, imported while `import h5py` fails."""
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` raises ImportError
    spec = importlib.util.spec_from_file_location("peer_readers_without_h5py", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_npy_peer_is_written_part_by_part_whole_or_not_at_all_without_h5py(tmp_path, monkeypatch):
    path = make_store(tmp_path / "tokens.zarr", videos=12, per_part=4, tokens="all", k=3)  # features: a rule of tokens
    store = TokenStore.open(path)
    assert len(store.part_ids()) == 3
    peers = import_without_h5py(monkeypatch)
    read_part, calls = peers.read_part, []

    def recorded(*args):  # read_part(store, rule, part id); the second call of all fails
        calls.append(args[2])
        if len(calls) == 2:
            raise OSError("interrupted")
        return read_part(*args)

    monkeypatch.setattr(peers, "read_part", recorded)
    with pytest.raises(OSError, match="interrupted"):
        peers.export(store, tmp_path / "peers", hdf5=False)
    assert not (tmp_path / "peers" / "npy").exists()  # an interrupted export leaves nothing that looks complete
    files = peers.export(store, tmp_path / "peers", hdf5=False)
    assert set(files) == {"npy"} and calls[2:] == store.part_ids()  # again, one part at a time, each once

    memory = MemoryBatches(path, "cls")
    videos = entries(path)
    table = memory.table([v.id for v in videos])
    reader = peers.NpyBatches(files["npy"], {v.id: v.num_frames for v in videos}, memory.rule.dim, memory.rule.dtype)
    for row, v in enumerate(videos):
        frames = np.arange(v.num_frames)[None]  # [1, n]: the whole video
        got = reader.gather(reader.table(list(table.ids)), np.array([row]), frames)
        assert got.dtype == memory.rule.dtype and np.array_equal(got, memory.gather(table, np.array([row]), frames))

    with pytest.raises(ImportError, match=re.escape(peers.H5PY_HINT)):  # the HDF5 peer alone needs h5py
        peers.export(store, tmp_path / "peers")
    assert sorted(f.name for f in (tmp_path / "peers").iterdir()) == ["npy"]
