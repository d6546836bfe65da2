"""The temporal transformer of the factorised encoder: frame features [B, T, D] → clip feature [B, D].

Follows scenic's ViViT factorised encoder: its own CLS token, learned 1-D position embeddings (CLS position
first), pre-norm transformer blocks (timm's `Block`, whose attention uses `F.scaled_dot_product_attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn


def interpolate_temporal_pos_embed(pos_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resample position embeddings [1, 1 + T_old, D] → [1, 1 + num_frames, D]; the CLS position is kept.

    Linear interpolation with aligned end points: the embedding is treated as a piecewise-linear function of
    normalised time t ∈ [0, 1] through the T_old knots, and sampled at num_frames equally spaced times. So equal
    length is the identity, and every old knot is kept exactly when num_frames = k·(T_old − 1) + 1.
    """
    cls_pos, frame_pos = pos_embed[:, :1], pos_embed[:, 1:]  # [1, 1, D], [1, T_old, D]
    if frame_pos.shape[1] == num_frames:
        return pos_embed.clone()
    if frame_pos.shape[1] == 1:
        resampled = frame_pos.expand(-1, num_frames, -1)  # [1, T, D]
    else:
        resampled = F.interpolate(
            frame_pos.transpose(1, 2), size=num_frames, mode="linear", align_corners=True
        ).transpose(1, 2)  # [1, T, D]
    return torch.cat([cls_pos, resampled], dim=1)  # [1, 1 + T, D]


TEMPORAL_POS_STD = 0.5  # init std of the temporal position embeddings (see TemporalTransformer.__init__)


class TemporalTransformer(nn.Module):
    """Transformer encoder over frame features with a CLS token; returns the normalised CLS feature."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        num_frames: int,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.num_frames = num_frames
        self.proj = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_frames, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(
            *[
                Block(dim, num_heads, qkv_bias=True, proj_drop=drop_rate, drop_path=r, norm_layer=nn.LayerNorm)
                for r in rates
            ]
        )
        self.norm = nn.LayerNorm(dim)
        # std 0.5, not ViT's 0.02: frame features arrive LayerNorm-ed (unit scale per channel), and with tiny
        # position embeddings the order of frames (left vs right motion) starts invisible; measured on the synth
        # dataset (8-frame stage 1, same steps): val top-1 31 % with 0.5 vs 19 % with 0.02
        trunc_normal_(self.pos_embed, std=TEMPORAL_POS_STD, a=-2 * TEMPORAL_POS_STD, b=2 * TEMPORAL_POS_STD)
        nn.init.normal_(self.cls_token, std=1e-6)

    def resize_frames(self, num_frames: int) -> None:
        """Change T, interpolating the position embeddings (stage 1's 8 → stage 2's 32/64/128)."""
        with torch.no_grad():
            self.pos_embed = nn.Parameter(interpolate_temporal_pos_embed(self.pos_embed.data, num_frames))
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, Din]
        B, T, _ = x.shape
        if T != self.num_frames:
            raise ValueError(f"temporal transformer built for {self.num_frames} frames got {T}")
        x = self.proj(x)  # [B, T, D]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos_embed  # [B, 1 + T, D]
        x = self.blocks(self.pos_drop(x))  # [B, 1 + T, D]
        return self.norm(x[:, 0])  # [B, D]
