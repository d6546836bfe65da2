"""The adapter between the frozen spatial ViT and the temporal transformer (stage 2 of arXiv 2306.04822).

Kinds (a config choice, `ModelConfig.adapter`):
- `mlp`: x + W2·GELU(W1·LN(x)), output layer zero-initialised, so a fresh adapter is the identity and a
  stage-1 model keeps its function when an adapter is added. The default.
- `linear`: x + W·LN(x), zero-initialised as well.
- `none`: identity (the paper's "no adapter" ablation).
- `attn`: K stored tokens per frame → one vector, then one of the above (`models/attn_adapter.py`).
"""

from __future__ import annotations

from timm.layers import Mlp
from torch import nn

from vivitcache.config import ADAPTER_KINDS


class ResidualAdapter(nn.Module):
    """Pre-norm residual adapter; its last layer starts at zero so it starts as the identity."""

    def __init__(self, dim: int, hidden_ratio: float = 0.5, kind: str = "mlp"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        if kind == "mlp":
            self.body = Mlp(dim, hidden_features=max(1, int(dim * hidden_ratio)), out_features=dim)
            last = self.body.fc2
        else:
            self.body = nn.Linear(dim, dim)
            last = self.body
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x):  # x: [B, T, D]
        return x + self.body(self.norm(x))  # [B, T, D]


def build_adapter(kind: str, dim: int, hidden_ratio: float = 0.5) -> nn.Module:
    """An adapter of `kind` for features of width `dim`."""
    if kind == "none":
        return nn.Identity()
    if kind in ("mlp", "linear"):
        return ResidualAdapter(dim, hidden_ratio, kind)
    raise ValueError(f"unknown adapter {kind!r}: use one of {', '.join(ADAPTER_KINDS[:-1])} (attn: build_vivit)")
