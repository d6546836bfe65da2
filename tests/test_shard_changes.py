"""A shard file that changes after `ShardChunks` read its index (`store/chunks.py`, issue 24): a flip in the index is
refused, a file rewritten or replaced with its chunks elsewhere is read by its new index (never at the old offsets,
where another chunk with a valid crc32c may lie), and an unchanged file's index is still read once."""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from test_loader import make_store

import vivitcache.store.chunks as chunks
from vivitcache.store import StoreDamageError, TokenStore
from vivitcache.store.chunks import EMPTY, ShardChunks
from vivitcache.train_temporal.batches import StoreBatches, read_part
from vivitcache.train_temporal.features import FeatureRule

CF, SF = 4, 16  # test_loader's stores: chunks of 4 frames, shards of 16
INNER = SF // CF  # inner chunks per shard
INDEX = 16 * INNER + 4  # the index at a shard file's end: (offset, nbytes) per chunk, then its crc32c


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """16 videos in parts of 5 (30+ frames each: the first shard of a part is full, its 4 chunks written)."""
    return make_store(tmp_path_factory.mktemp("changes") / "tokens.zarr", videos=16, per_part=5)


@pytest.fixture
def store(built, tmp_path, monkeypatch, request) -> Path:
    """A copy of the store. `settled`: the copy's files are older than `SETTLED_NS` (made short for the test) when
    first read, so their indexes are trusted while their identity holds; otherwise just written (read again each
    time)."""
    path = tmp_path / "s.zarr"
    shutil.copytree(built, path)
    if getattr(request, "param", "fresh") == "settled":
        monkeypatch.setattr(chunks, "SETTLED_NS", 50_000_000)
        time.sleep(0.06)
    return path


def first_shard(path: Path) -> tuple[str, Path]:
    part = TokenStore.open(path).part_ids()[0]
    return part, path / "parts" / part / "tokens" / "c" / "0" / "0" / "0"


def count_loads(monkeypatch) -> list[int]:
    """The shards whose index `ShardChunks` reads, one entry per read."""
    loads, load = [], ShardChunks._load

    def counted(self, fd, shard, st):
        loads.append(shard)
        return load(self, fd, shard, st)

    monkeypatch.setattr(ShardChunks, "_load", counted)
    return loads


def zarr_part(path: Path, part: str) -> np.ndarray:
    """The part's tokens as zarr reads them now: [F, K, D]."""
    return zarr.open_array(str(path / "parts" / part / "tokens"), mode="r")[:]


def write(shard: Path, data: bytes, how: str) -> None:
    """Rewrite `shard` in place (same inode) or replace it with a new file (`vivitcache repair`, a writer)."""
    if how == "in place":
        with open(shard, "r+b") as f:
            f.write(data)
            f.truncate()
        return
    tmp = shard.with_name("new")
    tmp.write_bytes(data)
    os.replace(tmp, shard)


def rewritten(data: bytes, source: list[int | None], order: list[int]) -> bytes:
    """A valid shard file whose chunk `c` holds the bytes of the old chunk `source[c]` (None: never written), the
    chunks laid out in file order `order`, and a fresh index with its crc32c."""
    old = np.frombuffer(data[-INDEX:-4], dtype="<u8").reshape(INNER, 2)  # [inner, 2]
    assert (old[:, 0] != EMPTY).all()
    new, body = np.full((INNER, 2), EMPTY, dtype="<u8"), bytearray()
    for c in order:
        if source[c] is not None:
            at, n = (int(v) for v in old[source[c]])
            new[c] = (len(body), n)
            body += data[at : at + n]
    index = new.tobytes()
    return bytes(body) + index + google_crc32c.value(index).to_bytes(4, "little")


