"""Stage-2 batch loading: the vectorised clip rule, batch readers equal to the per-clip reference readers,
`--read sequential` (deterministic, shuffles across parts, shards exactly once over ranks × workers, resumes
exactly after kill -9), and the bounds on what the readers keep in memory.

Every frame of the test store carries its identity: feature 0 = video number, feature 1 = frame number (exact in
float16), so a batch says which videos and frames it holds.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from clip_readers import InMemoryFeatures, StreamedFeatures

from vivitcache.config import ModelConfig, OptimConfig, RunConfig
from vivitcache.data.sampling import view_indices
from vivitcache.store import StoreError, StoreLayout, StoreWriter, TokenStore
from vivitcache.store.writer import plan_parts
from vivitcache.store.layout import StoreDamageError
from vivitcache.train_temporal import TrainConfig
from vivitcache.store.reader import codec_pipeline
from vivitcache.train_temporal.batches import MemoryBatches, StoreBatches
from vivitcache.train_temporal import clip_frames
from vivitcache.train_temporal.clip_frames import clip_keys, eval_indices, train_clips
from vivitcache.train_temporal.config import AugmentConfig
from vivitcache.train_temporal.dataset import ReadAhead, TokenClipDataset, VideoEntry, collate_batch, resolve_read
from vivitcache.train_temporal.sequential import order_epoch
from vivitcache.training.checkpoint import load_model_state
from vivitcache.training.loop import to_device
from vivitcache.training.sampler import ResumableSampler

D = 8
CLASSES = ["a", "b"]


def make_store(path, videos=40, per_part=5, frames=(6, 50), dtype="fp16", tokens="cls", k=1, seed=0):
    """`videos` videos in parts of `per_part`; chunks of 4 frames, shards of 16."""
    rng = np.random.default_rng(seed)
    layout = StoreLayout(tokens, k, D, dtype, shard_frames=16, chunk_frames=4)
    writer = StoreWriter.create_or_open(path, {"model": "test", "weights_sha256": "x"}, layout, CLASSES, {})
    lengths = {f"v{i:03d}": int(rng.integers(*frames)) for i in range(videos)}
    for part in plan_parts(list(lengths), per_part):
        with writer.part(part.part_id) as pw:
            for vid in part.ids:
                n = lengths[vid]
                x = rng.normal(0, 1, (n, k, D))  # [n, K, D]
                x[:, :, 0], x[:, :, 1] = int(vid[1:]), np.arange(n)[:, None]  # identity of every frame
                pw.begin_video(vid, int(vid[1:]) % 2, f"{vid}.mp4", 25.0)
                pw.append(x.astype(np.float32), np.arange(n) / 25.0)
                pw.end_video()
    return Path(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("loader") / "tokens.zarr")


def entries(path) -> list[VideoEntry]:
    s = TokenStore.open(path)
    return [VideoEntry(v, s.num_frames(v), s.label(v)) for v in s.ids()]


def ids_of(x: torch.Tensor) -> list[int]:
    """Video numbers of a batch [B, T, D] (feature 0 of every frame)."""
    return x[:, 0, 0].long().tolist()


AUGMENTS = [AugmentConfig(), AugmentConfig(temporal_crop=0.7, frame_rate_jitter=0.4, token_dropout=0.25),
            AugmentConfig(token_dropout=0.3, token_dropout_mode="neighbour")]


# ---------------------------------------------------------------------------------------------------- clip rule
def test_clip_rule_is_per_clip_valid_and_matches_view_indices():
    n = np.array([1, 3, 7, 30, 100, 301])
    rows = np.arange(40, 46)
    for augment in AUGMENTS:
        whole = train_clips(n, 16, clip_keys(5, 2, rows), augment)
        for b in range(len(n)):  # a clip does not depend on the other clips of its batch
            one = train_clips(n[b : b + 1], 16, clip_keys(5, 2, rows[b : b + 1]), augment)
            assert np.array_equal(one.indices[0], whole.indices[b])
        assert whole.indices.min() >= 0 and (whole.indices < n[:, None]).all()
    plain = train_clips(n, 16, clip_keys(5, 2, rows), AugmentConfig()).indices
    assert (np.diff(plain, axis=1) >= 0).all()  # time never runs backwards
    assert set(plain[1].tolist()) == {0, 1, 2}  # a short video repeats its frames, all of them
    assert not np.array_equal(plain, train_clips(n, 16, clip_keys(5, 3, rows), AugmentConfig()).indices)
    assert not np.array_equal(plain, train_clips(n, 16, clip_keys(6, 2, rows), AugmentConfig()).indices)
    # uniform jitter: every frame of a 64-frame video's 8 segments is drawn over many clips
    many = train_clips(np.full(4000, 64), 8, clip_keys(0, 0, np.arange(4000)), AugmentConfig()).indices
    assert set(many.reshape(-1).tolist()) == set(range(64))
    views = eval_indices(n, 16, 3)  # [B, 3, 16]
    for b in range(len(n)):
        assert np.array_equal(views[b], view_indices(int(n[b]), 16, 3))


def _splitmix(x: int) -> int:
    """splitmix64's finaliser on one Python int: the reference the vectorised clip-rule hash must equal."""
    m = 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % m
    return x ^ (x >> 31)


