"""Preprocess: built from a timm model's pretrained cfg, and equal to timm's own eval transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from vivitcache.data.transforms import Preprocess


@pytest.fixture(scope="module")
def tiny_vit():
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=1
    )


def timm_eval_transform(model, size: int):
    cfg = resolve_data_config({}, model=model)
    cfg["input_size"] = (3, size, size)
    return create_transform(**cfg, is_training=False)


def test_from_timm_uses_pretrained_cfg_and_built_size(tiny_vit):
    cfg = resolve_data_config({}, model=tiny_vit)
    p = Preprocess.from_timm(tiny_vit)
    assert p.size == 32  # the size the model was built with, not the cfg's 224
    assert p.mean == tuple(cfg["mean"]) and p.std == tuple(cfg["std"])
    assert p.interpolation == cfg["interpolation"] and p.crop_pct == cfg["crop_pct"]
    assert p.resize_short == int(32 / cfg["crop_pct"])
    assert Preprocess.from_timm(tiny_vit, img_size=48).size == 48


def test_dict_round_trip(tiny_vit):
    p = Preprocess.from_timm(tiny_vit)
    d = json.loads(json.dumps(p.to_dict()))
    assert Preprocess.from_dict(d) == p
    assert set(d) == {"size", "mean", "std", "interpolation", "crop_pct"}


def test_invalid_fields_raise():
    with pytest.raises(ValueError):
        Preprocess(size=0, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError):
        Preprocess(size=8, mean=(0, 0, 0), std=(1, 1, 1), crop_pct=1.5)
    with pytest.raises(ValueError):
        Preprocess(size=8, mean=(0, 0, 0), std=(1, 0, 1))
    with pytest.raises(ValueError):
        Preprocess(size=8, mean=(0, 0, 0), std=(1, 1, 1), interpolation="sinc-ish")


@pytest.mark.parametrize("hw", [(60, 90), (90, 60), (35, 50), (20, 20)])
def test_matches_timm_eval_transform_on_pil(tiny_vit, hw):
    rng = np.random.default_rng(sum(hw))
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    smooth = np.stack([xx * 255 / w, yy * 255 / h, 127 + 120 * np.sin(xx / 4 + yy / 7)], -1)
    noisy = rng.integers(0, 256, (h, w, 3))
    frames = np.stack([smooth, noisy]).astype(np.uint8)  # [2, H, W, 3]
    p = Preprocess.from_timm(tiny_vit)
    ours = p(frames)
    assert ours.shape == (2, 3, 32, 32) and ours.dtype == torch.float32
    reference = timm_eval_transform(tiny_vit, 32)
    for t in range(2):
        theirs = reference(Image.fromarray(frames[t]))
        diff = (ours[t] - theirs).abs()
        # same resampling up to uint8 rounding: one grey level is 2/255 after normalising with std 0.5
        assert diff.mean() < 0.005 and diff.max() <= 2 * 2 / 255 + 1e-6


def test_frames_already_at_resize_short_are_only_cropped(tiny_vit):
    p = Preprocess.from_timm(tiny_vit)
    frames = np.random.default_rng(0).integers(0, 256, (3, p.resize_short, 50, 3), dtype=np.uint8)
    out = p(torch.from_numpy(frames))  # torch input works too
    top = (p.resize_short - p.size + 1) // 2
    left = (50 - p.size + 1) // 2
    crop = frames[:, top : top + p.size, left : left + p.size].astype(np.float32) / 255  # [3, S, S, 3]
    expected = (crop - np.array(p.mean, np.float32)) / np.array(p.std, np.float32)
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), expected, atol=1e-6)


def test_constant_frame_normalises_per_channel():
    p = Preprocess(size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0), interpolation="bilinear", crop_pct=1.0)
    frames = np.zeros((2, 12, 16, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 51, 102, 255
    out = p(frames)
    assert out.shape == (2, 3, 8, 8)
    expected = (np.array([51, 102, 255]) / 255 - np.array(p.mean)) / np.array(p.std)
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-5)


def test_rejects_wrong_layout():
    p = Preprocess(size=8, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match="T, H, W, 3"):
        p(np.zeros((2, 3, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        p(np.zeros((2, 16, 16, 3), np.float32))