def gather_part_frames(reader: StoreBatches, part: str, frames: np.ndarray) -> np.ndarray:
    """The features of the part's frames `frames` [n] through `reader`, one clip per frame: [n, Din]."""
    s = reader.store
    videos = sorted((v for v in s.ids() if s.location(v)[0] == part), key=lambda v: s.location(v)[1])
    table = reader.table(videos)
    starts = np.array([s.location(v)[1] for v in videos])  # [V] first frame of each video in the part
    rows = np.searchsorted(starts, frames, side="right") - 1  # [n]
    return reader.gather(table, rows, (frames - starts[rows])[:, None])[:, 0]  # [n, Din]


# ---------------------------------------------------------------------------------------------------- flips
@pytest.mark.parametrize("store", ["fresh", "settled"], indirect=True)
@pytest.mark.parametrize("how", ["in place", "replaced"])
@pytest.mark.parametrize("via", ["StoreBatches", "read_part"])
def test_a_flip_in_an_index_already_read_is_refused(store, monkeypatch, how, via):
    part, shard = first_shard(store)
    if via == "StoreBatches":
        reader = StoreBatches(store, "cls")
        gather_part_frames(reader, part, np.array([CF]))  # chunk 1: the shard's index read and held
        again = functools.partial(gather_part_frames, reader, part, np.arange(CF))  # chunk 0 of the same shard
    else:
        s = TokenStore.open(store)
        read_part(s, FeatureRule(s, "cls"), part)  # every index of the part read and held
        again = functools.partial(read_part, s, FeatureRule(s, "cls"), part)
    data = bytearray(shard.read_bytes())
    at = len(data) - INDEX + int(np.random.default_rng(24).integers(INDEX))  # a byte of the index or its crc32c
    data[at] ^= 0x10
    write(shard, bytes(data), how)
    with pytest.raises(StoreDamageError, match="shard index") as err:
        again()
    assert f"part {part}" in str(err.value) and str(shard) in str(err.value), str(err.value)


# ---------------------------------------------------------------------------------------------------- rewrites
def cases(rng: np.random.Generator) -> dict[str, tuple[list, list]]:
    """(source, order) of each rewrite; every chunk's new place or value differs from the old one."""
    shift = np.roll(np.arange(INNER), 1 + int(rng.integers(INNER - 1))).tolist()  # a derangement
    empty = int(rng.integers(INNER))
    return {
        "moved": (list(range(INNER)), shift),  # the same values, every chunk at another offset
        "swapped": (shift, np.argsort(shift).tolist()),  # the data where it was, the index points elsewhere
        "emptied": ([None if c == empty else c for c in range(INNER)], list(range(INNER))),  # one never written
    }


@pytest.mark.parametrize("store", ["fresh", "settled"], indirect=True)
@pytest.mark.parametrize("how", ["in place", "replaced"])
@pytest.mark.parametrize("case", ["moved", "swapped", "emptied"])
def test_a_rewritten_shard_is_read_by_its_new_index(store, monkeypatch, how, case):
    part, shard = first_shard(store)
    s = TokenStore.open(store)
    rule = FeatureRule(s, "cls")
    before = read_part(s, rule, part)  # [F, D]: every index of the part held by `s`
    reader = StoreBatches(store, "cls")
    gather_part_frames(reader, part, np.array([SF - 1]))  # chunk 3 held in the slab, the shard's index held
    source, order = cases(np.random.default_rng(7))[case]
    write(shard, rewritten(shard.read_bytes(), source, order), how)
    now = zarr_part(store, part)  # [F, 1, D] as zarr reads the new file
    after = read_part(s, rule, part)
    assert np.array_equal(after, now[:, 0])
    assert np.array_equal(after[SF:], before[SF:])  # the other shards as they were
    if case != "moved":
        assert not np.array_equal(after[:SF], before[:SF])  # the values changed: the old offsets would not see it
    frames = np.arange(SF - CF)  # chunks 0-2 (chunk 3 is in the slab: not read again)
    assert np.array_equal(gather_part_frames(reader, part, frames), now[frames, 0])


