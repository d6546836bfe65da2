"""The optimiser and LR schedule both stages train with: AdamW with per-group decay and spatial LR scale, and
linear warmup then cosine decay."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from vivitcache.config import OptimConfig


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases, position embeddings and CLS tokens (1-D or named); the spatial
    ViT's parameters (`spatial.*`) at `optim.spatial_lr_scale` × the LR (0: left out, i.e. frozen)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        name = name.removeprefix("module.")
        spatial = name.startswith("spatial.")
        if not p.requires_grad or (spatial and optim.spatial_lr_scale == 0):
            continue
        decays = not (p.ndim <= 1 or "pos_embed" in name or "cls_token" in name)
        groups.setdefault((spatial, decays), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": optim.weight_decay if decays else 0.0,
                "lr": optim.lr * (optim.spatial_lr_scale if spatial else 1.0),
            }
            for (spatial, decays), params in sorted(groups.items())
        ],
        lr=optim.lr,
        betas=(0.9, 0.999),
    )


def warmup_cosine(total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup from ~0, then cosine down to min_lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))) / lr

    return factor
