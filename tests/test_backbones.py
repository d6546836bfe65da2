"""Real backbones: one model per pooling family, random weights laid out exactly as the Hugging Face hub does, loaded
through `--pretrained` (a fake offline HF cache), `--weights FILE` and `--weights DIR`; the stored token must equal
timm's own `forward_head(forward_features(x), pre_logits=True)` with timm's own hub loader. Bad input is one line."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from vivitcache.data.decode import iter_frames
from vivitcache.data.transforms import Preprocess
from vivitcache.extract import ExtractConfig, run_extract
from vivitcache.models import SpatialModelError, create_spatial, frame_features, frame_tokens, resolve_model_name
from vivitcache.models.tokens import TokenKindError
from vivitcache.store import TokenStore

# (tagged name, size overrides that keep it tiny, pooling)
FAMILIES = [
    ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", dict(img_size=32, patch_size=8, depth=1), "token"),
    ("vit_wee_patch16_reg1_gap_256.sbb_in1k", dict(img_size=32, patch_size=8, depth=1), "avg"),
    ("vit_base_patch16_siglip_224.webli", dict(img_size=32, patch_size=8, depth=1), "map"),
    ("vit_small_patch14_reg4_dinov2.lvd142m", dict(img_size=56, patch_size=14, depth=1), "token"),
    ("deit_tiny_distilled_patch16_224.fb_in1k", dict(img_size=32, patch_size=8, depth=1), "token"),
    ("eva02_tiny_patch14_224.mim_in22k", dict(img_size=56, patch_size=14, depth=1), "avg"),
]
IDS = [name.split("_patch")[0] + "-" + pool for name, _, pool in FAMILIES]


def hub_checkpoint(name: str, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """Random weights of `name` as its hub file holds them: the tag's classifier head included (1000 classes for
    ImageNet tags, two heads for DeiT distilled), norms and biases randomised too (so no test passes by symmetry)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **overrides)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point() and (k.endswith(".bias") or "norm" in k or "gamma" in k):
            state[k] = v + 0.1 * torch.randn_like(v)
    return state