def test_clip_rule_randomness_is_splitmix64_of_seed_epoch_index_and_counter():
    # every run's clips hang on these numbers: a faster implementation must give the same ones
    golden, m = 0x9E3779B97F4A7C15, 2**64
    for seed, epoch in [(0, 0), (3, 7), (2**63 + 5, 1), (-1, -2)]:
        rows = np.array([0, 1, 999, 10**9])
        run = _splitmix((seed % m) ^ _splitmix((epoch % m + golden) % m))
        expected = [_splitmix((run + (int(i) + 1) * golden) % m) for i in rows]
        keys = clip_keys(seed, epoch, rows)
        assert keys.tolist() == expected
        got = clip_frames.draws(keys, (2, 5))[0]  # [4, 5]
        for b, key in enumerate(expected):
            bits = [_splitmix((key + ((2 << 32) + j) * golden) % m) for j in range(1, 6)]
            assert got[b].tolist() == [(x >> 11) * 2.0**-53 for x in bits]


# ---------------------------------------------------------------------------------------------------- batch readers
def test_batch_readers_equal_the_per_clip_reader(store):
    videos = entries(store)
    reference = StreamedFeatures(store, "cls")
    tiny = StoreBatches(store, "cls", cache_bytes=5 * 4 * D * 2)  # five chunks: a batch needs several rounds
    roomy = StoreBatches(store, "cls")
    memory = MemoryBatches(store, "cls")
    batch = [3, 17, 0, 39, 16, 25, 8, 31]
    for train, augment in [(True, a) for a in AUGMENTS] + [(False, None)]:
        for epoch in (0, 3):
            ref = TokenClipDataset(videos, reference, 12, train=train, seed=7, views=2, augment=augment)
            ref.set_epoch(epoch)
            expected = torch.stack([ref[i][0] for i in batch])  # float32 [B, (V,) T, D]
            for reader in (tiny, roomy, memory):
                ds = TokenClipDataset(videos, reader, 12, train=train, seed=7, views=2, augment=augment)
                ds.set_epoch(epoch)
                x, y = ds.__getitems__(batch)
                assert x.dtype == torch.float16  # fp16 CLS tokens stay fp16 to the device
                assert torch.equal(x.float(), expected), (train, augment, epoch, type(reader).__name__)
                assert y.tolist() == [videos[i].label for i in batch]
                assert torch.equal(ds[batch[1]][0], expected[1])  # one sample through a batch reader
    assert tiny.cached_bytes <= tiny.cache_bytes and tiny.slots == 5  # the cache bound holds
    assert roomy.hits > roomy.misses > 0  # chunks are read once and then served from the cache
    assert ids_of(expected[:, 0]) == batch  # eval batch [B, V, T, D]: the right videos


