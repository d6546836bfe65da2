"""Random batches read straight from the shard files (`store/chunks.py` `ShardChunks`, issue 24): the same values as
the per-clip reference through zarr, every damage refused with the part and the file named, and stores whose tokens
array is not in our writer's layout still read through zarr."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import torch
import test_loader
import zarr
from clip_readers import StreamedFeatures
from test_loader import D, entries, make_store
from zarr.codecs import BytesCodec

from vivitcache.store import StoreDamageError, StoreLayout, TokenStore
from vivitcache.store.chunks import EMPTY, ShardChunks
from vivitcache.train_temporal.batches import StoreBatches
from vivitcache.train_temporal.dataset import TokenClipDataset
from vivitcache.train_temporal.features import FeatureRule

CF, SF = 4, 16  # test_loader's stores: chunks of 4 frames, shards of 16


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """40 videos of 6-49 frames (shorter than every T here) in 8 parts, most ending in a partly filled shard."""
    path = make_store(tmp_path_factory.mktemp("cold") / "tokens.zarr")
    s = TokenStore.open(path)
    assert len(s.part_ids()) > 1 and any(s.tokens_array(p).shape[0] % SF for p in s.part_ids())
    return path


def direct_only(monkeypatch) -> None:
    """Fail if a read falls back to zarr's pipeline: the tests below must exercise the direct reads."""
    def refuse(self, keys, slots):
        raise AssertionError("read through zarr")

    monkeypatch.setattr(StoreBatches, "_read_zarr", refuse)


def same_as_reference(path: Path, frame_token: str, reader: StoreBatches, T: int, seed: int, epoch: int,
                      batches: list[list[int]]) -> None:
    """Every batch read by `reader` equals the per-clip reference (zarr's pipeline, float32) bit for bit."""
    videos = entries(path)
    ref = TokenClipDataset(videos, StreamedFeatures(path, frame_token), T, train=True, seed=seed)
    ds = TokenClipDataset(videos, reader, T, train=True, seed=seed)
    ref.set_epoch(epoch)
    ds.set_epoch(epoch)
    for rows in batches:
        x, _ = ds.__getitems__(rows)  # [B, T, Din]
        expected = torch.stack([ref[i][0] for i in rows])  # [B, T, Din] float32
        assert torch.equal(x.float(), expected), (T, seed, epoch, rows)


@pytest.mark.parametrize("T", [32, 128])
def test_cold_random_batches_equal_the_per_clip_reference(store, monkeypatch, T):
    direct_only(monkeypatch)
    for seed, epoch in [(0, 0), (3, 1), (11, 4)]:
        order = np.random.default_rng(seed).permutation(40).tolist()
        batches = [order[:1], order[1:8], order[8:40]]  # batch sizes 1, 7, 32
        roomy, tiny = StoreBatches(store, "cls"), StoreBatches(store, "cls", cache_bytes=3 * CF * D * 2)
        for reader in (roomy, tiny):  # tiny: three chunk slots, a batch is read in many rounds
            assert reader.rule.passthrough  # fp16 `cls` tokens: read straight into the slab
            same_as_reference(store, "cls", reader, T, seed, epoch, batches)
        assert roomy.misses > 0 and tiny.slots == 3