def fake_hub(cache: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    """`models--timm--NAME/snapshots/REV/model.safetensors` + `refs/main`, as huggingface_hub lays out its cache."""
    repo = cache / f"models--timm--{name}"
    rev = hashlib.sha1(name.encode()).hexdigest()
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    save_file(state, str(repo / "snapshots" / rev / "model.safetensors"))
    return repo / "snapshots" / rev


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty offline Hugging Face cache for this test (env for us, constants for huggingface_hub's own reads)."""
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def videos(synth_dataset) -> Path:
    """Three synth videos of two classes as a CSV."""
    rows = list(csv.reader(open(synth_dataset / "labels.csv")))[1:]
    picked = [rows[0], rows[1], rows[3]]
    path = synth_dataset.parent / "backbone_labels.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], *[[str(synth_dataset / r[0]), r[1]] for r in picked]])
    return path


def reference_tokens(model, store: TokenStore, vid: str) -> np.ndarray:
    """timm's own image embedding of the video's frames, preprocessed as the store's fingerprint says: [T, D]."""
    preprocess = Preprocess.from_dict(store.fingerprint["preprocess"])
    frames = list(iter_frames(store.source(vid), resize_short=preprocess.resize_short,
                              interpolation=preprocess.interpolation))
    x = preprocess(np.stack([f.image for f in frames]))  # [T, 3, S, S]
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()  # [T, D]


@pytest.mark.parametrize("name, overrides, pool", FAMILIES, ids=IDS)
def test_pretrained_from_hf_cache_stores_the_models_own_embedding(name, overrides, pool, hf_cache, videos, tmp_path):
    fake_hub(hf_cache, name, hub_checkpoint(name, **overrides))
    cfg = ExtractConfig(data=str(videos), store=str(tmp_path / "s.zarr"), model=name, pretrained=True,
                        img_size=overrides["img_size"], patch_size=overrides["patch_size"],
                        spatial_depth=overrides["depth"], workers=0, batch_size=16, progress=False)
    run_extract(cfg)
    store = TokenStore.open(tmp_path / "s.zarr")
    fp = store.fingerprint
    assert store.layout.tokens == "pooled" and fp["model"] == name and fp["global_pool"] == pool and fp["decoder"] == "pyav"
    cfg_timm = timm.models.get_pretrained_cfg(name)
    assert tuple(fp["preprocess"]["mean"]) == tuple(cfg_timm.mean) and fp["preprocess"]["crop_pct"] == cfg_timm.crop_pct
    # the reference: timm's own hub loader (offline) and timm's own pooling
    direct = timm.create_model(name, pretrained=True, num_classes=0, **overrides).eval()
    for vid in store.ids():
        stored = store.video(vid).astype(np.float32)[:, 0]  # [T, D]
        want = reference_tokens(direct, store, vid)
        np.testing.assert_allclose(stored, want.astype(np.float16).astype(np.float32), rtol=1e-2, atol=2e-2)
        cos = (stored * want).sum(1) / np.linalg.norm(stored, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.9999


def test_all_tokens_keep_every_prefix_and_patch_token(hf_cache, tmp_path):
    name, overrides, _ = FAMILIES[3]  # DINOv2 with 4 registers: prefix = class + 4 registers
    path = tmp_path / "dino.safetensors"
    save_file(hub_checkpoint(name, **overrides), str(path))
    model = create_spatial(name, overrides["img_size"], overrides["patch_size"], overrides["depth"], weights=path)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    tokens = frame_tokens(model, x, "all")  # [2, 5 + 16, D]
    assert tokens.shape == (2, 5 + 16, 384) and model.num_prefix_tokens == 5
    ref = model.forward_features(x)
    torch.testing.assert_close(frame_features(tokens, "all", "cls+mean", 5), torch.cat([ref[:, 0], ref[:, 5:].mean(1)], -1))
    with pytest.raises(TokenKindError, match="pooled"):
        frame_features(tokens, "all", "pooled", 5)


def test_weights_folder_pth_and_original_dinov2_checkpoint_load_alike(tmp_path):
    name, overrides, _ = FAMILIES[3]
    state = hub_checkpoint(name, **overrides)
    # the original facebookresearch/dinov2 layout: registers apart, position embedding with the class position,
    # a mask token; timm's checkpoint filter converts it
    p0 = torch.randn(1, 1, state["pos_embed"].shape[-1], generator=torch.Generator().manual_seed(0))
    # timm's filter computes cls = (cls - p0) + p0, which rounds in the last fp32 bit. The reference is given the
    # very same rounded class token, so all three load bit-identical weights: the comparison is then exact on any
    # CPU (a tolerance would only hide kernel order; 1.26e-5 was seen against assert_close's 1e-5 on one machine).
    state["cls_token"] = (state["cls_token"] - p0) + p0
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "weights.pth")
    original = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    original |= {"register_tokens": state["reg_token"], "cls_token": state["cls_token"] - p0,
                 "pos_embed": torch.cat([p0, state["pos_embed"]], 1), "mask_token": torch.zeros(1, state["cls_token"].shape[-1])}
    torch.save(original, tmp_path / "dinov2_original.pth")
    models = [create_spatial(name, overrides["img_size"], overrides["patch_size"], overrides["depth"], weights=w).eval()
              for w in (tmp_path, tmp_path / "weights.pth", tmp_path / "dinov2_original.pth")]
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    outs = [frame_tokens(m, x, "pooled") for m in models]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=0)


def test_distilled_heads_are_dropped_and_pooled_averages_both_tokens(tmp_path):
    name, overrides, _ = FAMILIES[4]
    state = hub_checkpoint(name, **overrides)
    assert "head_dist.weight" in state and "head.weight" in state
    save_file(state, str(tmp_path / "deit.safetensors"))
    model = create_spatial(name, overrides["img_size"], overrides["patch_size"], overrides["depth"],
                           weights=tmp_path / "deit.safetensors").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = model.forward_features(x)
    torch.testing.assert_close(frame_tokens(model, x, "pooled")[:, 0], (feats[:, 0] + feats[:, 1]) / 2)


def test_aliases_are_tagged_names_with_public_weights():
    for alias, name in [("vit-ti", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"), ("vit-g", "vit_giant_patch14_clip_224.laion2b")]:
        assert resolve_model_name(alias) == name
        assert timm.models.get_pretrained_cfg(name).hf_hub_id
    # an untagged name takes timm's default tag (the one timm itself would load)
    default_tag = timm.models.get_pretrained_cfg("vit_base_patch16_siglip_224").tag
    assert resolve_model_name("vit_base_patch16_siglip_224") == f"vit_base_patch16_siglip_224.{default_tag}"
    with torch.device("meta"):
        assert create_spatial("vit-g").embed_dim == 1408


def test_unknown_name_suggests_close_matches():
    with pytest.raises(SpatialModelError, match=r"did you mean .*vit_small_patch16_224"):
        resolve_model_name("vit_smal_patch16_224")
    with pytest.raises(SpatialModelError, match="unknown spatial model 'vit_small_patch16_224.nosuchtag'"):
        resolve_model_name("vit_small_patch16_224.nosuchtag")
    with pytest.raises(SpatialModelError, match="resnet50.*not a plain ViT"):
        resolve_model_name("resnet50")


def test_weights_of_another_model_name_the_first_key_and_both_shapes(tmp_path):
    save_file(hub_checkpoint("vit_small_patch16_224", img_size=32, patch_size=8, depth=1), str(tmp_path / "s.safetensors"))
    with pytest.raises(SpatialModelError, match=r"cls_token is \(1, 1, 384\) in the file, \(1, 1, 192\) in the model"):
        create_spatial("vit-ti", 32, 8, 1, weights=tmp_path / "s.safetensors")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vivitcache", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_bad_backbone_input_is_one_error_line_and_writes_no_store(videos, tmp_path, hf_cache):
    siglip, overrides, _ = FAMILIES[2]
    fake_hub(hf_cache, siglip, hub_checkpoint(siglip, **overrides))
    save_file(hub_checkpoint("vit_small_patch16_224", img_size=32, patch_size=8, depth=1), str(tmp_path / "s.safetensors"))
    tiny = ["--img-size", "32", "--patch-size", "8", "--spatial-depth", "1", "--workers", "0"]
    cases = {
        "unknown": (["--model", "vit_smal_patch16_224"], "did you mean"),
        "cls without class token": (["--model", siglip, "--pretrained", "--tokens", "cls"], "has no class token"),
        "other model's weights": (["--model", "vit-ti", "--weights", str(tmp_path / "s.safetensors")], "in the file"),
        "missing cache entry": (["--model", "vit-s", "--pretrained"],
                                f"no {hf_cache}/models--timm--vit_small_patch16_224.augreg_in21k_ft_in1k/snapshots/*/model.safetensors"),
    }
    for what, (args, message) in cases.items():
        store = tmp_path / f"{what.replace(' ', '_')}.zarr"
        result = run_cli("extract", "--data", str(videos), "--store", str(store), *tiny, *args,
                         env={"HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1"})
        lines = result.stderr.strip().splitlines() + result.stdout.strip().splitlines()
        assert result.returncode == 2, (what, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (what, lines)
        assert not store.exists(), what


def test_stage1_on_a_pretrained_backbone_and_extract_from_it_keep_its_preprocessing(hf_cache, videos, tmp_path):
    from vivitcache.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig
    from vivitcache.pretrain import run_pretrain
    from vivitcache.runs import load_stage1

    name, overrides, _ = FAMILIES[2]  # SigLIP: no class token, attention pooling, mean/std 0.5
    fake_hub(hf_cache, name, hub_checkpoint(name, **overrides))
    cfg = PretrainConfig(
        model=ModelConfig(spatial=name, pretrained=True, img_size=overrides["img_size"], patch_size=overrides["patch_size"],
                          spatial_depth=overrides["depth"], temporal_depth=1, num_frames=4),
        data=DataConfig(data=str(videos)),
        optim=OptimConfig(epochs=1, batch_size=2, spatial_lr_scale=0.1),
        run=RunConfig(out=str(tmp_path / "stage1"), device="cpu"),
    )
    run_pretrain(cfg)
    stage1 = load_stage1(tmp_path / "stage1")
    from vivitcache.hashing import state_dict_sha256
    from vivitcache.training.checkpoint import load_config

    hub = create_spatial(name, overrides["img_size"], overrides["patch_size"], overrides["depth"], pretrained=True)
    assert load_config(tmp_path / "stage1")["config"]["initial_spatial_sha256"] == state_dict_sha256(hub)
    want = Preprocess.from_timm(create_spatial(name, overrides["img_size"], overrides["patch_size"], overrides["depth"]))
    assert stage1.preprocess == want.to_dict() and tuple(want.mean) == (0.5, 0.5, 0.5)
    run_extract(ExtractConfig(data=str(videos), store=str(tmp_path / "s.zarr"), checkpoint=str(tmp_path / "stage1"),
                              workers=0, progress=False))
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.fingerprint["preprocess"] == stage1.preprocess and store.fingerprint["model"] == name
    assert store.fingerprint["weights_sha256"] == stage1.spatial_sha256 and store.layout.tokens == "pooled"
    # the fine-tuned spatial model's own embedding, on frames preprocessed as the run was
    spatial = create_spatial(name, overrides["img_size"], overrides["patch_size"], overrides["depth"])
    spatial.load_state_dict(stage1.part("spatial"))
    vid = store.ids()[0]
    np.testing.assert_allclose(store.video(vid).astype(np.float32)[:, 0], reference_tokens(spatial.eval(), store, vid),
                               rtol=1e-2, atol=2e-2)


def test_extract_from_a_run_stores_the_frame_token_that_run_reads(tmp_path, make_video):
    """No --tokens: the store holds what `train --init RUN` will read (here cls+mean), not the pooled default."""
    from dataclasses import asdict

    from vivitcache.config import ModelConfig
    from vivitcache.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    spatial = create_spatial("vit-ti", 32, 8, 1)
    model_cfg = ModelConfig(spatial="vit-ti", img_size=32, patch_size=8, spatial_depth=1, num_classes=2,
                            frame_token="cls+mean")
    config = {"stage": 1, "model": asdict(model_cfg), "data": {"fps": None, "stride": None}, "classes": ["a", "b"],
              "preprocess": Preprocess.from_timm(spatial).to_dict()}
    save_checkpoint(tmp_path / "run", {f"spatial.{k}": v for k, v in spatial.state_dict().items()}, {"config": config})
    video = make_video(tmp_path / "v.mp4", frames=6, size=(32, 32))
    (tmp_path / "labels.csv").write_text(f"path,label\n{video},a\n")
    run_extract(ExtractConfig(data=str(tmp_path / "labels.csv"), store=str(tmp_path / "s.zarr"),
                              checkpoint=str(tmp_path / "run"), workers=0, progress=False))
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.layout.tokens == "cls+mean" and store.fingerprint["tokens"] == "cls+mean"
    assert store.layout.tokens_per_frame == 2


def test_eva02_stage1_run_rebuilds_with_its_computed_buffers_and_a_stage1_file_loads_as_weights(tmp_path):
    """SpatialSpec from a stage-1 run builds EVA02 for real (its RoPE tables are in no checkpoint); `--weights` of a
    stage-1 run's model.safetensors takes its spatial part."""
    from dataclasses import asdict

    from vivitcache.config import ModelConfig
    from vivitcache.models import SpatialSpec
    from vivitcache.training.checkpoint import save_checkpoint

    name, overrides, _ = FAMILIES[5]
    torch.manual_seed(0)
    spatial = create_spatial(name, overrides["img_size"], overrides["patch_size"], overrides["depth"]).eval()
    cfg = ModelConfig(spatial=name, img_size=overrides["img_size"], patch_size=overrides["patch_size"],
                      spatial_depth=overrides["depth"], num_classes=2)
    state = {f"spatial.{k}": v for k, v in spatial.state_dict().items()} | {"head.1.weight": torch.zeros(2, 4)}
    save_checkpoint(tmp_path / "run", state, {"config": {"stage": 1, "model": asdict(cfg), "classes": ["a", "b"],
                                                         "data": {"fps": None, "stride": None}, "preprocess": {}}})
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    want = frame_tokens(spatial, x, "pooled")
    spec = SpatialSpec(name, overrides["img_size"], overrides["patch_size"], overrides["depth"], checkpoint=str(tmp_path / "run"))
    torch.testing.assert_close(frame_tokens(spec.build(), x, "pooled"), want)
    from_file = create_spatial(name, overrides["img_size"], overrides["patch_size"], overrides["depth"],
                               weights=tmp_path / "run" / "checkpoint" / "model.safetensors").eval()
    torch.testing.assert_close(frame_tokens(from_file, x, "pooled"), want)


def test_stage1_refuses_a_cls_frame_token_on_a_model_without_one():
    from vivitcache.config import ModelConfig
    from vivitcache.models import build_vivit

    with pytest.raises(TokenKindError, match="has no class token"):
        build_vivit(ModelConfig(spatial="vit_base_patch16_siglip_224", img_size=32, patch_size=8, spatial_depth=1,
                                frame_token="cls", temporal_depth=1, num_classes=2))
