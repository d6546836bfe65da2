"""Models: the spatial ViT (timm), the adapter, the temporal transformer, and the ViViT that composes them."""

from vivitcache.models.adapter import build_adapter
from vivitcache.models.spatial import (
    SPATIAL_ALIASES,
    SpatialModelError,
    create_spatial,
    frame_features,
    frame_tokens,
    resolve_model_name,
    tokens_per_frame,
)
from vivitcache.models.temporal import TemporalTransformer, interpolate_temporal_pos_embed
from vivitcache.models.vivit import PARTS, ViViT, build_vivit, part_state

__all__ = [
    "PARTS",
    "SPATIAL_ALIASES",
    "SpatialModelError",
    "TemporalTransformer",
    "ViViT",
    "build_adapter",
    "build_vivit",
    "create_spatial",
    "frame_features",
    "frame_tokens",
    "interpolate_temporal_pos_embed",
    "part_state",
    "resolve_model_name",
    "tokens_per_frame",
]
