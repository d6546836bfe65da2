"""`train --adapter attn`: the attentive adapter starts as the pooled-token model (so `--init` from a stage-1 run keeps
its function at step 0), learns, refuses stores it cannot read, and eval and predict agree on a grid run."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vivitcache.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from vivitcache.extract import ExtractConfig, run_extract
from vivitcache.models.attn_adapter import AttnAdapter
from vivitcache.models.tokens import frame_features, token_map
from vivitcache.models.vivit import ViViT
from vivitcache.predict import predict
from vivitcache.runs import load_stage1
from vivitcache.store import StoreLayout, StoreWriter, TokenStore
from vivitcache.store.writer import plan_parts
from vivitcache.train_temporal import InitError, TrainConfig, build_stage2_model, run_eval, run_train
from vivitcache.training.checkpoint import load_model_state, save_checkpoint

D = 16
CLASSES = ["a", "b", "c"]
GRID, LAYERS = 2, (-1, -2)
K = (1 + GRID**2) * len(LAYERS)


def make_grid_store(path: Path, sha: str, tokens: str = "grid", seed: int = 0) -> TokenStore:
    """A `grid` store (2 x 2 cells, blocks -1 and -2: K = 10) of random tokens, 4 videos per class."""
    rng = np.random.default_rng(seed)
    grid, layers, k = (GRID, LAYERS, K) if tokens == "grid" else (0, (-1,), 1)
    layout = StoreLayout(tokens, k, D, "fp16", shard_frames=32, chunk_frames=8, grid=grid, layers=layers,
                         token_map=token_map(tokens, grid, layers))
    writer = StoreWriter.create_or_open(path, {"model": "vit-ti", "weights_sha256": sha}, layout, CLASSES, {})
    videos = {f"{c}_{i}": (ci, int(rng.integers(8, 20))) for ci, c in enumerate(CLASSES) for i in range(4)}
    for part in plan_parts(list(videos), 5):
        with writer.part(part.part_id) as pw:
            for vid in part.ids:
                label, n = videos[vid]
                pw.begin_video(vid, label, f"{vid}.mp4", 25.0)
                pw.append(rng.normal(0, 1, (n, k, D)).astype(np.float32), np.arange(n) / 25.0)
                pw.end_video()
    return TokenStore.open(path)


def make_stage1(run: Path, frames: int = 8) -> ViViT:
    """A stage-1 run (frame token `pooled`, mlp adapter not the identity) as pretrain writes it; returns its model."""
    torch.manual_seed(1)
    cfg = ModelConfig(spatial="vit-ti", temporal_depth=1, temporal_heads=2, num_frames=frames,
                      num_classes=len(CLASSES), frame_token="pooled")
    model = ViViT(cfg, None, D)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.normal_(0, 0.2)
    state = {"spatial.patch_embed.proj.weight": torch.randn(4, 3), **model.state_dict()}
    config = {"stage": 1, "model": dataclasses.asdict(cfg), "data": dataclasses.asdict(DataConfig()),
              "classes": CLASSES, "preprocess": {}}
    save_checkpoint(run, state, {"config": config})
    return model.eval()


@pytest.mark.parametrize("query", ["pooled", "learned"])
def test_a_fresh_attn_adapter_is_its_post_adapter_on_the_pooled_token(query):
    torch.manual_seed(0)
    adapter = AttnAdapter(D, K, len(LAYERS), query=query, post="mlp")
    with torch.no_grad():
        for p in adapter.post.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 5, K * D)  # [B, T, K·D]
    out = adapter(x)  # [B, T, D]
    torch.testing.assert_close(out, adapter.post(x[..., :D]), rtol=0, atol=0)  # bit-identical: the residual is 0
    # the readout is not dead: the zero projection gets a gradient
    out.square().sum().backward()
    assert adapter.proj.weight.grad.abs().sum() > 0 and adapter.q.weight.grad is not None


@pytest.mark.parametrize("query", ["pooled", "learned"])
def test_init_from_stage1_keeps_its_function_at_step_0(tmp_path, query):
    stage1_model = make_stage1(tmp_path / "run1")
    sha = load_stage1(tmp_path / "run1").spatial_sha256
    store = make_grid_store(tmp_path / "g.zarr", sha)
    cfg = TrainConfig(store=str(store.path), init=str(tmp_path / "run1"), frames=8,
                      model=ModelConfig(adapter="attn", attn_query=query))
    torch.manual_seed(0)
    model, made = build_stage2_model(cfg, store)
    model.eval()
    assert (model.cfg.adapter, model.cfg.attn_post, model.cfg.frame_token) == ("attn", "mlp", "tokens")
    assert made["init_parts"] == ["adapter", "temporal", "head"]
    tokens = torch.from_numpy(store.clip(store.ids()[0], np.arange(8)).astype(np.float32))[None]  # [1, 8, K, D]
    with torch.no_grad():
        got = model(frame_features(tokens, "grid", "tokens"))  # [1, classes]
        want = stage1_model(frame_features(tokens, "grid", "pooled"))  # the stage-1 model on the pooled token
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the stage-1 parts were loaded (the temporal transformer and head are the run's, not a fresh init)
    torch.testing.assert_close(model.temporal.pos_embed, stage1_model.temporal.pos_embed, rtol=0, atol=0)


def test_attn_refuses_a_one_token_store_and_a_stage1_run_reading_another_token(tmp_path):
    make_stage1(tmp_path / "run1")
    sha = load_stage1(tmp_path / "run1").spatial_sha256
    pooled = make_grid_store(tmp_path / "p.zarr", sha, tokens="pooled")
    with pytest.raises(InitError, match="holds pooled tokens .1 per frame.; extract one with --tokens grid"):
        build_stage2_model(TrainConfig(store=str(pooled.path), frames=8, model=ModelConfig(adapter="attn")), pooled)
    cls_store = tmp_path / "c.zarr"
    layout = StoreLayout("cls", 2, D, "fp16", shard_frames=32, chunk_frames=8, layers=(-1, -2),
                         token_map=token_map("cls", 0, (-1, -2)))
    StoreWriter.create_or_open(cls_store, {"model": "vit-ti", "weights_sha256": sha}, layout, CLASSES, {})
    with pytest.raises(InitError, match=r"first token \(cls\), stage-1 run .* reads pooled"):
        build_stage2_model(TrainConfig(store=str(cls_store), frames=8, init=str(tmp_path / "run1"),
                                       model=ModelConfig(adapter="attn")), TokenStore.open(cls_store))


def test_one_token_adapters_read_the_pooled_token_of_a_grid_store(tmp_path):
    store = make_grid_store(tmp_path / "g.zarr", "0" * 64)
    torch.manual_seed(0)
    model, _ = build_stage2_model(TrainConfig(store=str(store.path), frames=8), store)
    assert (model.cfg.adapter, model.cfg.frame_token) == ("mlp", "pooled")
    feats = frame_features(torch.from_numpy(store.video(store.ids()[0]).astype(np.float32)), "grid", "pooled")
    np.testing.assert_array_equal(feats.numpy(), store.video(store.ids()[0])[:, 0].astype(np.float32))


@pytest.fixture(scope="module")
def grid_run(synth_dataset, tmp_path_factory):
    """A real grid store (2 x 2 cells, blocks -1 and -2 of a 2-block ViT) and an attn stage-2 run trained on it."""
    work = tmp_path_factory.mktemp("attn")
    store = work / "g.zarr"
    run_extract(ExtractConfig(data=str(synth_dataset / "labels.csv"), store=str(store), model="vit-ti", img_size=32,
                              patch_size=8, spatial_depth=2, tokens="grid", grid=2, layers=[-1, -2], workers=0,
                              progress=False))
    summary = run_train(TrainConfig(store=str(store), frames=8, model=ModelConfig(adapter="attn"),
                                    optim=OptimConfig(epochs=2, batch_size=4, lr=3e-3),
                                    run=RunConfig(out=str(work / "s2"), eval_views=2)))
    return work, store, summary


def test_attn_run_learns_and_eval_and_predict_agree(grid_run, synth_dataset):
    work, store, _ = grid_run
    state = load_model_state(work / "s2")
    assert state["adapter.proj.weight"].abs().sum() > 0  # the readout moved off its zero init
    report = run_eval(store, work / "s2", views=2, split="all", out=work / "eval")
    tokens = TokenStore.open(store)
    hits = 0
    for vid in tokens.ids():
        p = predict(str(tokens.source(vid)), work / "s2", store=store, video_id=vid, views=2)
        hits += p.top[0][0] == tokens.classes[tokens.label(vid)]
    assert report["val_videos"] == len(tokens.ids()) and report["val_top1"] == pytest.approx(hits / len(tokens.ids()))
    # on the fly (a copy of a video, not in the store) agrees with the store
    video = Path(tokens.source(tokens.ids()[0]))
    copy = work / "copy.mp4"
    shutil.copy(video, copy)
    from_store = predict(str(video), work / "s2", store=store)
    on_the_fly = predict(str(copy), work / "s2", store=store)
    assert (from_store.source, on_the_fly.source) == ("store", "on-the-fly")
    np.testing.assert_allclose(from_store.probs, on_the_fly.probs, atol=1e-4)