def test_chunk_cache_evicts_the_least_recently_used_and_keeps_its_index_exact(store):
    reader = StoreBatches(store, "cls", cache_bytes=6 * 4 * D * 2)  # six chunk slots
    part0 = TokenStore.open(store).tokens_array(TokenStore.open(store).part_ids()[0])[:][:, 0]  # [F, D]
    chunk = lambda c: part0[4 * c : 4 * c + 4]  # noqa: E731 — chunk c of part 0 (key = c)
    slots, read = reader._fill(np.array([0, 1, 2, 3]))
    assert read == 4 and len(set(slots.tolist())) == 4
    assert reader._fill(np.array([0, 1]))[1] == 0  # hits: 0 and 1 are now the most recent
    slots, read = reader._fill(np.array([4, 5, 6, 7]))  # 2 free slots, then evict 2 and 3 (least recently used)
    assert read == 4 and reader._keys_held.tolist() == [0, 1, 4, 5, 6, 7]
    assert sorted(reader._slot_held.tolist()) == list(range(6))  # every slot once
    for key, slot in zip(reader._keys_held.tolist(), reader._slot_held.tolist()):
        assert np.array_equal(reader._slab[slot], chunk(key))  # each slot holds its key's chunk
    assert reader._fill(np.array([2]))[1] == 1 and 0 not in reader._keys_held.tolist()  # 0 was the oldest now
    assert reader.cached_bytes == reader.cache_bytes


def test_read_ahead_stops_once_the_cache_holds_the_pass():
    calls = []
    quiet = ReadAhead(list(range(1000)), lambda i: calls.append(i) or 0, window=1000, block=10)
    quiet.thread.join(5)
    assert not quiet.thread.is_alive() and len(calls) == ReadAhead.PATIENCE  # nothing to read: it stopped
    calls.clear()
    busy = ReadAhead(list(range(1000)), lambda i: calls.append(i) or 1, window=1000, block=10)
    busy.thread.join(5)
    assert len(calls) == 100  # every block of the order was warmed


def test_batch_readers_keep_float32_rule_of_bf16_all_stores(tmp_path):
    path = make_store(tmp_path / "all.zarr", videos=6, dtype="bf16", tokens="all", k=3)
    videos = entries(path)
    ref = TokenClipDataset(videos, InMemoryFeatures(path, "cls+mean"), 8, train=True, seed=1)
    for reader in (StoreBatches(path, "cls+mean"), MemoryBatches(path, "cls+mean")):
        x, _ = TokenClipDataset(videos, reader, 8, train=True, seed=1).__getitems__([5, 0, 2])
        assert x.dtype == torch.float32 and x.shape == (3, 8, 2 * D)
        assert torch.equal(x, torch.stack([ref[i][0] for i in (5, 0, 2)]))


def _flip(f: Path, at: int) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))


def test_whole_parts_are_read_straight_or_through_zarrs_after_a_checksum_pass_of_their_own(tmp_path, monkeypatch):
    path = make_store(tmp_path / "z.zarr", videos=10)
    assert codec_pipeline() == "zarrs.ZarrsCodecPipeline"  # installed with vivitcache
    parts = [StoreBatches(path, "cls").part(i) for i in (0, 1)]  # our writer's layout: straight from the shards
    fast = TokenStore.open(path)  # `part_tokens`: other layouts, through zarrs
    assert all(np.array_equal(parts[i], fast.part_tokens(fast.part_ids()[i])[:, 0]) for i in (0, 1))
    monkeypatch.setenv("VIVITCACHE_ZARRS", "0")
    plain = TokenStore.open(path)
    assert all(np.array_equal(parts[i], plain.part_tokens(plain.part_ids()[i])[:, 0]) for i in (0, 1))
    pipeline = lambda s, fast: type(s._array(s.part_ids()[0], "tokens", fast)._async_array  # noqa: E731
                                    .codec_pipeline).__name__
    assert (pipeline(fast, True), pipeline(plain, False)) == ("ZarrsCodecPipeline", "BatchedCodecPipeline")
    monkeypatch.delenv("VIVITCACHE_ZARRS")
    store = TokenStore.open(path)
    part = next(p for p in store.part_ids() if store.tokens_array(p).shape[0] % 16)  # last shard partly filled
    shards = sorted(f for f in (path / "parts" / part / "tokens" / "c").rglob("*") if f.is_file())
    _flip(shards[-1], 10)  # inside the first inner chunk of the part's last shard
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        zarrs_alone = zarr.open_array(str(path / "parts" / part / "tokens"), mode="r")
    zarrs_alone[:]  # zarrs 0.2.3 does not check it (a read smaller than the shard): why `check_shard` exists
    number = TokenStore.open(path).part_ids().index(part)
    with pytest.raises(StoreDamageError, match=f"part {part}: .*{shards[-1].name}.*inner chunk.*--repair"):
        StoreBatches(path, "cls").part(number)  # sequential and in-memory reads
    with pytest.raises(StoreDamageError, match=f"part {part}: .*{shards[-1].name}.*inner chunk.*--repair"):
        TokenStore.open(path).part_tokens(part)  # whole parts through zarrs: checked first
    last_video = max((v for v in store.ids() if store.location(v)[0] == part), key=lambda v: store.location(v)[1])
    with pytest.raises(StoreDamageError, match="checksum"):
        TokenStore.open(path).video(last_video)  # slices: zarr's own pipeline checks each chunk
    reader = StoreBatches(path, "cls")
    table = reader.table([last_video])
    with pytest.raises(StoreDamageError, match="checksum"):
        reader.gather(table, np.array([0]), np.arange(int(table.frames[0]))[None])  # random chunk reads
    _flip(shards[-1], 10)  # repaired; now break the shard index instead
    _flip(shards[-1], shards[-1].stat().st_size - 10)
    with pytest.raises(StoreDamageError, match="shard index"):
        StoreBatches(path, "cls").part(number)