def test_a_changed_run_is_placed_again_from_the_file_it_opened(store, monkeypatch):
    """Runs planned by the old index, read after the file was replaced: each read finds its file changed, reads the
    new index and reads the chunks where it puts them (the fill value for one now never written, even alone)."""
    monkeypatch.setattr(chunks, "SETTLED_NS", 0)  # trust the first index: only the identity can tell
    part, shard = first_shard(store)
    direct = TokenStore.open(store).shard_chunks(part)
    runs, empty = direct.runs(np.arange(INNER), np.arange(INNER))  # planned by the index as read now
    assert len(runs) == 1 and len(empty) == 0
    alone, _ = direct.runs(np.arange(1, 2), np.arange(1, 2))  # chunk 1 alone, never written in the new file
    source, order = [0, None, 2, 3], [3, 2, 1, 0]
    write(shard, rewritten(shard.read_bytes(), source, order), "replaced")
    out = np.full((INNER, *direct.chunk_shape), 7, dtype=direct.dtype)  # [inner, cf, K, D]
    direct.read(runs[0], out)
    assert np.array_equal(out.reshape(SF, 1, -1), zarr_part(store, part)[:SF])
    out[:] = 7
    direct.read(alone[0], out)
    assert (out[1] == direct.fill).all() and (out[[0, 2, 3]] == 7).all()


# ---------------------------------------------------------------------------------------------------- the cache
@pytest.mark.parametrize("store", ["settled"], indirect=True)
def test_an_unchanged_file_has_its_index_read_once(store, monkeypatch):
    loads = count_loads(monkeypatch)
    part, shard = first_shard(store)
    s = TokenStore.open(store)
    direct, rule = s.shard_chunks(part), FeatureRule(s, "cls")
    shards = -(-s.tokens_array(part).shape[0] // SF)
    for _ in range(3):
        assert np.array_equal(read_part(s, rule, part), zarr_part(store, part)[:, 0])
    assert sorted(loads) == list(range(shards))  # each shard's index read once in three reads of the part
    write(shard, shard.read_bytes(), "replaced")  # the same bytes in a new file: another inode, so read again
    read_part(s, rule, part)
    assert sorted(loads) == [0, *range(shards)]
    assert direct is s.shard_chunks(part)


def test_a_file_too_fresh_to_trust_has_its_index_read_every_time(store, monkeypatch):
    """Timestamps are as coarse as the filesystem's clock: a file written just before its index was read could be
    written again with the same identity, so its index is read again on every read until it has settled."""
    loads = count_loads(monkeypatch)
    part, _ = first_shard(store)
    s = TokenStore.open(store)
    rule = FeatureRule(s, "cls")
    shards = -(-s.tokens_array(part).shape[0] // SF)
    for _ in range(2):
        read_part(s, rule, part)
    assert len(loads) > 2 * shards and set(loads) == set(range(shards))


def test_a_read_of_chunks_never_written_alone_gives_the_fill_value(store, monkeypatch):
    """Every chunk a batch needs from a shard never written (zarr leaves out chunks all of the fill value): no run to
    read, only the fill value, as zarr reads it (a planner once made an empty run of them and failed)."""
    part, shard = first_shard(store)
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-INDEX:-4]), dtype="<u8").reshape(INNER, 2).copy()  # [inner, 2]
    index[1] = EMPTY  # the chunk's bytes stay (the file keeps the size its commit record says), unlisted
    data[-INDEX:] = index.tobytes() + google_crc32c.value(index.tobytes()).to_bytes(4, "little")
    write(shard, bytes(data), "in place")
    reader = StoreBatches(store, "cls")
    frames = np.arange(CF, 2 * CF)  # chunk 1 only
    got = gather_part_frames(reader, part, frames)  # [cf, D]
    assert np.array_equal(got, zarr_part(store, part)[frames, 0]) and (got == 0).all()
