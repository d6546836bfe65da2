"""Identity of model weights, so a store made with one spatial model is never trained on with another."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_dict_sha256(state: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order.

    Hashing tensors rather than files makes the same weights hash equal whether they came from a safetensors
    file, a .pth, or a stage-1 checkpoint's `spatial.` part.
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