def test_features_cross_to_the_device_as_fp16_and_are_cast_there(store):
    ds = TokenClipDataset(entries(store), MemoryBatches(store, "cls"), 8, train=True)
    loader = DataLoader(ds, batch_size=4, sampler=ResumableSampler(len(ds), 0, True), collate_fn=ds.collate_fn)
    x, y = next(iter(loader))
    assert x.dtype == torch.float16 and x.shape == (4, 8, D) and y.shape == (4,)
    on_device = to_device(x, torch.device("cpu"))
    assert on_device.dtype == torch.float32 and torch.equal(on_device, x.float())
    assert collate_batch((x, y)) == (x, y)


# ---------------------------------------------------------------------------------------------------- sequential
def _sequential(store, reader=None, **kw) -> TokenClipDataset:
    args = dict(train=True, seed=3, read="sequential", batch=4, streams=2, shuffle_buffer=8, world=1)
    args.update(kw)
    return TokenClipDataset(entries(store), reader or StoreBatches(store, "cls"), 8, **args)


def _batches(ds: TokenClipDataset, order: list[int], batch: int) -> list[torch.Tensor]:
    return [ds.__getitems__(order[i : i + batch])[0] for i in range(0, len(order) - batch + 1, batch)]


def test_sequential_is_deterministic_mixes_parts_and_streamed_equals_in_memory(store):
    a, b = _sequential(store), _sequential(store)
    assert a.epoch_order(0, 0, 1) == b.epoch_order(0, 0, 1)
    assert a.epoch_order(0, 0, 1) != a.epoch_order(1, 0, 1)  # another epoch, another order
    assert _sequential(store, seed=4).epoch_order(0, 0, 1) != a.epoch_order(0, 0, 1)
    order = a.epoch_order(0, 0, 1)
    first = _batches(a, order, 4)
    assert all(torch.equal(x, y) for x, y in zip(first, _batches(b, order, 4)))
    table = a.table
    assert len({int(table.part[i]) for i in order[:4]}) > 1  # the first batch is not from one part
    assert [i for x in first for i in ids_of(x)] == [int(a.videos[i].id[1:]) for i in order]
    memory = _sequential(store, MemoryBatches(store, "cls"))
    assert memory.epoch_order(0, 0, 1) == order
    assert all(torch.equal(x, y) for x, y in zip(first, _batches(memory, order, 4)))
    # the clips are the per-clip rule's: the same as `--read random` gives for these samples
    rand = TokenClipDataset(entries(store), MemoryBatches(store, "cls"), 8, train=True, seed=3)
    assert torch.equal(rand.__getitems__(order[:4])[0], first[0])


