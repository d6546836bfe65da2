"""Model shapes, equality with a direct timm forward, adapter identity, position-embedding interpolation."""

import pytest
import torch
from safetensors.torch import save_file

from vivitcache.config import ModelConfig
from vivitcache.hashing import state_dict_sha256
from vivitcache.models import (
    SpatialModelError,
    TokenKindError,
    build_adapter,
    build_vivit,
    create_spatial,
    frame_features,
    frame_tokens,
    interpolate_temporal_pos_embed,
    resolve_model_name,
    tokens_per_frame,
)

TINY = dict(img_size=32, patch_size=8, spatial_depth=2, temporal_depth=2, num_classes=5)


def test_aliases_resolve_and_unknown_is_named_error():
    assert resolve_model_name("vit-g") == "vit_giant_patch14_clip_224.laion2b"
    assert resolve_model_name("vit_small_patch16_224") == "vit_small_patch16_224.augreg_in21k_ft_in1k"
    with pytest.raises(SpatialModelError, match="unknown spatial model 'vit_nonexistent_patch99'"):
        resolve_model_name("vit_nonexistent_patch99")


def test_vit_g_alias_is_1408_wide():
    with torch.device("meta"):
        model = create_spatial("vit-g")
    assert model.embed_dim == 1408 and len(model.blocks) == 40


