"""Stage 2 on cached tokens: init from stage 1 (+ interpolation), fingerprint checks, clip sampling, readers,
ablation switches, eval views, exact resume after kill -9, and DDP over 2 CPU processes.

Stores are built directly with `StoreWriter` from synthetic tokens whose class is readable only from temporal order
(feature 0 rises, falls, peaks or dips over the video; every class has the same per-frame distribution). Stage-1
runs are written with `save_checkpoint` in the shape `pretrain/run.py` gives them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_readers import ChunkCache, InMemoryFeatures, StreamedFeatures

from vivitcache.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from vivitcache.data.annotations import load_annotations
from vivitcache.data.sampling import view_indices
from vivitcache.models import frame_features
from vivitcache.models.vivit import ViViT
from vivitcache.runs import load_stage1
from vivitcache.store import FingerprintMismatchError, StoreLayout, StoreWriter, TokenStore
from vivitcache.store.writer import plan_parts
from vivitcache.train_temporal import InitError, TrainConfig, build_stage2_model, run_eval, run_train
from vivitcache.train_temporal.clip_frames import clip_keys, train_clips
from vivitcache.train_temporal.config import AugmentConfig
from vivitcache.train_temporal.dataset import TokenClipDataset
from vivitcache.train_temporal.run import labelled_videos, split_source, split_videos
from vivitcache.training.checkpoint import load_config, load_model_state, save_checkpoint
from vivitcache.training.sampler import ResumableSampler

D = 16
CLASSES = ["rise", "fall", "peak", "dip"]
REPO = Path(__file__).resolve().parents[1]


def _signal(label: int, n: int) -> np.ndarray:  # [n], the same values in every class, in another order
    u = np.linspace(-1, 1, n)
    return [u, -u, 1 - 2 * np.abs(u), 2 * np.abs(u) - 1][label]


def make_store(path, sha, model="vit-ti", per_class=6, frames=(10, 40), seed=0, dtype="fp16", tokens="cls", k=1,
               classes=CLASSES, extra_videos=()):
    """A token store of `per_class` videos per class (+ `extra_videos`: (id, label, n)); chunks of 8, shards of 32."""
    rng = np.random.default_rng(seed)
    layout = StoreLayout(tokens, k, D, dtype, shard_frames=32, chunk_frames=8)
    writer = StoreWriter.create_or_open(path, {"model": model, "weights_sha256": sha}, layout, classes, {})
    videos = [(f"{c}_{i:02d}", ci, int(rng.integers(*frames))) for ci, c in enumerate(classes) for i in range(per_class)]
    videos += list(extra_videos)
    spec = {v[0]: v for v in videos}
    for part in plan_parts(list(spec), 7):
        with writer.part(part.part_id) as pw:
            for vid in part.ids:
                _, label, n = spec[vid]
                x = rng.normal(0, 0.1, (n, k, D)) + rng.normal(0, 0.1, (1, k, D))  # [n, K, D]
                x[:, 0, 0] += 2 * _signal(label % 4, n)
                pw.begin_video(vid, label, f"{vid}.mp4", 25.0)
                pw.append(x.astype(np.float32), np.arange(n) / 25.0)
                pw.end_video()
    return Path(path)


def make_stage1(run, classes=CLASSES, frames=8, seed=1):
    """A stage-1 run folder (adapter/temporal/head for width D, a stand-in spatial part) as pretrain writes it."""
    torch.manual_seed(seed)
    # frame token `cls` on a `cls` store: the runs and stores of earlier vivitcache versions, which must keep working
    model_cfg = ModelConfig(spatial="vit-ti", temporal_depth=1, temporal_heads=2, num_frames=frames,
                            num_classes=len(classes), frame_token="cls")
    model = ViViT(model_cfg, None, D)
    with torch.no_grad():  # a trained adapter is not the identity, trained position embeddings are not tiny
        for p in model.adapter.parameters():
            p.normal_(0, 0.2)
        model.temporal.pos_embed.normal_(0, 0.5)
    state = {"spatial.patch_embed.proj.weight": torch.randn(4, 3), **model.state_dict()}
    config = {"stage": 1, "model": dataclasses.asdict(model_cfg), "data": dataclasses.asdict(DataConfig()),
              "classes": list(classes), "preprocess": {}}
    save_checkpoint(Path(run), state, {"config": config})
    return load_stage1(run), model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A stage-1 run and a store extracted (in spirit) with its spatial model."""
    root = tmp_path_factory.mktemp("stage2")
    stage1, stage1_model = make_stage1(root / "stage1")
    store = make_store(root / "tokens.zarr", stage1.spatial_sha256,
                       extra_videos=[("short_rise", 0, 5), ("short_fall", 1, 3)])
    return {"root": root, "stage1": stage1, "stage1_model": stage1_model, "store": store}


