"""The attentive adapter (`--adapter attn`): per frame, one query cross-attends over the frame's K stored tokens.

    tokens [B, T, K·D] ─ view [B·T, K, D] ─ LN + layer and cell embeddings ─► keys, values
    query: the frame's pooled token (LN) or a learned vector ─ cross-attention ─ proj (zero init) ─► + pooled token
    ─ post adapter (mlp, linear or none: the one-token adapter, a stage-1 run's own with `--init`) ─► [B, T, D]

The stored tokens arrive flattened (`models.tokens.ALL_TOKENS`), so every reader keeps handling [n, Din]. The first
stored token is the pooled token of the last block (`models.tokens`), and the output starts as exactly that token
through the post adapter: `proj` is zero-initialised, so at step 0 the model is the pooled-token model, and an
`--init` stage-1 run keeps its function. Hand-written rather than timm's `AttentionPoolLatent`: that one has only
a learned latent query and no zero-initialised residual around the attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from vivitcache.models.adapter import build_adapter

QUERIES = ("pooled", "learned")


class AttnAdapter(nn.Module):
    """K tokens per frame → one vector per frame: the pooled token plus a zero-initialised cross-attention readout."""

    def __init__(self, dim: int, tokens_per_frame: int, layers: int = 1, query: str = "pooled", post: str = "mlp",
                 post_ratio: float = 0.5, num_heads: int | None = None):
        super().__init__()
        assert query in QUERIES, f"attn query {query!r}: use one of {', '.join(QUERIES)}"
        assert tokens_per_frame % layers == 0, f"{tokens_per_frame} tokens per frame do not split into {layers} blocks"
        self.dim, self.tokens_per_frame = dim, tokens_per_frame
        self.num_heads = num_heads or max(1, dim // 64)
        assert dim % self.num_heads == 0, f"width {dim} does not split into {self.num_heads} heads"
        # named *pos_embed so the optimiser does not decay them (training/schedule.py), like position embeddings
        self.layer_pos_embed = nn.Parameter(torch.zeros(layers, 1, dim))  # one per block
        self.cell_pos_embed = nn.Parameter(torch.zeros(1, tokens_per_frame // layers, dim))  # pooled, then grid cells
        trunc_normal_(self.layer_pos_embed, std=0.02)
        trunc_normal_(self.cell_pos_embed, std=0.02)
        self.query = nn.Parameter(torch.zeros(1, 1, dim)) if query == "learned" else None
        if self.query is not None:
            trunc_normal_(self.query, std=0.02)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.post = build_adapter(post, dim, post_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, K·D]
        B, T, _ = x.shape
        K, D, H = self.tokens_per_frame, self.dim, self.num_heads
        tokens = x.reshape(B * T, K, D)  # [N, K, D], N = B·T
        pooled = tokens[:, 0]  # [N, D]
        embed = (self.layer_pos_embed + self.cell_pos_embed).reshape(1, K, D)  # [1, K, D], block-major as stored
        kv = self.kv(self.norm_kv(tokens) + embed)  # [N, K, 2D]
        k, v = kv.view(B * T, K, 2, H, D // H).permute(2, 0, 3, 1, 4)  # each [N, H, K, D/H]
        q_in = self.norm_q(pooled)[:, None] if self.query is None else self.query.expand(B * T, -1, -1)  # [N, 1, D]
        q = self.q(q_in).view(B * T, 1, H, D // H).transpose(1, 2)  # [N, H, 1, D/H]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B * T, D)  # [N, D]
        return self.post((pooled + self.proj(out)).view(B, T, D))  # [B, T, D]