@pytest.mark.parametrize("kind,k", [("cls", 1), ("cls+mean", 2), ("all", 17)])
def test_frame_tokens_match_direct_timm_forward(kind, k):
    torch.manual_seed(0)
    spatial = create_spatial("vit-ti", img_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(3, 3, 32, 32)
    direct = spatial.forward_features(x)  # [3, 17, 192]
    tokens = frame_tokens(spatial, x, kind)
    assert tokens.shape == (3, k, 192) and tokens_per_frame(spatial, kind) == k
    torch.testing.assert_close(tokens[:, 0], direct[:, 0])
    if kind == "cls+mean":
        torch.testing.assert_close(tokens[:, 1], direct[:, 1:].mean(1))
    if kind == "all":
        torch.testing.assert_close(tokens, direct)


def test_frame_features_from_all_equals_from_cls_mean():
    tokens = torch.randn(4, 17, 8, generator=torch.Generator().manual_seed(0))
    stored = torch.stack([tokens[:, 0], tokens[:, 1:].mean(1)], 1)
    torch.testing.assert_close(frame_features(tokens, "all", "cls+mean"), frame_features(stored, "cls+mean", "cls+mean"))
    assert frame_features(tokens, "all", "cls").shape == (4, 8)
    with pytest.raises(TokenKindError):
        frame_features(tokens[:, :1], "cls", "cls+mean")


def test_vivit_forward_on_pixels_and_on_frame_features_agree():
    torch.manual_seed(0)
    model = build_vivit(ModelConfig(**TINY)).eval()
    video = torch.randn(2, 8, 3, 32, 32)  # [B, T, C, H, W]
    logits = model(video)
    assert logits.shape == (2, 5)
    feats = model.frame_features(video)  # [B, T, D]
    assert feats.shape == (2, 8, 192)
    torch.testing.assert_close(model(feats), logits)
    torch.testing.assert_close(model.forward_head(model.forward_features(video)), logits)


def test_cls_mean_frame_token_doubles_feature_width():
    model = build_vivit(ModelConfig(**TINY, frame_token="cls+mean")).eval()
    assert model.frame_features(torch.randn(1, 8, 3, 32, 32)).shape == (1, 8, 384)
    assert model(torch.randn(1, 8, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_adapter_starts_as_identity_and_can_learn(kind):
    adapter = build_adapter(kind, 16)
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adapter(x), x)  # exact by construction: the zero-initialised output adds 0
    adapter(x).pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())


def test_unknown_adapter_is_named():
    with pytest.raises(ValueError, match="unknown adapter 'big'"):
        build_adapter("big", 8)


def test_pos_embed_interpolation_identity_at_equal_length():
    pe = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(interpolate_temporal_pos_embed(pe, 8), pe)


@pytest.mark.parametrize("new_t", [15, 29, 128])
def test_pos_embed_interpolation_is_piecewise_linear_through_the_knots(new_t):
    pe = torch.randn(1, 9, 4, generator=torch.Generator().manual_seed(0))  # CLS + 8 frames
    out = interpolate_temporal_pos_embed(pe, new_t)
    assert out.shape == (1, 1 + new_t, 4)
    torch.testing.assert_close(out[:, 0], pe[:, 0])  # CLS position kept
    t_old = torch.linspace(0, 1, 8)
    for j, t in enumerate(torch.linspace(0, 1, new_t)):  # expected: linear between neighbouring knots
        i = min(int(t * 7), 6)
        w = (t - t_old[i]) / (t_old[i + 1] - t_old[i])
        # another formula than F.interpolate's (other roundings): a few float32 ulps of values of size ~1
        torch.testing.assert_close(out[0, 1 + j], (1 - w) * pe[0, 1 + i] + w * pe[0, 2 + i], atol=1e-5, rtol=1e-5)
    if (new_t - 1) % 7 == 0:  # knots land on new positions exactly
        torch.testing.assert_close(out[:, 1 :: (new_t - 1) // 7], pe[:, 1:])


def test_resize_frames_keeps_function_at_equal_length_and_runs_longer():
    torch.manual_seed(0)
    model = build_vivit(ModelConfig(**TINY), with_spatial=False, spatial_dim=192).eval()
    feats = torch.randn(2, 8, 192)
    before = model(feats)
    model.resize_frames(8)
    torch.testing.assert_close(model(feats), before)
    model.resize_frames(128)
    assert model(torch.randn(2, 128, 192)).shape == (2, 5)
    with pytest.raises(ValueError, match="built for 128 frames got 8"):
        model(feats)


def test_local_weights_load_and_hash(tmp_path):
    torch.manual_seed(1)
    source = create_spatial("vit-ti", img_size=32, patch_size=8, depth=2)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    torch.manual_seed(2)
    loaded = create_spatial("vit-ti", img_size=32, patch_size=8, depth=2, weights=path)
    assert state_dict_sha256(loaded) == state_dict_sha256(source)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(3)
    assert state_dict_sha256(create_spatial("vit-ti", img_size=32, patch_size=8, depth=2, weights=tmp_path / "w.pth")) == (
        state_dict_sha256(source)
    )


def test_half_precision_weights_load_into_an_fp32_model_without_random_init(tmp_path):
    torch.manual_seed(1)
    source = create_spatial("vit-ti", img_size=32, patch_size=8, depth=2)
    path = tmp_path / "w16.safetensors"
    save_file({k: v.half().contiguous() for k, v in source.state_dict().items()}, path)
    rng_before = torch.random.get_rng_state()
    loaded = create_spatial("vit-ti", img_size=32, patch_size=8, depth=2, weights=path)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # built on meta: no init drew random numbers
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == torch.float32 and not tensor.is_meta, name
        torch.testing.assert_close(tensor, source.state_dict()[name].half().float())
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.1.")}
    save_file({k: v.contiguous() for k, v in partial.items()}, tmp_path / "partial.safetensors")
    with pytest.raises(SpatialModelError, match="missing"):
        create_spatial("vit-ti", img_size=32, patch_size=8, depth=2, weights=tmp_path / "partial.safetensors")


def test_bad_weights_are_named_errors(tmp_path):
    with pytest.raises(SpatialModelError, match="not found"):
        create_spatial("vit-ti", img_size=32, patch_size=8, depth=2, weights=tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(SpatialModelError, match="cannot read weights"):
        create_spatial("vit-ti", img_size=32, patch_size=8, depth=2, weights=junk)
    other = create_spatial("vit-s", img_size=32, patch_size=8, depth=2)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "small.safetensors")
    with pytest.raises(SpatialModelError, match="do not fit vit_tiny_patch16_224"):
        create_spatial("vit-ti", img_size=32, patch_size=8, depth=2, weights=tmp_path / "small.safetensors")
