"""The spatial ViT: a timm ViT run on every frame, and the per-frame tokens taken from it.

Weights only ever come from a local file (`--weights PATH`): there is no model hub on the machines we target.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

# Short names for the ViT family of the paper and timm's names for them.
SPATIAL_ALIASES: dict[str, str] = {
    "vit-ti": "vit_tiny_patch16_224",
    "vit-s": "vit_small_patch16_224",
    "vit-b": "vit_base_patch16_224",
    "vit-l": "vit_large_patch16_224",
    "vit-h": "vit_huge_patch14_224",
    "vit-g": "vit_giant_patch14_224",  # D=1408, 40 blocks
}

TOKEN_KINDS = ("cls", "cls+mean", "all")


class SpatialModelError(ValueError):
    """A spatial model name, override or weights file that cannot be used."""


def resolve_model_name(name: str) -> str:
    """Alias or timm name → timm name; refuses names that are not timm vision transformers."""
    timm_name = SPATIAL_ALIASES.get(name, name)
    if timm_name not in timm.list_models("vit_*") and timm_name not in timm.list_models("deit*"):
        raise SpatialModelError(
            f"unknown spatial model {name!r}: use one of {', '.join(SPATIAL_ALIASES)} or a timm ViT name "
            "(see timm.list_models('vit_*'))"
        )
    return timm_name


def create_spatial(
    name: str,
    img_size: int | None = None,
    patch_size: int | None = None,
    depth: int | None = None,
    weights: str | Path | None = None,
) -> nn.Module:
    """A timm ViT without classifier head; random init (under torch's seed) unless `weights` is a local file."""
    kwargs: dict = {"num_classes": 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    if depth is not None:
        kwargs["depth"] = depth
    timm_name = resolve_model_name(name)
    if weights is None:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    # built on the meta device and filled by assignment: no random init of weights that are overwritten anyway
    # (seconds to minutes for ViT-g on CPU)
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    load_spatial_weights(model, weights, assign=True)
    return model


def load_spatial_weights(model: nn.Module, path: str | Path, assign: bool = False) -> None:
    """Load a safetensors file or a timm/torch checkpoint into `model`, resampling position embeddings if needed.

    Uses timm's own reader (safetensors or torch, EMA-aware) and its `checkpoint_filter_fn`, which resamples
    patch/position embeddings when the image size differs; head keys are dropped (the spatial model has none).
    """
    path = Path(path)
    if not path.is_file():
        raise SpatialModelError(f"{path}: weights file not found")
    from timm.models._helpers import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # noqa: BLE001 — any reader error means the file is unusable
        raise SpatialModelError(f"{path}: cannot read weights ({e})") from e
    state = _strip_prefix(state)
    arch = model.default_cfg.get("architecture")
    try:
        state = checkpoint_filter_fn(state, model)
        own = model.state_dict()
        # in the model's dtype (fp16/bf16 files into an fp32 model): `assign` would otherwise keep the file's dtype
        state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False, assign=assign)
    except (RuntimeError, KeyError, ValueError) as e:  # shape mismatches: weights of another architecture
        first = str(e).strip().splitlines()[-1].strip()
        raise SpatialModelError(f"{path}: weights do not fit {arch} ({first})") from e
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing or unexpected or left_on_meta:
        missing = sorted(set(missing) | set(left_on_meta))
        raise SpatialModelError(
            f"{path}: weights do not fit {arch}: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a vivitcache stage-1 checkpoint's `spatial.` prefix and DDP's `module.` prefix."""
    for prefix in ("module.", "spatial."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def tokens_per_frame(spatial: nn.Module, kind: str) -> int:
    """K, the number of tokens stored per frame for a token kind."""
    if kind == "cls":
        return 1
    if kind == "cls+mean":
        return 2
    if kind == "all":
        return spatial.patch_embed.num_patches + spatial.num_prefix_tokens
    raise SpatialModelError(f"unknown token kind {kind!r}: use one of {', '.join(TOKEN_KINDS)}")


def frame_tokens(spatial: nn.Module, frames: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-frame tokens of the spatial ViT: frames [N, C, H, W] → [N, K, D] (K from `tokens_per_frame`)."""
    x = spatial.forward_features(frames)  # [N, P + L, D] with P prefix (CLS/register) tokens, final norm applied
    if kind == "cls":
        return x[:, :1]  # [N, 1, D]
    if kind == "cls+mean":
        patches = x[:, spatial.num_prefix_tokens:].mean(dim=1, keepdim=True)  # [N, 1, D]
        return torch.cat([x[:, :1], patches], dim=1)  # [N, 2, D]
    if kind == "all":
        return x  # [N, P + L, D]
    raise SpatialModelError(f"unknown token kind {kind!r}: use one of {', '.join(TOKEN_KINDS)}")


def frame_features(tokens: torch.Tensor, stored_kind: str, frame_token: str, num_prefix_tokens: int = 1) -> torch.Tensor:
    """The feature the temporal stage sees per frame, from stored tokens [..., K, D] → [..., D] or [..., 2D].

    `stored_kind` is how the tokens were stored (`cls`, `cls+mean`, `all`), `frame_token` what the model wants.
    """
    cls = tokens[..., 0, :]  # [..., D]
    if frame_token == "cls":
        return cls
    if frame_token != "cls+mean":
        raise SpatialModelError(f"unknown frame token {frame_token!r}: use cls or cls+mean")
    if stored_kind == "cls+mean":
        mean = tokens[..., 1, :]  # [..., D]
    elif stored_kind == "all":
        mean = tokens[..., num_prefix_tokens:, :].mean(dim=-2)  # [..., D]
    else:
        raise SpatialModelError(f"frame token cls+mean needs tokens stored as cls+mean or all, not {stored_kind!r}")
    return torch.cat([cls, mean], dim=-1)  # [..., 2D]


def frame_feature_dim(spatial_dim: int, frame_token: str) -> int:
    """Width of the per-frame feature for a spatial width D."""
    return spatial_dim * (2 if frame_token == "cls+mean" else 1)


def stored_kind_for(frame_token: str) -> str:
    """The smallest token kind a store needs for a model's frame token."""
    return "cls+mean" if frame_token == "cls+mean" else "cls"
