"""The ViViT factorised encoder (scenic's `ViViTFactorisedEncoder`, tubelet depth 1) as one module, shaped like timm's.

    video [B, T, C, H, W] ─ spatial per frame ─► frame features [B, T, Din] ─ adapter ─ temporal ─► clip [B, D] ─ head

(the `attn` adapter takes every stored token of a frame, Din = K·D, and gives one D-vector per frame)

`forward_features` takes either pixels [B, T, C, H, W] (stage 1, predict on the fly) or frame features [B, T, Din]
(stage 2 on cached tokens, built without its spatial model) and returns the clip feature; `forward_head` gives the
logits. One `forward` for both inputs, because DistributedDataParallel synchronises gradients through `forward` only.
The final LayerNorm lives at the end of the temporal transformer (as timm's `forward_features`), the head itself is
dropout + linear.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from vivitcache.config import ModelConfig
from vivitcache.models.adapter import build_adapter
from vivitcache.models.attn_adapter import AttnAdapter
from vivitcache.models.spatial import create_spatial
from vivitcache.models.tokens import check_token_kind, frame_feature_dim, frame_features, frame_tokens
from vivitcache.models.temporal import TemporalTransformer

PARTS = ("spatial", "adapter", "temporal", "head")


class ViViT(nn.Module):
    """Spatial ViT (optional: stage 2 runs without it) → adapter → temporal transformer → head."""

    def __init__(self, cfg: ModelConfig, spatial: nn.Module | None, spatial_dim: int):
        super().__init__()
        if spatial is not None:
            assert cfg.adapter != "attn", "the attn adapter takes stored tokens (stage 2), not pixels"
            check_token_kind(spatial, cfg.frame_token)  # e.g. `cls` on a model without a class token
        self.cfg = cfg
        self.spatial = spatial
        if cfg.adapter == "attn":  # [B, T, K·D] → [B, T, D]
            in_dim = spatial_dim
            self.adapter = AttnAdapter(spatial_dim, cfg.tokens_per_frame, cfg.token_layers, cfg.attn_query,
                                       cfg.attn_post, cfg.adapter_ratio)
        else:
            in_dim = frame_feature_dim(spatial_dim, cfg.frame_token)
            self.adapter = build_adapter(cfg.adapter, in_dim, cfg.adapter_ratio)
        dim = cfg.temporal_dim or in_dim
        heads = cfg.temporal_heads or max(1, dim // 64)
        self.temporal = TemporalTransformer(
            in_dim, dim, cfg.temporal_depth, heads, cfg.num_frames, cfg.drop_rate, cfg.drop_path_rate
        )
        self.head = nn.Sequential(nn.Dropout(cfg.drop_rate), nn.Linear(dim, cfg.num_classes))

    def frame_features(self, video):  # video: [B, T, C, H, W]
        """The per-frame features the temporal stage sees, through the one token rule (`models.tokens`)."""
        B, T = video.shape[:2]
        kind = self.cfg.frame_token  # stored kind = frame token: the features are taken as they are
        tokens = frame_tokens(self.spatial, video.flatten(0, 1), kind)  # [B·T, K, D]
        return frame_features(tokens, kind, kind).view(B, T, -1)  # [B, T, Din]

    def forward_features(self, x):  # x: pixels [B, T, C, H, W] or frame features [B, T, Din]
        if x.ndim == 5:
            assert self.spatial is not None, "a ViViT built without its spatial model takes frame features [B, T, Din]"
            x = self.frame_features(x)  # [B, T, Din]
        return self.temporal(self.adapter(x))  # [B, D]

    def forward_head(self, x, pre_logits: bool = False):  # x: [B, D]
        return x if pre_logits else self.head(x)  # [B, D] or [B, classes]

    def forward(self, x):  # x: [B, T, C, H, W] or [B, T, Din]
        return self.forward_head(self.forward_features(x))  # [B, classes]

    def resize_frames(self, num_frames: int) -> None:
        """Set T, interpolating the temporal position embeddings (the config is replaced, never mutated: callers
        may share it)."""
        self.temporal.resize_frames(num_frames)
        self.cfg = dataclasses.replace(self.cfg, num_frames=num_frames)


def build_vivit(cfg: ModelConfig, with_spatial: bool = True, spatial_dim: int | None = None) -> ViViT:
    """Build a ViViT from its config; without the spatial ViT (stage 2 on tokens) `spatial_dim` must be given."""
    if with_spatial:
        spatial = create_spatial(cfg.spatial, cfg.img_size, cfg.patch_size, cfg.spatial_depth, cfg.weights, cfg.pretrained)
        return ViViT(cfg, spatial, spatial.embed_dim)
    if spatial_dim is None:
        raise ValueError("spatial_dim is needed to build a ViViT without its spatial ViT")
    return ViViT(cfg, None, spatial_dim)


def part_state(model: ViViT, parts=PARTS) -> dict:
    """The state dict of the named parts, keys prefixed by part (`spatial.…`, `adapter.…`, …)."""
    return {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in parts}
