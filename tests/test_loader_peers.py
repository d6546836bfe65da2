"""Issue 24 (items 3-4): the read paths made faster give the per-clip reference's clips, and the benchmark's peer
readers (.npy per video, one HDF5 file) give the same clips as ours, so `bench_loader.py` compares like with like.

- clips drawn ahead a window at a time along the sampler's order (`ClipWindow`) equal the clips drawn alone, for
  every augmentation, in and out of the order, across epochs;
- the in-memory gather still refuses a frame index outside its video;
- the .npy and HDF5 peers, warm and after their maps are closed, give the batches `MemoryBatches` gives;
- sequential epochs, whose parts are now read straight from the shard files, give the per-clip reference's clips
  and refuse a damaged part met on a read-ahead thread.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_readers import StreamedFeatures
from test_loader import AUGMENTS, entries, make_store

from vivitcache.store import StoreDamageError, StoreError
from vivitcache.train_temporal.batches import MemoryBatches, StoreBatches
from vivitcache.train_temporal.dataset import TokenClipDataset
from vivitcache.training.sampler import ResumableSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peer_readers  # noqa: E402 — the benchmark's peer readers

T = 12


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("peers") / "tokens.zarr")


def reference_batch(store, epoch: int, rows: list[int], augment=None) -> torch.Tensor:
    """The per-clip reference's clips of samples `rows` (float32 [B, T, D])."""
    ref = TokenClipDataset(entries(store), StreamedFeatures(store, "cls"), T, train=True, seed=7, augment=augment)
    ref.set_epoch(epoch)
    return torch.stack([ref[i][0] for i in rows])


def followed(store, reader, epoch: int, batch: int, augment=None, window: int | None = None
             ) -> tuple[TokenClipDataset, list[int]]:
    """A dataset at `epoch` that was handed its sampler's order, as `fit` does (windows of `window` samples); and
    that order."""
    ds = TokenClipDataset(entries(store), reader, T, train=True, seed=7, batch=batch, augment=augment)
    if window is not None:
        ds.WINDOW_FRAMES = window * T
    sampler = ResumableSampler(len(ds), 7, shuffle=True)
    sampler.set_epoch(epoch)
    ds.set_epoch(epoch)
    order = list(sampler)
    ds.follow(order)
    return ds, order


@pytest.mark.parametrize("augment", AUGMENTS)
def test_clips_drawn_ahead_equal_the_per_clip_reference(store, augment):
    memory = MemoryBatches(store, "cls")
    for reader in (memory, StoreBatches(store, "cls")):
        for epoch in (0, 2):
            ds, order = followed(store, reader, epoch, batch=4, augment=augment, window=4)  # batches of 3 straddle
            expected = reference_batch(store, epoch, order, augment)  # [N, T, D]
            for i in range(0, len(order), 3):  # along the order
                x, _ = ds.__getitems__(order[i : i + 3])
                assert torch.equal(x.float(), expected[i : i + 3]), (epoch, i)
            assert ds._window.rows.size and ds._window.size == 4
            scattered = [order[0], order[-1], order[7]]  # not within one window: drawn alone
            x, _ = ds.__getitems__(scattered)
            assert torch.equal(x.float(), expected[[0, len(order) - 1, 7]])
            ds.stop_read_ahead()
    # a new epoch without a new order: its own clips, never the last epoch's window
    ds, order = followed(store, memory, 0, batch=4, augment=augment)
    ds.__getitems__(order[:4])
    ds.set_epoch(5)
    assert torch.equal(ds.__getitems__(order[:4])[0].float(), reference_batch(store, 5, order[:4], augment))


