"""Every stage-2 read path checks the part it reads, and an error met by a helper thread or a DataLoader worker
reaches the caller as the named error, in one line (issue 19, item 1).

A damaged copy of a tiny store (one shard file deleted, or one byte flipped in it) is read by each path: random
batches of 2 and 4 (with the read-ahead thread), in memory, sequential, with a DataLoader worker, and `eval`. Each
must refuse with `StoreDamageError` naming the part and the file, never train on fill values or old cache slots.
"""

from __future__ import annotations

import shutil
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from test_failure_modes import invoke, tiny_store

from vivitcache.store import StoreDamageError, TokenStore
from vivitcache.train_temporal.batches import StoreBatches, VideoTable
from vivitcache.train_temporal.dataset import ReadAhead
from vivitcache.train_temporal.sequential import SequentialClips, order_epoch

TRAIN = ["train", "--frames", "8", "--epochs", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("read_damage") / "s.zarr")


@pytest.fixture(scope="module")
def trained(clean, tmp_path_factory) -> Path:
    """A stage-2 run trained on the undamaged store (for `eval` on a damaged copy)."""
    out = tmp_path_factory.mktemp("read_damage_run") / "run"
    assert invoke(*TRAIN, "--batch-size", "2", "--store", clean, "--out", out).exit_code == 0
    return out


def first_shard(store: Path) -> tuple[str, Path]:
    """(part id, the first token shard file) of the store's first part."""
    part = sorted(p for p in (store / "parts").iterdir() if p.is_dir())[0]
    return part.name, sorted(f for f in (part / "tokens" / "c").rglob("*") if f.is_file())[0]


def damaged(clean: Path, where: Path, kind: str) -> tuple[Path, str, tuple[str, str]]:
    """A copy of `clean` with its first shard file deleted or one byte of its first inner chunk flipped:
    (store, part id, what the error must say: the file, and what is wrong with it)."""
    store = where / f"{kind}.zarr"
    shutil.copytree(clean, store)
    part, shard = first_shard(store)
    if kind == "deleted":
        shard.unlink()
        return store, part, (str(shard.relative_to(store.parent)), "is missing")
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # inside the first inner chunk: frames 0-7 of video v00, which every path reads
    shard.write_bytes(bytes(data))
    return store, part, (str(shard.relative_to(store.parent)), "unreadable")


def error_line(result) -> str:
    """The one `error:` line of a run that stopped on damage (exit 1, no traceback; progress lines may precede it)."""
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert result.output.rstrip().endswith(errors[0]), result.output  # the last thing printed
    return errors[0]


PATHS = {
    "random, batch 2, read-ahead": ["--batch-size", "2", "--read", "random"],
    "random, batch 4, read-ahead": ["--batch-size", "4", "--read", "random"],
    "in memory": ["--batch-size", "2", "--in-memory"],
    "sequential": ["--batch-size", "2", "--read", "sequential"],
    "a DataLoader worker": ["--batch-size", "2", "--read", "random", "--workers", "1"],
    "eval": None,
}


@pytest.mark.parametrize("kind", ["deleted", "flipped"])
@pytest.mark.parametrize("path", list(PATHS))
def test_every_read_path_refuses_a_damaged_part_in_one_line(tmp_path, clean, trained, path, kind):
    store, part, says = damaged(clean, tmp_path, kind)
    if PATHS[path] is None:
        result = invoke("eval", "--store", store, "--checkpoint", trained, "--split", "all", "--out", tmp_path / "e",
                        "--device", "cpu")
    else:
        result = invoke(*TRAIN, *PATHS[path], "--store", store, "--out", tmp_path / "run")
    line = error_line(result)
    assert f"part {part}" in line and all(s in line for s in says), line
    if "worker" in path:
        assert line.endswith("(in DataLoader worker process 0)")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_failed_chunk_read_is_read_again_not_served_from_the_cache(tmp_path, clean):
    """The diagnosed cause: the cache learnt a chunk before its read succeeded, so a second read of the same batch
    (after the read-ahead thread's failed one) served the slot's old bytes."""
    store, part, _ = damaged(clean, tmp_path, "flipped")
    reader = StoreBatches(store, "cls")
    at = {v: reader.store.location(v) for v in reader.store.ids()}  # id -> (part, offset, frames)
    bad = next(v for v, (p, offset, _) in at.items() if p == part and offset == 0)  # in the flipped chunk
    good = next(v for v, (p, _, _) in at.items() if p != part)
    table = VideoTable.build(reader.store, [bad, good])
    frames = np.tile(np.arange(8), (2, 1))  # [B, 8]
    for _ in range(2):
        with pytest.raises(StoreDamageError, match="unreadable"):
            reader.gather(table, np.array([0, 1]), frames)
    assert reader.cached_bytes == 0  # nothing was learnt from the failed reads
    read = reader.gather(table, np.array([1]), frames[:1])  # [1, 8, D]: a video of an undamaged part still reads
    assert np.array_equal(read[0], TokenStore.open(clean).video(good)[:8, 0])


def test_an_error_in_the_read_ahead_thread_reaches_the_consumer():
    def warm(indices):
        raise StoreDamageError(f"part p: samples {indices} damaged")

    ahead = ReadAhead(list(range(8)), warm, window=4, block=2)
    ahead.thread.join(timeout=10)
    with pytest.raises(StoreDamageError, match=r"samples \[0, 1\] damaged"):
        ahead.consumed_sample(0)
    ahead.stop()


def test_an_error_in_a_sequential_prefetch_reaches_the_consumer():
    """`--read sequential` reads the files of coming parts on background threads (their checksums checked there):
    the error of such a prefetch is the error of the batch that needs the part, even if decoding it would pass."""
    part = np.repeat(np.arange(6), 2)  # [12] two videos in each of 6 parts
    offset = np.tile([0, 4], 6)  # [12]
    epoch_order = order_epoch(part, offset, seed=0, epoch=0, world=1, streams=1, batch=2, buffer=2)
    order = epoch_order.rank_order(0)
    damaged_part = int(part[order[-1]])  # the last part read: its files are prefetched, not read inline

    def prefetch(number):
        if number == damaged_part:
            raise StoreDamageError(f"part {number}: crc32c mismatch")

    clips = SequentialClips(epoch_order, part, lambda n: np.zeros((8, 3), np.float32),
                            lambda rows, feats: np.zeros((len(rows), 2, 3), np.float32), prefetch=prefetch)
    with pytest.raises(StoreDamageError, match=f"part {damaged_part}: crc32c mismatch"):
        for i in range(0, len(order), 2):
            clips.take(np.asarray(order[i : i + 2]))
    first_need = next(k for k, row in enumerate(order) if part[row] == damaged_part) // 2 * 2
    assert isinstance(clips._prefetched[damaged_part], Future) and i == first_need  # the batch that needs it
    clips.close()