def test_sequential_covers_every_video_once_across_2_ranks_and_2_workers(store):
    n = len(entries(store))
    seen = []
    for rank in range(2):
        ds = _sequential(store, streams=2, world=2)
        order = ds.epoch_order(0, rank, 2)
        assert len(order) == n // 2  # equal shares: DDP ranks stay in lock-step
        # the DataLoader gives batch j to worker j % 2: each worker (its own copy of the dataset) reads its parts
        workers = [pickle.loads(pickle.dumps(ds)) for _ in range(2)]
        parts = [set(), set()]
        for j in range(len(order) // 4):
            rows = order[4 * j : 4 * j + 4]
            info = SimpleNamespace(num_workers=2, id=j % 2)  # what `get_worker_info()` says in a spawned worker
            with mock.patch("vivitcache.train_temporal.dataset.get_worker_info", return_value=info):
                x, _ = workers[j % 2].__getitems__(rows)
            seen += ids_of(x)
            parts[j % 2] |= {int(ds.table.part[r]) for r in rows}
        assert len(parts[0] & parts[1]) <= 1  # at most the part at the cut between the two workers' pieces
        assert sum(w._sequential.parts_read for w in workers) <= len(parts[0]) + len(parts[1])  # each part once
        for w in workers:  # as a DataLoader worker, it reads ahead exactly the parts of its own batches, in order
            w._sequential.close()
        for w, mine in zip(workers, parts):  # the loads it planned are the loads it made
            assert {number for _, number in w._sequential.schedule} == mine
            assert len(w._sequential.schedule) == w._sequential.parts_read
    assert sorted(seen) == list(range(n))  # 40 videos = 2 ranks × 5 batches of 4: every one exactly once
    uneven = order_epoch(np.arange(11) // 3, np.arange(11) % 3, 0, 0, world=2, streams=2, batch=2, buffer=3,
                        drop_last=False)
    assert sorted(uneven.rank_order(0) + uneven.rank_order(1)) == list(range(11))
    # a real DataLoader with 2 spawned workers gives the batches of the order, in order
    ds = _sequential(store, streams=2, world=2)
    sampler = ResumableSampler(len(ds), 3, True, rank=1, world=2, order=ds.epoch_order)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, multiprocessing_context="spawn",
                        collate_fn=ds.collate_fn)
    got = [i for x, _ in loader for i in ids_of(x)]
    assert got == [int(ds.videos[i].id[1:]) for i in ds.epoch_order(0, 1, 2)]


def test_sequential_resumes_mid_epoch_with_the_same_batches(store):
    full = _sequential(store)
    full.set_epoch(2)
    order = full.epoch_order(2, 0, 1)
    expected = _batches(full, order, 4)
    resumed = _sequential(store)  # a fresh process: nothing read yet
    resumed.set_epoch(2)
    sampler = ResumableSampler(len(resumed), 3, True, order=resumed.epoch_order)
    sampler.set_epoch(2, skip=12)  # three batches were seen before the kill
    rest = list(sampler)
    assert rest == order[12:]
    assert all(torch.equal(x, y) for x, y in zip(_batches(resumed, rest, 4), expected[3:]))
    first_load = (int(resumed.order_of(2, 1).piece_of[rest[0]]), int(resumed.table.part[rest[0]]))
    assert resumed._sequential.schedule[0] == first_load  # it reads ahead from where it resumed, not from the start


def test_sequential_epochs_reuse_the_slab_and_read_ahead_without_changing_a_value(store):
    ds = _sequential(store)
    first = _batches(ds, ds.epoch_order(0, 0, 1), 4)
    slab = ds._sequential.slab
    ds.set_epoch(1)
    again = _batches(ds, ds.epoch_order(1, 0, 1), 4)
    assert ds._sequential.slab is slab  # no new memory (and page faults) per epoch
    fresh = _sequential(store)
    fresh.set_epoch(1)
    assert all(torch.equal(x, y) for x, y in zip(again, _batches(fresh, fresh.epoch_order(1, 0, 1), 4)))
    # without prefetch or read-ahead threads (the reading only): the same batches
    plain = _sequential(store)
    plain.features.prefetch = None
    plain.set_epoch(1)
    clips = plain._sequential_clips()
    clips.DECODE_AHEAD = clips.PREFETCH_AHEAD = 0
    assert all(torch.equal(x, y) for x, y in zip(again, _batches(plain, plain.epoch_order(1, 0, 1), 4)))
    assert clips._pool is None and not torch.equal(first[0], again[0])


def test_read_shards_reads_every_shard_file_of_a_part_once(store):
    reader = TokenStore.open(store)
    part = reader.part_ids()[1]
    files = [f for f in (store / "parts" / part / "tokens" / "c").rglob("*") if f.is_file()]
    assert files and reader.read_shards(part) == sum(f.stat().st_size for f in files)
    with pytest.raises(StoreError, match="no committed part"):
        reader.read_shards("p999999")


