"""Richer frozen tokens (`extract --tokens grid --grid N --layers …`): grid and layer tokens equal a direct timm
computation for every pooling family, one-token stores keep their layouts and fingerprints (pinned at main e3b2fed),
and a store of other grid or layers is refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from vivitcache.cli import app
from vivitcache.data.decode import iter_frames
from vivitcache.data.transforms import Preprocess
from vivitcache.extract import ExtractConfig, run_extract
from vivitcache.extract.runner import storage_layout
from vivitcache.extract.source import build_fingerprint, resolve_source
from vivitcache.models.tokens import (
    TokenKindError, canonical_layers, frame_features, frame_tokens, token_map, tokens_per_frame,
)
from vivitcache.store import FingerprintMismatchError, StoreLayout, TokenStore
from vivitcache.store.layout import StoreError

PINNED = Path(__file__).parent / "data" / "one_token_stores.json"

# (timm name, tiny size overrides, pooling): class token, avg + fc_norm (registers), attention pool (SigLIP),
# registers (DINOv2), distillation (DeiT), RoPE (EVA02)
FAMILIES = [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=3), "token"),
    ("vit_wee_patch16_reg1_gap_256", dict(img_size=32, patch_size=8, depth=3), "avg"),
    ("vit_base_patch16_siglip_224", dict(img_size=32, patch_size=8, depth=3), "map"),
    ("vit_small_patch14_reg4_dinov2", dict(img_size=56, patch_size=14, depth=3), "token"),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, depth=3), "token"),
    ("eva02_tiny_patch14_224", dict(img_size=56, patch_size=14, depth=3), "avg"),
]
IDS = [name.split("_patch")[0] for name, _, _ in FAMILIES]


def random_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A timm model with random weights, norms and biases randomised too (no test passes by symmetry)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **overrides).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith(".bias") or "norm" in key or "gamma" in key:
                p.add_(0.1 * torch.randn_like(p))
    return model


def reference_block(model, x: torch.Tensor, grid: int) -> torch.Tensor:
    """One block's normed tokens x [N, P + L, D] → [pooled, grid cells] [N, 1 + grid², D], written out directly."""
    pooled = model.forward_head(x, pre_logits=True)  # [N, D]
    h, w = model.patch_embed.grid_size
    patches = x[:, model.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], -1, h, w)  # [N, D, h, w]
    cells = F.adaptive_avg_pool2d(patches, (grid, grid)).flatten(2).transpose(1, 2)  # [N, grid², D]
    return torch.cat([pooled[:, None], cells], dim=1)


