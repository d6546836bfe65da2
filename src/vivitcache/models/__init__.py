"""Models: the spatial backbone (any timm ViT-family model), the token rules, the adapter, the temporal
transformer, and the ViViT that composes them."""

from vivitcache.models.adapter import build_adapter
from vivitcache.models.spatial import (
    SPATIAL_ALIASES,
    SpatialModelError,
    SpatialSpec,
    create_spatial,
    resolve_model_name,
)
from vivitcache.models.temporal import TemporalTransformer, interpolate_temporal_pos_embed
from vivitcache.models.tokens import (
    FRAME_TOKENS,
    TokenKindError,
    frame_feature_dim,
    frame_features,
    frame_tokens,
    has_class_token,
    tokens_per_frame,
)
from vivitcache.models.vivit import PARTS, ViViT, build_vivit, part_state

__all__ = [
    "FRAME_TOKENS",
    "PARTS",
    "SPATIAL_ALIASES",
    "SpatialModelError",
    "SpatialSpec",
    "TemporalTransformer",
    "TokenKindError",
    "ViViT",
    "build_adapter",
    "build_vivit",
    "create_spatial",
    "frame_feature_dim",
    "frame_features",
    "frame_tokens",
    "has_class_token",
    "interpolate_temporal_pos_embed",
    "part_state",
    "resolve_model_name",
    "tokens_per_frame",
]