def test_sequential_memory_stays_within_the_shuffle_buffers(store):
    ds = _sequential(store, streams=1, shuffle_buffer=6)
    order = ds.epoch_order(0, 0, 1)
    most = 0
    for i in range(0, len(order), 4):
        ds.__getitems__(order[i : i + 4])
        most = max(most, ds._sequential.waiting_bytes)
    clip_bytes = 8 * D * 2
    assert 0 < most <= (6 + 5) * clip_bytes  # buffer + one part of 5 videos
    assert ds._sequential.waiting_bytes == 0  # everything handed out


# ---------------------------------------------------------------------------------------------------- whole runs
_SCRIPT = """
import json, sys, time
from vivitcache.train_temporal import TrainConfig, run_train
from vivitcache.train_temporal.dataset import TokenClipDataset
cfg = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
if len(sys.argv) > 2:  # slow each batch down so the parent can kill -9 us mid-run
    get = TokenClipDataset.__getitems__
    TokenClipDataset.__getitems__ = lambda self, i: (time.sleep(float(sys.argv[2])), get(self, i))[1]
run_train(cfg)
"""


def _run(tmp_path, cfg: TrainConfig, *extra) -> subprocess.Popen:
    script, cfg_path = tmp_path / "stage2.py", tmp_path / f"{Path(cfg.run.out).name}.json"
    script.write_text(_SCRIPT)
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    return subprocess.Popen([sys.executable, str(script), str(cfg_path), *extra], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sequential_training_resumes_after_kill_9_bitwise(store, tmp_path):
    def cfg(name, resume=False):
        return TrainConfig(store=str(store), frames=8, init=None, read="sequential", shuffle_buffer=8, read_streams=2,
                           model=ModelConfig(temporal_depth=1, temporal_heads=2), val_fraction=0.0,
                           augment=AugmentConfig(temporal_crop=0.8, token_dropout=0.1),
                           optim=OptimConfig(epochs=2, batch_size=4, lr=3e-3, warmup_epochs=0.5),
                           run=RunConfig(out=str(tmp_path / name), checkpoint_every=3, log_every=1, resume=resume))

    straight = _run(tmp_path, cfg("straight"))
    killed = _run(tmp_path, cfg("killed"), "0.05")
    state_file = tmp_path / "killed/checkpoint/state.json"
    deadline = time.time() + 90
    while time.time() < deadline and killed.poll() is None:
        if state_file.is_file() and json.loads(state_file.read_text())["step"] >= 3:  # a mid-epoch checkpoint
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = json.loads(state_file.read_text())
    assert killed.returncode == -signal.SIGKILL and 0 < state["step_in_epoch"] and state["epoch"] < 2, state
    resumed = _run(tmp_path, cfg("killed", resume=True))
    for proc in (straight, resumed):
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    a, b = load_model_state(tmp_path / "straight"), load_model_state(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda name: [{k: v for k, v in json.loads(x).items() if k not in ("clips_per_s", "frames_per_s", "seconds")}  # noqa: E731
                         for x in (tmp_path / name / "metrics.jsonl").open()]
    assert rows("straight") == rows("killed")


def test_read_auto_keeps_random_reads_only_where_the_cache_holds_the_store():
    mib = 2**20
    assert resolve_read("auto", False, 0, 4, 100 * mib, 512 * mib) == "random"  # epochs 2+ come from the cache
    assert resolve_read("auto", False, 0, 4, 600 * mib, 512 * mib) == "sequential"  # re-read every epoch
    assert resolve_read("auto", False, 4, 4, 100 * mib, 512 * mib) == "sequential"  # workers restart: caches empty
    assert resolve_read("auto", False, 3, 4, 600 * mib, 512 * mib) == "random"  # 3 workers cannot share 4 streams
    assert resolve_read("auto", True, 4, 4, 600 * mib, 512 * mib) == "random"  # in memory: order only
    assert resolve_read("sequential", True, 0, 4, 1, 2) == "sequential"  # as asked
    assert TrainConfig(store="s").read == "auto"


def test_read_options_are_checked():
    with pytest.raises(ValueError, match="--read"):
        TrainConfig(store="s", read="fast")
    with pytest.raises(ValueError, match="--workers 3"):
        TrainConfig(store="s", read="sequential", read_streams=4, run=RunConfig(workers=3))
    with pytest.raises(ValueError, match="--shuffle-buffer"):
        TrainConfig(store="s", shuffle_buffer=0)