def _cfg(world, out, frames=16, epochs=2, **kw) -> TrainConfig:
    optim = kw.pop("optim", OptimConfig(epochs=epochs, batch_size=4, lr=3e-3, warmup_epochs=0.5))
    run = kw.pop("run", RunConfig(out=str(out), eval_views=2, log_every=1))
    return TrainConfig(store=str(world["store"]), frames=frames, init=str(world["root"] / "stage1"),
                       optim=optim, run=run, **kw)


def test_stage2_never_imports_extraction_or_a_decoder():
    code = ("import sys, vivitcache.train_temporal, vivitcache.train_temporal.run; "
            "print([m for m in sys.modules if m.startswith(('vivitcache.extract', 'vivitcache.data.decode', 'av'))])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------- init
def test_init_at_stage1_length_gives_stage1_logits_exactly(world):
    model, made = build_stage2_model(_cfg(world, "unused", frames=8), TokenStore.open(world["store"]))
    feats = torch.randn(3, 8, D, generator=torch.Generator().manual_seed(0))
    model.eval(), world["stage1_model"].eval()
    with torch.no_grad():  # exact: the same weights through the same modules, kernels and shapes
        assert torch.equal(model(feats), world["stage1_model"](feats))
    assert made["init_parts"] == ["adapter", "temporal", "head"] and made["init_frames"] == 8


@pytest.mark.parametrize("frames,tol", [(15, 0.1), (29, 0.15)])
def test_interpolated_model_keeps_knots_and_function(world, frames, tol):
    """T = k·(8−1)+1: every stage-1 position embedding is kept at frame k·j, and on features upsampled linearly
    the logits stay close to stage 1's: max error / max |logit| below `tol` (measured 0.072 at 15, 0.109 at 29;
    logits of other clips differ by far more)."""
    model, _ = build_stage2_model(_cfg(world, "unused", frames=frames), TokenStore.open(world["store"]))
    k = (frames - 1) // 7
    old, new = world["stage1_model"].temporal.pos_embed[0], model.temporal.pos_embed[0]  # [1 + T, D]
    assert torch.equal(new[0], old[0])  # CLS position kept
    assert torch.equal(new[1::k], old[1:])  # knots kept
    torch.manual_seed(0)
    smooth = F.interpolate(torch.randn(8, D, 4), size=8, mode="linear", align_corners=True).transpose(1, 2)  # [8, 8, D]
    up = F.interpolate(smooth.transpose(1, 2), size=frames, mode="linear", align_corners=True).transpose(1, 2)
    model.eval(), world["stage1_model"].eval()
    with torch.no_grad():
        ref = world["stage1_model"](smooth)  # [8, C]
        got = model(up)  # [8, C]
    scale = ref.abs().max()
    assert (got - ref).abs().max() / scale < tol
    assert (got - ref.roll(1, 0)).abs().max() / scale > 2 * tol  # control: the check can tell clips apart


def test_interpolation_to_128_is_linear_in_time(world):
    model, _ = build_stage2_model(_cfg(world, "unused", frames=128), TokenStore.open(world["store"]))
    old = world["stage1_model"].temporal.pos_embed[0, 1:].detach().double().numpy()  # [8, D]
    new = model.temporal.pos_embed[0, 1:].detach().double().numpy()  # [128, D]
    t = np.linspace(0, 7, 128)  # frame j of 128 sits at stage-1 time 7·j/127
    expected = np.stack([np.interp(t, np.arange(8), old[:, d]) for d in range(D)], axis=1)
    assert new.shape == (128, D)
    np.testing.assert_allclose(new, expected, atol=1e-6)
    assert model.cfg.num_frames == 128 and model(torch.zeros(2, 128, D)).shape == (2, len(CLASSES))


def test_init_parts_no_adapter_freeze_temporal(world, tmp_path):
    store, s1 = TokenStore.open(world["store"]), world["stage1_model"]
    only_temporal, _ = build_stage2_model(_cfg(world, "x", frames=8, init_parts=["temporal"]), store)
    for name, value in only_temporal.temporal.state_dict().items():
        assert torch.equal(value, s1.temporal.state_dict()[name]), name
    assert torch.count_nonzero(only_temporal.adapter.body.fc2.weight) == 0  # fresh adapter: the identity
    assert not torch.equal(only_temporal.head[1].weight, s1.head[1].weight)

    no_adapter, _ = build_stage2_model(_cfg(world, "x", frames=8, no_adapter=True), store)
    assert isinstance(no_adapter.adapter, torch.nn.Identity) and no_adapter.cfg.adapter == "none"
    assert torch.equal(no_adapter.head[1].weight, s1.head[1].weight)

    cfg = _cfg(world, tmp_path / "frozen", frames=8, epochs=1, freeze_temporal=True)
    summary = run_train(cfg)
    trained = load_model_state(tmp_path / "frozen")
    initial = {f"temporal.{k}": v for k, v in s1.temporal.state_dict().items()}
    assert all(torch.equal(trained[k], v) for k, v in initial.items())
    assert not torch.equal(trained["head.1.weight"], s1.head[1].weight)
    assert summary["trainable_params"] == sum(p.numel() for m in (s1.adapter, s1.head) for p in m.parameters())


def test_store_of_other_weights_or_model_is_refused(world, tmp_path):
    other = make_store(tmp_path / "other.zarr", "0" * 64, per_class=2)
    with pytest.raises(FingerprintMismatchError, match="weights_sha256: stage-1 run has"):
        run_train(dataclasses.replace(_cfg(world, tmp_path / "r"), store=str(other)))
    renamed = make_store(tmp_path / "vit-s.zarr", world["stage1"].spatial_sha256, model="vit-s", per_class=2)
    with pytest.raises(FingerprintMismatchError, match="model: stage-1 run has"):
        run_train(dataclasses.replace(_cfg(world, tmp_path / "r"), store=str(renamed)))
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_head_of_other_classes_is_refused_unless_left_out(world, tmp_path):
    classes = ["a", "b", "c"]
    store = make_store(tmp_path / "abc.zarr", world["stage1"].spatial_sha256, per_class=2, classes=classes)
    cfg = dataclasses.replace(_cfg(world, tmp_path / "r", frames=8), store=str(store))
    with pytest.raises(InitError, match="head cannot be used"):
        build_stage2_model(cfg, TokenStore.open(store))
    model, made = build_stage2_model(dataclasses.replace(cfg, init_parts=["adapter", "temporal"]), TokenStore.open(store))
    assert model.head[1].out_features == 3 and made["init_parts"] == ["adapter", "temporal"]


# ---------------------------------------------------------------------------------------------------- clips
def test_short_videos_repeat_frames_in_order(world):
    store = TokenStore.open(world["store"])
    features = StreamedFeatures(store.path, "cls")
    short = [v for v in labelled_videos(store) if v.id.startswith("short")]
    train = TokenClipDataset(short, features, 16, train=True, seed=3)
    for i, video in enumerate(short):
        idx, _ = train.indices(i)
        assert idx.shape == (16,) and np.all(np.diff(idx) >= 0) and idx.min() >= 0 and idx.max() < video.num_frames
        assert set(idx.tolist()) == set(range(video.num_frames))  # every frame used, none invented
        x, label = train[i]
        assert x.shape == (16, D) and label == video.label
        assert torch.equal(x, torch.from_numpy(store.clip(video.id, idx)[:, 0]).float())
    evalset = TokenClipDataset(short, features, 16, train=False, views=3)
    x, _ = evalset[0]
    assert x.shape == (3, 16, D)
    expected = view_indices(short[0].num_frames, 16, 3)
    assert torch.equal(x, torch.from_numpy(store.clip(short[0].id, expected.reshape(-1))[:, 0]).float().view(3, 16, D))


def test_training_clips_depend_on_seed_epoch_index_only_and_augment(world):
    store = TokenStore.open(world["store"])
    videos = labelled_videos(store)
    features = StreamedFeatures(store.path, "cls")
    a = TokenClipDataset(videos, features, 8, train=True, seed=0)
    b = TokenClipDataset(videos, StreamedFeatures(store.path, "cls"), 8, train=True, seed=0)
    assert torch.equal(a[5][0], b[5][0])
    b.set_epoch(1)
    assert not torch.equal(a[5][0], b[5][0])
    crop = AugmentConfig(temporal_crop=0.5, frame_rate_jitter=0.5)
    spans = np.ptp(train_clips(np.full(50, 100), 8, clip_keys(0, 0, np.arange(50)), crop).indices, axis=1)  # [50]
    assert max(spans) < 50 and min(spans) < 30  # inside a half window, sometimes much shorter
    for mode in ("zero", "neighbour"):
        aug = TokenClipDataset(videos, features, 8, train=True, seed=0,
                               augment=AugmentConfig(token_dropout=0.25, token_dropout_mode=mode))
        plain, dropped = a[5][0], aug[5][0]
        changed = (plain != dropped).any(-1)  # [T]
        assert int(changed.sum()) == 2  # round(0.25 · 8) frames
        rows = torch.nonzero(changed).flatten()
        if mode == "zero":
            assert torch.count_nonzero(dropped[rows]) == 0
        else:
            neighbour = torch.where(rows == 0, 1, rows - 1)
            assert torch.equal(dropped[rows], plain[neighbour])


def test_in_memory_equals_streamed_and_cache_stays_bounded(world, tmp_path):
    store = TokenStore.open(world["store"])
    videos = labelled_videos(store)
    small = StreamedFeatures(store.path, "cls", cache_bytes=3 * 8 * D * 2)  # three chunks: evicts constantly
    memory = InMemoryFeatures(store.path, "cls")
    for train in (True, False):
        s = TokenClipDataset(videos, small, 12, train=train, views=2)
        m = TokenClipDataset(videos, memory, 12, train=train, views=2)
        for i in range(len(videos)):
            assert torch.equal(s[i][0], m[i][0]), i
    assert small.cache.bytes <= small.cache.max_bytes and len(small.cache) == 3
    assert memory.parts[next(iter(memory.parts))].dtype == torch.float16  # CLS of an fp16 store: kept as stored
    # bf16 store, CLS+mean computed from all tokens: float32, equal to frame_features of the decoded tokens
    bf = make_store(tmp_path / "all.zarr", "x", per_class=2, dtype="bf16", tokens="all", k=5)
    bf_store = TokenStore.open(bf)
    vid = bf_store.ids()[0]
    idx = np.array([0, 3, 3, 1, 9])
    expected = frame_features(torch.from_numpy(bf_store.clip(vid, idx)), "all", "cls+mean")  # [5, 2D]
    for reader in (StreamedFeatures(bf, "cls+mean"), InMemoryFeatures(bf, "cls+mean")):
        got = reader.clip(vid, idx)
        assert got.dtype == np.float32 and np.array_equal(got, expected.numpy())


def test_read_ahead_thread_warms_the_next_clips_only(world):
    store = TokenStore.open(world["store"])
    videos = labelled_videos(store)
    features = StreamedFeatures(store.path, "cls")
    ahead = TokenClipDataset(videos, features, 8, train=True, seed=0, read_ahead=3)
    ahead.set_epoch(1)
    sampler = ResumableSampler(len(ahead), 0, shuffle=True)
    sampler.set_epoch(1)
    order = list(sampler)  # fit's sampler order for this epoch, handed to the dataset as fit does
    ahead.follow(order)

    def chunks(position):
        part, offset, _ = store.location(videos[order[position]].id)
        idx, _ = ahead.indices(order[position])
        return {(part, int(c)) for c in np.unique((offset + idx) // store.layout.chunk_frames)}

    ahead[order[0]]
    wanted = set().union(*(chunks(p) for p in range(4)))
    deadline = time.time() + 10
    while time.time() < deadline and not wanted <= set(features.cache._items):
        time.sleep(0.01)
    assert wanted <= set(features.cache._items)  # clips 1-3 read before they were asked for
    time.sleep(0.1)
    assert set(features.cache._items) == wanted  # and nothing further ahead than the window
    plain = TokenClipDataset(videos, StreamedFeatures(store.path, "cls"), 8, train=True, seed=0)
    plain.set_epoch(1)
    assert all(torch.equal(ahead[i][0], plain[i][0]) for i in order)
    ahead.stop_read_ahead()


def test_in_memory_through_spawned_worker_trains_like_streamed(world, tmp_path):
    """Whole runs: streamed in this process vs --in-memory read by a spawned DataLoader worker: same model, bitwise."""
    run_train(_cfg(world, tmp_path / "streamed", epochs=1, val_fraction=0.0))  # no eval: one worker start only
    memory = _cfg(world, tmp_path / "memory", epochs=1, in_memory=True, val_fraction=0.0,
                  run=RunConfig(out=str(tmp_path / "memory"), eval_views=2, workers=1))
    run_train(memory)
    a, b = load_model_state(tmp_path / "streamed"), load_model_state(tmp_path / "memory")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_chunk_cache_is_lru_in_bytes():
    cache = ChunkCache(max_bytes=3 * 16)
    for i in range(3):
        cache.put(("p", i), np.zeros(4, dtype=np.float32))  # 16 bytes each
    assert cache.get(("p", 0)) is not None  # 0 becomes most recent
    cache.put(("p", 3), np.zeros(4, dtype=np.float32))
    assert cache.get(("p", 1)) is None and cache.get(("p", 0)) is not None and cache.bytes == 48


def test_split_follows_the_annotations_rules(world, tmp_path):
    store = TokenStore.open(world["store"])
    videos = labelled_videos(store)
    # no split column: the hashed split of data.annotations, so stage 2 holds out what stage 1 held out
    csv = tmp_path / "labels.csv"
    csv.write_text("".join(f"{v.id}.mp4,{CLASSES[v.label]}\n" for v in videos))
    for seed in (0, 7):
        annotated = load_annotations(csv, val_fraction=0.2, seed=seed)
        train, val = split_videos(store, None, None, 0.2, seed)
        assert {v.id for v in val} == {r.id for r in annotated.split("val")}
        assert {v.id for v in train} == {r.id for r in annotated.split("train")}
    assert sorted(v.label for v in val) == [0, 1, 2, 3]  # stratified: round(0.2 · 6 or 7) = 1 per class
    # a split column decides; videos the annotations do not list are left out
    listed = videos[:-3]
    csv.write_text("path,label,split\n" + "".join(
        f"{v.id}.mp4,{CLASSES[v.label]},{'val' if i % 3 == 0 else 'train'}\n" for i, v in enumerate(listed)))
    train, val = split_videos(store, str(csv), None, 0.2, 0)
    assert [v.id for v in val] == [v.id for i, v in enumerate(listed) if i % 3 == 0]
    assert len(train) + len(val) == len(listed)
    # by default stage 2 takes the split of the stage-1 run's annotations (and its seed)
    run1 = tmp_path / "stage1_with_data"
    make_stage1(run1)
    config = json.loads((run1 / "checkpoint/config.json").read_text())
    config["config"]["data"]["data"], config["config"]["run"] = str(csv), {"seed": 5}
    (run1 / "checkpoint/config.json").write_text(json.dumps(config))
    cfg = dataclasses.replace(_cfg(world, tmp_path / "r"), init=str(run1))
    assert split_source(cfg) == (str(csv), None, 5)
    assert split_source(dataclasses.replace(cfg, init=None)) == (None, None, 0)  # hashed, run.seed


# ---------------------------------------------------------------------------------------------------- runs
def test_train_writes_run_folder_and_eval_reports_views(world, tmp_path):
    out = tmp_path / "run2"
    summary = run_train(_cfg(world, out, frames=16, epochs=2, augment=AugmentConfig(token_dropout=0.1)))
    for name in ("summary.json", "metrics.jsonl", "curves.png", "checkpoint/model.safetensors"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["frames"] == 16 and {"val_top1", "val_top5", "epochs", "seconds", "peak_memory_bytes"} <= set(on_disk)
    config = load_config(out)["config"]
    assert config["stage"] == 2 and config["model"]["num_frames"] == 16 and config["classes"] == CLASSES
    assert config["store_fingerprint"]["weights_sha256"] == world["stage1"].spatial_sha256
    assert config["spatial_sha256"] == world["stage1"].spatial_sha256 and config["init"].endswith("stage1")
    one, three = (run_eval(world["store"], out, views=v, out=tmp_path / f"eval{v}") for v in (1, 3))
    assert one["val_videos"] == three["val_videos"] == summary["val_videos"] and one["split"] == "val"
    assert three["val_top5"] >= three["val_top1"]
    assert sum(map(sum, three["confusion"])) == three["val_videos"]
    assert (tmp_path / "eval3/eval_confusion.png").stat().st_size > 0
    assert json.loads((tmp_path / "eval3/eval.json").read_text())["views"] == 3
    everything = run_eval(world["store"], out, views=1, split="all")
    assert everything["val_videos"] == len(labelled_videos(TokenStore.open(world["store"])))
    assert (out / "eval.json").is_file() and (out / "eval_confusion.png").is_file()  # default: next to the checkpoint


def test_learns_temporal_order_from_random_init(tmp_path):
    store = make_store(tmp_path / "big.zarr", "any", per_class=20)
    optim = OptimConfig(epochs=15, batch_size=8, lr=1e-2, warmup_epochs=1, label_smoothing=0.0)
    cfg = TrainConfig(store=str(store), frames=16, init=None, optim=optim, val_fraction=0.25,
                      model=ModelConfig(temporal_depth=1, temporal_heads=2),
                      run=RunConfig(out=str(tmp_path / "scratch"), log_every=100))
    summary = run_train(cfg)
    assert summary["val_videos"] == 20 and summary["val_top1"] >= 0.9  # chance: 0.25; every frame set is alike


_SCRIPT = """
import json, sys, time
from vivitcache.train_temporal import TrainConfig, run_train
from vivitcache.train_temporal.dataset import TokenClipDataset
cfg = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
if len(sys.argv) > 2:  # slow each clip down so the parent can kill -9 us mid-run (batches come via __getitems__)
    get = TokenClipDataset.__getitems__
    TokenClipDataset.__getitems__ = lambda self, i: (time.sleep(float(sys.argv[2]) * len(i)), get(self, i))[1]
run_train(cfg)
"""


def _script(tmp_path, cfg: TrainConfig) -> tuple[Path, Path]:
    script, cfg_path = tmp_path / "stage2.py", tmp_path / f"{Path(cfg.run.out).name}.json"
    script.write_text(_SCRIPT)
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    return script, cfg_path


def test_resume_after_kill_9_is_bitwise_identical(world, tmp_path):
    def cfg(name, resume=False):
        return _cfg(world, tmp_path / name, frames=16, epochs=2,
                    run=RunConfig(out=str(tmp_path / name), checkpoint_every=2, log_every=1, resume=resume),
                    augment=AugmentConfig(temporal_crop=0.8, frame_rate_jitter=0.3, token_dropout=0.1))

    # every run in a fresh process: other tests change process-wide torch settings (e.g. thread count), which
    # changes float reduction order and so would break bitwise equality for reasons unrelated to resuming
    script, straight_path = _script(tmp_path, cfg("straight"))
    subprocess.run([sys.executable, str(script), str(straight_path)], cwd=tmp_path, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    script, cfg_path = _script(tmp_path, cfg("killed"))
    proc = subprocess.Popen([sys.executable, str(script), str(cfg_path), "0.05"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = tmp_path / "killed/checkpoint/state.json"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if state_file.is_file() and json.loads(state_file.read_text())["step"] >= 4:  # 2nd mid-epoch checkpoint
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(state_file.read_text())
    assert proc.returncode == -signal.SIGKILL and state["step_in_epoch"] > 0 and state["epoch"] < 2, state
    script, resume_path = _script(tmp_path, cfg("killed", resume=True))
    subprocess.run([sys.executable, str(script), str(resume_path)], cwd=tmp_path, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    a, b = load_model_state(tmp_path / "straight"), load_model_state(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").open()]  # noqa: E731
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("clips_per_s", "frames_per_s", "seconds")} for r in rs]  # noqa: E731
    assert strip(rows("straight")) == strip(rows("killed"))


def test_ddp_two_cpu_processes_match_one(world, tmp_path):
    """torchrun --nproc-per-node 2 (gloo) on batch 8 = 2 processes × 2 accumulation steps × 2 clips matches one
    process on batch 8 (no dropout, no augmentation), up to fp32 summation order: logits of the two final models
    agree to 1e-5 relative (measured 9e-7). So gradients left unsynchronised on the first micro-step (`no_sync`) are
    all-reduced with the second. The attention key bias is left out of the parameter check: its gradient is pure
    rounding noise, which Adam normalises into lr-sized steps, yet it cannot change any output."""
    def cfg(name, accum_steps=1):
        return _cfg(world, tmp_path / name, frames=16, epochs=2,
                    optim=OptimConfig(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0.5, accum_steps=accum_steps),
                    run=RunConfig(out=str(tmp_path / name), eval_views=2))

    script, cfg_path = _script(tmp_path, cfg("ddp", accum_steps=2))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(script), str(cfg_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    single = run_train(cfg("single"))
    ddp_summary = json.loads((tmp_path / "ddp/summary.json").read_text())
    assert ddp_summary["processes"] == 2 and single["processes"] == 1 and ddp_summary["steps"] == single["steps"]
    assert ddp_summary["val_videos"] == single["val_videos"]
    a, b = load_model_state(tmp_path / "single"), load_model_state(tmp_path / "ddp")
    not_key = torch.arange(3 * D) // D != 1  # qkv bias without the keys' part (softmax is shift invariant in it)
    for k in a:
        x, y = (a[k][not_key], b[k][not_key]) if k.endswith("attn.qkv.bias") else (a[k], b[k])
        assert (x - y).abs().max() < 5e-5, k  # parameters are O(0.01-1); measured max 7.5e-6
    models = []
    for state in (a, b):
        model, _ = build_stage2_model(cfg("unused"), TokenStore.open(world["store"]))
        model.load_state_dict(state)
        models.append(model.eval())
    feats = torch.randn(16, 16, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = models[0](feats), models[1](feats)
    assert (la - lb).abs().max() / la.abs().max() < 1e-5  # measured 9e-7
    assert ddp_summary["val_top1"] == single["val_top1"]
    assert not list(tmp_path.glob("ddp/.checkpoint.tmp*"))
    import shutil; shutil.copytree(tmp_path, "/tmp/tt/ddp", dirs_exist_ok=True)  # one writer: no leftovers of a second