def test_the_in_memory_gather_refuses_a_frame_outside_its_video(store):
    memory = MemoryBatches(store, "cls")
    table = memory.table(memory.store.ids()[:3])
    n = table.frames
    for bad in (-1, int(n[1])):
        indices = np.zeros((3, 2), dtype=np.int64)
        indices[1, 1] = bad
        with pytest.raises(StoreError, match=rf"video '{table.ids[1]}': frame index out of range \[0, {n[1]}\)"):
            memory.gather(table, np.arange(3), indices)
    assert memory.gather(table, np.arange(3), np.zeros((3, 0), dtype=np.int64)).shape == (3, 0, memory.rule.dim)


def test_the_benchmark_peers_read_the_same_clips_as_ours(store, tmp_path):
    pytest.importorskip("h5py", reason=peer_readers.H5PY_HINT)
    memory = MemoryBatches(store, "cls")
    files = peer_readers.export(memory.store, tmp_path / "peers")
    videos = entries(store)
    frames = {v.id: v.num_frames for v in videos}
    peers = [peer_readers.NpyBatches(files["npy"], frames, memory.rule.dim, memory.rule.dtype),
             peer_readers.Hdf5Batches(files["hdf5"], frames, memory.rule.dim, memory.rule.dtype)]
    for augment in AUGMENTS:
        ours, order = followed(store, memory, 1, batch=8, augment=augment)
        expected = [ours.__getitems__(order[i : i + 8]) for i in range(0, len(order), 8)]
        for peer in peers:
            for _ in range(2):  # with its maps open, then with fresh ones (the cold case)
                theirs, again = followed(store, peer, 1, batch=8, augment=augment)
                assert again == order
                for i, (x, y) in zip(range(0, len(order), 8), expected):
                    got = theirs.__getitems__(order[i : i + 8])
                    assert got[0].dtype == x.dtype and torch.equal(got[0], x) and torch.equal(got[1], y)
                peer.reset()
    assert sorted(f.name for f in files["npy"].iterdir()) == sorted(f"{v.id}.npy" for v in videos)


def sequential(store, epoch: int) -> tuple[TokenClipDataset, list[int]]:
    ds = TokenClipDataset(entries(store), StoreBatches(store, "cls"), T, train=True, seed=7, read="sequential",
                          batch=4, streams=2, shuffle_buffer=8, world=1)
    ds.set_epoch(epoch)
    return ds, ds.epoch_order(epoch, 0, 1)


def test_sequential_parts_read_straight_from_the_shards_equal_the_per_clip_reference(store):
    ds, order = sequential(store, 1)
    got = torch.cat([ds.__getitems__(order[i : i + 4])[0] for i in range(0, len(order), 4)])
    assert torch.equal(got.float(), reference_batch(store, 1, order))
    reader = ds.features.store
    assert all(reader.shard_chunks(p) is not None for p in reader.part_ids())  # every part read straight
    assert not any(fast for _, _, fast in reader._arrays)  # and none through zarrs
    assert ds._sequential.parts_read >= len(reader.part_ids())


@pytest.mark.parametrize("kind", ["flipped", "deleted"])
def test_sequential_reads_refuse_a_damaged_part_read_ahead(store, tmp_path, kind):
    """The last part of the epoch's order is damaged: its read, on a read-ahead thread, fails, and the batch that
    needs it raises `StoreDamageError` naming the part and the file; the batches before it are served."""
    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy)
    ds, order = sequential(copy, 1)
    last = ds.table.part[order[-1]]
    part = ds.features.store.part_ids()[last]
    shard = sorted(f for f in (copy / "parts" / part / "tokens" / "c").rglob("*") if f.is_file())[0]
    if kind == "deleted":
        shard.unlink()
    else:
        data = bytearray(shard.read_bytes())
        data[10] ^= 0xFF  # inside the part's first inner chunk
        shard.write_bytes(bytes(data))
    says = "is missing" if kind == "deleted" else "crc32c checksum mismatch in the inner chunk"
    with pytest.raises(StoreDamageError, match=f"part {part}: .*{shard.name}.*{says}"):
        for i in range(0, len(order), 4):
            ds.__getitems__(order[i : i + 4])
    assert i > 0  # it failed at the batch that needed the part, not before