@pytest.mark.parametrize("dtype,tokens,k,frame_token,compression,passthrough", [
    ("bf16", "all", 3, "cls+mean", "none", False),  # bf16 bits decoded, a mean computed: through a scratch array
    ("fp16", "cls+mean", 2, "cls+mean", "none", True),  # two stored tokens side by side: still the stored bytes
    ("fp16", "cls+mean", 2, "cls", "none", False),  # one of the two tokens
    ("fp16", "cls", 1, "cls", "zstd", True),  # compressed chunks
])
def test_every_rule_and_compression_reads_the_reference_values(tmp_path, monkeypatch, dtype, tokens, k,
                                                               frame_token, compression, passthrough):
    direct_only(monkeypatch)
    monkeypatch.setattr(test_loader, "StoreLayout", functools.partial(StoreLayout, compression=compression))
    path = make_store(tmp_path / "s.zarr", videos=12, per_part=4, dtype=dtype, tokens=tokens, k=k)
    reader = StoreBatches(path, frame_token)
    assert reader.rule.passthrough is passthrough
    assert TokenStore.open(path).layout.compression == compression
    same_as_reference(path, frame_token, reader, 32, 1, 0, [[5, 0, 2], list(range(12))])
    small = StoreBatches(path, frame_token)
    small.SCRATCH_BYTES = 3 * CF * TokenStore.open(path).layout.frame_bytes  # 3 chunks a round: several rounds
    same_as_reference(path, frame_token, small, 32, 1, 0, [list(range(12))])


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_reads_cut_short_by_the_os_are_completed(tmp_path, monkeypatch, compression):
    """A `preadv` may return less than asked (a signal, some network filesystems): the rest is read, nothing is
    mistaken for damage."""
    import vivitcache.store.chunks as chunks

    def short_preadv(fd, buffers, offset):  # at most 100 bytes per call, as a short read would
        data = os.pread(fd, min(100, sum(len(b) for b in buffers)), offset)
        at = 0
        for b in buffers:
            n = min(len(b), len(data) - at)
            b[:n] = data[at : at + n]
            at += n
        return len(data)

    direct_only(monkeypatch)
    monkeypatch.setattr(test_loader, "StoreLayout", functools.partial(StoreLayout, compression=compression))
    path = make_store(tmp_path / "s.zarr", videos=6, per_part=3)
    monkeypatch.setattr(chunks.os, "preadv", short_preadv)
    same_as_reference(path, "cls", StoreBatches(path, "cls"), 32, 0, 0, [list(range(6))])


def test_a_chunk_never_written_reads_as_the_fill_value_as_in_zarr(tmp_path, monkeypatch):
    direct_only(monkeypatch)
    path = make_store(tmp_path / "s.zarr", videos=8, per_part=8, frames=(30, 31))
    part = TokenStore.open(path).part_ids()[0]
    shard = path / "parts" / part / "tokens" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    size = SF // CF * 16
    index = np.frombuffer(bytes(data[-size - 4 : -4]), dtype="<u8").reshape(-1, 2).copy()  # [4, 2]
    index[1] = EMPTY  # chunk 1 (frames 4-7 of the first video): never written, as far as the index says
    data[-size - 4 : -4] = index.tobytes()
    data[-4:] = google_crc32c.value(index.tobytes()).to_bytes(4, "little")
    shard.write_bytes(bytes(data))  # same size: the part's file checks pass
    reader = StoreBatches(path, "cls")
    table = reader.table(TokenStore.open(path).ids())
    got = reader.gather(table, np.array([0]), np.arange(12)[None])  # [1, 12, D]
    assert np.array_equal(got[0], TokenStore.open(path).video(table.ids[0])[:12, 0])  # zarr: the fill value
    assert (got[0, 4:8] == 0).all() and (got[0, :4] != 0).any()


# ---------------------------------------------------------------------------------------------------- damage
def first_shard(path: Path) -> tuple[str, Path]:
    part = TokenStore.open(path).part_ids()[0]
    return part, path / "parts" / part / "tokens" / "c" / "0" / "0" / "0"