@pytest.mark.parametrize("name, overrides, pool", FAMILIES, ids=IDS)
def test_grid_tokens_equal_forward_features_pooled_to_a_grid(name, overrides, pool):
    model = random_model(name, **overrides)
    assert getattr(model, "global_pool", None) == pool
    x = torch.randn(3, 3, overrides["img_size"], overrides["img_size"], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for grid in (1, 2, 4):
            got = frame_tokens(model, x, "grid", grid)  # [3, 1 + grid², D]
            assert got.shape == (3, tokens_per_frame(model, "grid", grid), model.embed_dim) == (3, 1 + grid**2, model.embed_dim)
            torch.testing.assert_close(got, reference_block(model, model.forward_features(x), grid), rtol=1e-5, atol=1e-5)
        # its first token is the pooled kind's token, and a one-token reader takes it
        pooled = frame_tokens(model, x, "pooled")  # [3, 1, D]
        torch.testing.assert_close(got[:, :1], pooled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(frame_features(got, "grid", "pooled"), got[:, 0], rtol=0, atol=0)
        assert frame_features(got, "grid", "tokens").shape == (3, 17 * model.embed_dim)


@pytest.mark.parametrize("name, overrides, pool", FAMILIES, ids=IDS)
def test_layer_tokens_equal_timms_forward_intermediates(name, overrides, pool):
    model = random_model(name, **overrides)
    x = torch.randn(2, 3, overrides["img_size"], overrides["img_size"], generator=torch.Generator().manual_seed(2))
    layers = canonical_layers(model, [0, -1])  # block 0 of 3 is offset -3; the last block is stored first
    assert layers == (-1, -3)
    P = model.num_prefix_tokens
    with torch.inference_mode():
        got = frame_tokens(model, x, "grid", 2, layers)  # [2, 2 · 5, D]
        ref = model.forward_intermediates(x, indices=[0, 2], norm=True, output_fmt="NLC",
                                          return_prefix_tokens=P > 0, intermediates_only=True)
        blocks = [torch.cat([o[1], o[0]], 1) if P else o for o in ref]  # blocks 0 and 2: [2, P + L, D]
        want = torch.cat([reference_block(model, blocks[1], 2), reference_block(model, blocks[0], 2)], dim=1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # the last block's tokens are the one-block store's
        torch.testing.assert_close(got[:, :5], frame_tokens(model, x, "grid", 2), rtol=1e-5, atol=1e-5)
        pooled = frame_tokens(model, x, "pooled", 0, layers)  # [2, 2, D]
        torch.testing.assert_close(pooled, want[:, [0, 5]], rtol=1e-5, atol=1e-5)
    assert token_map("grid", 2, layers)[5] == (-3, "pooled") and len(token_map("grid", 2, layers)) == 10


def test_a_non_square_patch_grid_pools_to_n_by_n_and_a_small_one_is_refused():
    model = random_model("vit_tiny_patch16_224", img_size=(32, 48), patch_size=8, depth=1)  # 4 x 6 patches
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(frame_tokens(model, x, "grid", 3), reference_block(model, model.forward_features(x), 3),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(TokenKindError, match="patch grid is 4x6, smaller than 5x5"):
        tokens_per_frame(model, "grid", 5)
    with pytest.raises(TokenKindError, match="the last one"):
        canonical_layers(model, [-1, 0])  # the same block twice (depth 1)
    with pytest.raises(TokenKindError, match="--layers with --tokens all"):
        tokens_per_frame(model, "all", 0, (-1, -2))


def test_layout_records_which_token_is_which_and_refuses_a_wrong_map():
    layout = StoreLayout("grid", 10, 8, "fp16", grid=2, layers=(-1, -3), token_map=token_map("grid", 2, (-1, -3)))
    data = json.loads(json.dumps(layout.to_dict()))
    assert data["token_map"][0] == [-1, "pooled"] and data["token_map"][6] == [-3, "r0c0"] and data["layers"] == [-1, -3]
    assert StoreLayout.from_dict(data) == layout
    with pytest.raises(StoreError, match="token_map has 9 entries"):
        StoreLayout.from_dict({**data, "token_map": data["token_map"][:9]})
    with pytest.raises(StoreError, match="stores 10 token"):
        StoreLayout("grid", 5, 8, "fp16", grid=2, layers=(-1, -3))
    with pytest.raises(StoreError, match="deepest"):
        StoreLayout("pooled", 2, 8, "fp16", layers=(-3, -1))
    assert "token_map" not in StoreLayout("pooled", 1, 8, "fp16").to_dict()


def test_one_token_stores_keep_their_layouts_and_fingerprints():
    pinned = json.loads(PINNED.read_text())
    for entry in pinned["stores"]:
        model = timm.create_model(entry["model"], pretrained=False, num_classes=0, **entry["overrides"])
        kind = entry["tokens"]
        fp = build_fingerprint(model, entry["model"], "0" * 64, Preprocess.from_timm(model, entry["overrides"]["img_size"]),
                               None, 2, kind, "fp16", "pyav")
        layout = StoreLayout(tokens=kind, tokens_per_frame=tokens_per_frame(model, kind), dim=int(model.embed_dim),
                             dtype="fp16", shard_frames=256, chunk_frames=16 if kind == "all" else 64,
                             token_map=token_map(kind))
        assert json.dumps(fp, sort_keys=True) == json.dumps(entry["fingerprint"], sort_keys=True), (entry["model"], kind)
        assert json.dumps(layout.to_dict(), sort_keys=True) == json.dumps(entry["layout"], sort_keys=True)
    for entry in pinned["resolved"]:  # the whole extract path: config → source → storage layout
        ov = entry["overrides"]
        cfg = ExtractConfig(data="x.csv", store="s.zarr", model=entry["model"], img_size=ov["img_size"],
                            patch_size=ov["patch_size"], spatial_depth=ov["depth"], tokens=entry["tokens"])
        source, _ = resolve_source(replace(cfg, shard_frames=cfg.chunk_frames_for_layout()))
        fp = dict(source.fingerprint, weights_sha256="<blanked>")
        assert json.dumps(fp, sort_keys=True) == json.dumps(entry["fingerprint"], sort_keys=True)
        assert storage_layout(cfg, source.layout).to_dict() == entry["layout"]


def _extract(data: Path, store: Path, **kw) -> dict:
    return run_extract(ExtractConfig(data=str(data), store=str(store), model="vit-ti", img_size=32, patch_size=8,
                                     spatial_depth=3, workers=0, progress=False, **kw))


@pytest.fixture(scope="module")
def grid_store(synth_dataset, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("tokens") / "grid.zarr"
    _extract(synth_dataset / "labels.csv", store, tokens="grid", grid=2, layers=[-1, 0])
    return store


def test_extracted_grid_store_holds_the_direct_computation(grid_store):
    store = TokenStore.open(grid_store)
    assert (store.layout.tokens, store.layout.grid, store.layout.layers, store.layout.tokens_per_frame) == ("grid", 2, (-1, -3), 10)
    assert store.fingerprint["grid"] == 2 and store.fingerprint["layers"] == [-1, -3]
    assert store.layout.token_map == token_map("grid", 2, (-1, -3))
    torch.manual_seed(0)  # extract's random init under --seed 0
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=3).eval()
    preprocess = Preprocess.from_dict(store.fingerprint["preprocess"])
    vid = store.ids()[0]
    frames = [f.image for f in iter_frames(store.source(vid), resize_short=preprocess.resize_short,
                                             interpolation=preprocess.interpolation)]
    with torch.inference_mode():
        want = frame_tokens(model, preprocess(np.stack(frames)), "grid", 2, (-1, -3)).numpy()  # [T, 10, D]
    stored = store.video(vid).astype(np.float32)
    np.testing.assert_allclose(stored, want.astype(np.float16).astype(np.float32), rtol=1e-2, atol=2e-2)
    info = CliRunner().invoke(app, ["info", str(grid_store)]).output
    assert "grid 2" in info and "3840" in info  # 10 tokens x 192 x 2 bytes per frame


def test_other_grid_or_layers_on_an_existing_store_is_refused_in_one_line(grid_store, synth_dataset):
    labels = synth_dataset / "labels.csv"
    with pytest.raises(FingerprintMismatchError, match="fingerprint.grid: store has 2, you asked for 3") as e:
        _extract(labels, grid_store, tokens="grid", grid=3, layers=[-1, 0])
    assert "\n" not in str(e.value)
    with pytest.raises(FingerprintMismatchError, match=r"fingerprint.layers: store has \[-1,-3\], you asked for \[-1,-2\]"):
        _extract(labels, grid_store, tokens="grid", grid=2, layers=[-1, -2])
    with pytest.raises(FingerprintMismatchError, match="fingerprint.grid: store has 2, you asked for <missing>"):
        _extract(labels, grid_store, tokens="pooled", layers=[-1, 0])
    out = CliRunner().invoke(app, ["extract", "--data", str(labels), "--store", str(grid_store), "--model", "vit-ti",
                                   "--img-size", "32", "--patch-size", "8", "--spatial-depth", "3", "--tokens", "grid",
                                   "--grid", "9", "--workers", "0"])
    assert out.exit_code != 0 and out.output.strip().splitlines() == [
        "error: --grid 9: the model's patch grid is 4x4, smaller than 9x9; use --grid 4 or less"]
