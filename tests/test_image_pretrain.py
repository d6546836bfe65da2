"""The offline image checkpoint (`image-pretrain`): its localisation target, its weights file, and the stage-1 LR
scale of the spatial ViT that keeps what it learned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vivitcache.config import ModelConfig, OptimConfig
from vivitcache.hashing import state_dict_sha256
from vivitcache.models.spatial import create_spatial
from vivitcache.models.vivit import build_vivit
from vivitcache.pretrain.image import ImagePretrainConfig, localisation_targets, run_image_pretrain
from vivitcache.training.schedule import build_optimizer

TINY = dict(model="vit-ti", img_size=32, patch_size=8, spatial_depth=2)


def test_localisation_target_finds_a_moving_square():
    rng = np.random.default_rng(0)
    background = rng.integers(40, 90, (32, 32, 3), dtype=np.uint8)
    xs, ys = np.arange(4, 28, 3), np.arange(26, 2, -3)  # [8] top-left corner of a 3×3 square per frame
    frames = np.repeat(background[None], len(xs), axis=0)
    for t, (x, y) in enumerate(zip(xs, ys)):
        frames[t, y:y + 3, x:x + 3] = 250
    target = localisation_targets(frames)  # [8, 4]
    angle_x, angle_y = 2 * np.pi * (xs + 1.5) / 32, 2 * np.pi * (ys + 1.5) / 32  # square centres
    expected = np.stack([np.cos(angle_x), np.sin(angle_x), np.cos(angle_y), np.sin(angle_y)], 1)
    np.testing.assert_allclose(target, expected, atol=0.02)


def test_localisation_target_is_zero_without_motion():
    frames = np.full((6, 16, 16, 3), 120, dtype=np.uint8)
    np.testing.assert_allclose(localisation_targets(frames), 0.0, atol=1e-6)


def test_image_pretrain_learns_and_writes_loadable_weights(synth_dataset, tmp_path):
    out = tmp_path / "image.safetensors"
    cfg = ImagePretrainConfig(data=str(synth_dataset / "labels.csv"), out=str(out), steps=40, batch_size=32,
                              frames_per_video=16, **TINY)
    record = run_image_pretrain(cfg)
    assert record["final_loss"] < record["initial_loss"]
    assert json.loads(out.with_suffix(".json").read_text())["config"]["steps"] == 40
    loaded = create_spatial("vit-ti", 32, 8, 2, weights=out)
    fresh = create_spatial("vit-ti", 32, 8, 2)
    assert state_dict_sha256(loaded) != state_dict_sha256(fresh)
    again = run_image_pretrain(ImagePretrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "again.safetensors")}))
    assert again["final_loss"] == record["final_loss"]  # deterministic under the seed
    assert state_dict_sha256(create_spatial("vit-ti", 32, 8, 2, weights=tmp_path / "again.safetensors")) == \
        state_dict_sha256(loaded)


@pytest.mark.parametrize("scale", [0.01, 0.0])
def test_spatial_lr_scale(scale):
    torch.manual_seed(0)
    model = build_vivit(ModelConfig(img_size=32, patch_size=8, spatial_depth=1, temporal_depth=1, num_classes=3))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, spatial_lr_scale=scale))
    spatial_ids = {id(p) for p in model.spatial.parameters()}
    seen = set()
    for group in optimizer.param_groups:
        kinds = {id(p) in spatial_ids for p in group["params"]}
        assert len(kinds) == 1  # a group is all spatial or all not
        assert group["lr"] == pytest.approx(1e-3 * (scale if kinds.pop() else 1.0))
        seen |= {id(p) for p in group["params"]}
    others = {id(p) for p in model.parameters()} - spatial_ids
    assert others <= seen
    assert (spatial_ids <= seen) == (scale > 0)  # scale 0: the spatial ViT is frozen (not in the optimiser)


def test_cli_image_pretrain_then_pretrain_from_it(synth_dataset, tmp_path):
    from typer.testing import CliRunner

    from vivitcache.cli import app

    runner = CliRunner()
    tiny = ["--model", "vit-ti", "--img-size", "32", "--patch-size", "8", "--spatial-depth", "2"]
    weights = tmp_path / "image.safetensors"
    result = runner.invoke(app, ["image-pretrain", "--data", str(synth_dataset / "labels.csv"), *tiny,
                                 "--steps", "3", "--batch-size", "8", "--out", str(weights)])
    assert result.exit_code == 0, result.output
    assert "localisation loss" in result.output and weights.is_file()
    run = tmp_path / "stage1"
    result = runner.invoke(app, ["pretrain", "--data", str(synth_dataset / "labels.csv"), *tiny, "--temporal-depth",
                                 "1", "--weights", str(weights), "--spatial-lr-scale", "0.01", "--epochs", "1",
                                 "--batch-size", "8", "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "summary.json").read_text())["config"]
    assert config["model"]["weights"] == str(weights) and config["optim"]["spatial_lr_scale"] == 0.01
    assert config["initial_spatial_sha256"] == state_dict_sha256(create_spatial("vit-ti", 32, 8, 2, weights=weights))
    # the rest of the quickstart chain through the CLI: options land in the stage-2 run's config
    store = tmp_path / "tokens.zarr"
    result = runner.invoke(app, ["extract", "--data", str(synth_dataset / "labels.csv"), "--checkpoint", str(run),
                                 "--store", str(store), "--workers", "0"])
    assert result.exit_code == 0, result.output
    stage2 = tmp_path / "stage2"
    result = runner.invoke(app, ["train", "--store", str(store), "--init", str(run), "--frames", "16", "--epochs", "1",
                                 "--batch-size", "8", "--weight-decay", "0.01", "--warmup-epochs", "0.5",
                                 "--label-smoothing", "0", "--accum-steps", "2", "--precision", "fp32",
                                 "--checkpoint-every", "1", "--seed", "3", "--out", str(stage2)])
    assert result.exit_code == 0, result.output
    config = json.loads((stage2 / "summary.json").read_text())["config"]
    assert {k: config["optim"][k] for k in ("epochs", "batch_size", "weight_decay", "warmup_epochs",
                                              "label_smoothing", "accum_steps", "precision", "spatial_lr_scale")} == \
        dict(epochs=1, batch_size=8, weight_decay=0.01, warmup_epochs=0.5, label_smoothing=0.0, accum_steps=2,
             precision="fp32", spatial_lr_scale=1.0)
    assert (config["run"]["out"], config["run"]["seed"], config["run"]["checkpoint_every"]) == (str(stage2), 3, 1)
