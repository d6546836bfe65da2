"""The ViViT factorised encoder (scenic's `ViViTFactorisedEncoder`, tubelet depth 1) as one module.

    video [B, T, C, H, W] ─ spatial ViT per frame ─► frame features [B, T, Din] ─ adapter ─ temporal ─ head ─► logits

`forward` runs the whole model on pixels (stage 1, predict); `forward_tokens` starts from frame features, so stage 2
trains on cached tokens with exactly the same adapter/temporal/head modules. The final LayerNorm of the head lives
at the end of the temporal transformer (as timm's `forward_features`), the head itself is dropout + linear.
"""

from __future__ import annotations

from torch import nn

from vivitcache.config import ModelConfig
from vivitcache.models.adapter import build_adapter
from vivitcache.models.spatial import create_spatial, frame_feature_dim, frame_features, frame_tokens, stored_kind_for
from vivitcache.models.temporal import TemporalTransformer

PARTS = ("spatial", "adapter", "temporal", "head")


class ViViT(nn.Module):
    """Spatial ViT (optional: stage 2 runs without it) → adapter → temporal transformer → head."""

    def __init__(self, cfg: ModelConfig, spatial: nn.Module | None, spatial_dim: int):
        super().__init__()
        self.cfg = cfg
        self.spatial = spatial
        in_dim = frame_feature_dim(spatial_dim, cfg.frame_token)
        dim = cfg.temporal_dim or in_dim
        heads = cfg.temporal_heads or max(1, dim // 64)
        self.adapter = build_adapter(cfg.adapter, in_dim, cfg.adapter_ratio)
        self.temporal = TemporalTransformer(
            in_dim, dim, cfg.temporal_depth, heads, cfg.num_frames, cfg.drop_rate, cfg.drop_path_rate
        )
        self.head = nn.Sequential(nn.Dropout(cfg.drop_rate), nn.Linear(dim, cfg.num_classes))

    def frame_features(self, video):  # video: [B, T, C, H, W]
        B, T = video.shape[:2]
        kind = stored_kind_for(self.cfg.frame_token)
        tokens = frame_tokens(self.spatial, video.flatten(0, 1), kind)  # [B·T, K, D]
        feats = frame_features(tokens, kind, self.cfg.frame_token)  # [B·T, Din]
        return feats.view(B, T, -1)  # [B, T, Din]

    def forward(self, video):  # video: [B, T, C, H, W]
        return self.forward_tokens(self.frame_features(video))  # [B, classes]

    def forward_tokens(self, feats):  # feats: [B, T, Din]
        x = self.adapter(feats)  # [B, T, Din]
        return self.head(self.temporal(x))  # [B, classes]

    def resize_frames(self, num_frames: int) -> None:
        """Set T, interpolating the temporal position embeddings."""
        self.temporal.resize_frames(num_frames)
        self.cfg.num_frames = num_frames


def build_vivit(cfg: ModelConfig, with_spatial: bool = True, spatial_dim: int | None = None) -> ViViT:
    """Build a ViViT from its config; without the spatial ViT (stage 2 on tokens) `spatial_dim` must be given."""
    if with_spatial:
        spatial = create_spatial(cfg.spatial, cfg.img_size, cfg.patch_size, cfg.spatial_depth, cfg.weights)
        return ViViT(cfg, spatial, spatial.embed_dim)
    if spatial_dim is None:
        raise ValueError("spatial_dim is needed to build a ViViT without its spatial ViT")
    return ViViT(cfg, None, spatial_dim)


def part_state(model: ViViT, parts=PARTS) -> dict:
    """The state dict of the named parts, keys prefixed by part (`spatial.…`, `adapter.…`, …)."""
    return {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in parts}