def damage(shard: Path, kind: str) -> None:
    data = bytearray(shard.read_bytes())
    if kind == "deleted":
        shard.unlink()
        return
    if kind == "truncated":
        shard.write_bytes(bytes(data[: len(data) // 2]))
        return
    data[10 if kind == "flipped chunk" else len(data) - 10] ^= 0xFF  # first inner chunk, or the shard index
    shard.write_bytes(bytes(data))


KINDS = ["deleted", "flipped chunk", "flipped index", "truncated"]


@pytest.mark.parametrize("kind,when", [(k, w) for w in ("before the first read", "after the part was read")
                                       for k in KINDS])
def test_every_damage_is_refused_naming_the_part_and_the_file(store, tmp_path, monkeypatch, kind, when):
    """Before: the part's files are checked on first touch (presence, size), then the shard index and the chunks.
    After: the files were checked and the shard's index is held; every later read still opens the file, reads the
    index again if the file changed since (`tests/test_shard_changes.py`) and checks each chunk's crc32c."""
    direct_only(monkeypatch)
    path = tmp_path / "s.zarr"
    shutil.copytree(store, path)
    part, shard = first_shard(path)
    reader = StoreBatches(path, "cls")
    s = reader.store
    videos = [v for v in s.ids() if s.location(v)[0] == part]  # in offset order: the first one starts chunk 0
    videos.sort(key=lambda v: s.location(v)[1])
    table = reader.table(videos)
    if when.startswith("after"):  # chunk 1 of the shard: the part's files checked, the shard's index held
        reader.gather(table, np.array([0]), np.array([[CF]]))
    damage(shard, kind)
    with pytest.raises(StoreDamageError) as err:
        reader.gather(table, np.array([0]), np.arange(4)[None])  # chunk 0 of the damaged shard
    assert f"part {part}" in str(err.value) and str(shard) in str(err.value), str(err.value)
    assert reader.cached_bytes == CF * D * 2 * (when.startswith("after"))  # nothing learnt from the failed read


# ---------------------------------------------------------------------------------------------------- other layouts
def test_arrays_not_in_our_writers_layout_get_no_direct_reader(tmp_path):
    shape, dtype = (40, 1, D), "float16"
    kinds = {
        "unsharded": dict(chunks=(4, 1, D)),
        "no chunk checksum": dict(chunks=(4, 1, D), shards=(16, 1, D), compressors=None),
        "chunks across tokens": dict(chunks=(4, 1, D // 2), shards=(16, 1, D)),
        "big-endian": dict(chunks=(4, 1, D), shards=(16, 1, D), serializer=BytesCodec(endian="big")),
    }
    for name, kw in kinds.items():
        arr = zarr.create_array(store=str(tmp_path / name), shape=shape, dtype=dtype, **kw)
        assert ShardChunks.of("p", tmp_path / name, arr) is None, name
    ours = zarr.open_array(str(first_shard_folder(tmp_path)), mode="r")
    assert ShardChunks.of("p", tmp_path, ours) is not None


def first_shard_folder(tmp_path: Path) -> Path:
    path = make_store(tmp_path / "ours.zarr", videos=4, per_part=4)
    return path / "parts" / TokenStore.open(path).part_ids()[0] / "tokens"


def test_parts_without_a_direct_reader_still_read_through_zarr(store, monkeypatch):
    """An old or foreign layout (`shard_chunks` None) reads through zarr's pipeline, in the same batch as parts read
    directly, with the same values."""
    reader = StoreBatches(store, "cls")
    parts = reader.store.part_ids()
    direct = reader.store.shard_chunks
    monkeypatch.setattr(reader.store, "shard_chunks", lambda p: None if parts.index(p) % 2 else direct(p))
    zarr_reads, read_zarr = [], StoreBatches._read_zarr

    def counted(self, keys, slots):
        zarr_reads.append(len(keys))
        read_zarr(self, keys, slots)

    monkeypatch.setattr(StoreBatches, "_read_zarr", counted)
    same_as_reference(store, "cls", reader, 32, 2, 0, [list(range(40))])
    assert zarr_reads and sum(zarr_reads) < reader.misses  # both paths served this batch


def test_passthrough_is_decided_on_the_rule_itself(tmp_path):
    fp16 = make_store(tmp_path / "a.zarr", videos=4, per_part=4, tokens="all", k=3)
    s = TokenStore.open(fp16)
    assert FeatureRule(s, "tokens").passthrough  # every token, flattened: the stored bytes
    assert not FeatureRule(s, "cls").passthrough  # one of the three
    assert not FeatureRule(s, "cls+mean").passthrough  # a computed mean, in float32
