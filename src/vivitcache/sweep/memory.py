"""Does a group of sweep configs fit the device's memory? Checked before the first step.

An estimate, written by hand because torch has no planner for "N models trained one after another on one batch":
each config keeps its fp32 weights, and for what trains a gradient and AdamW's two moments (16 bytes a trainable
parameter, 4 a frozen one) for the whole run. Activations live for one config's forward and backward at a time
(configs step one after another), so only the largest counts: per temporal block about 16 saved [L, W] fp32 maps
(norms, q/k/v, attention output, MLP hidden 4W and its GELU) plus the attention matrix and its softmax, for the
micro-batch; the input and adapter add a few [T, Din] maps. Free memory is what the device reports now: CUDA's
`mem_get_info`, or the kernel's MemAvailable on the CPU, with 10 % kept back.
"""

from __future__ import annotations

import torch

from vivitcache.errors import ConfigError

HEADROOM = 0.9
"""Fraction of the free memory a sweep may use."""


def state_bytes(model: torch.nn.Module) -> int:
    """Weights + gradients + AdamW moments of a model, fp32, for the run."""
    return sum(p.numel() * (16 if p.requires_grad else 4) for p in model.parameters())


def activation_bytes(model: torch.nn.Module, micro: int, frame_values: int) -> int:
    """Activations saved for backward by one micro-batch of `micro` clips; `frame_values`: numbers per frame in."""
    cfg = model.cfg
    width = model.head[-1].in_features
    heads = cfg.temporal_heads or max(1, width // 64)
    length = cfg.num_frames + 1  # frames + the CLS position
    per_block = length * width * 16 + heads * length * length * 2
    return 4 * micro * (cfg.temporal_depth * per_block + 6 * cfg.num_frames * frame_values)


def free_bytes(device: torch.device) -> int:
    """Memory free on `device` now."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def check_fits(models: list[torch.nn.Module], micro: int, frame_values: int, device: torch.device,
               free: int | None = None) -> int:
    """The estimated bytes of training `models` side by side; ConfigError naming how many fit when not all do."""
    free = free_bytes(device) if free is None else free
    budget = int(free * HEADROOM)
    states = [state_bytes(m) for m in models]
    acts = [activation_bytes(m, micro, frame_values) for m in models]
    need = sum(states) + max(acts)
    if need <= budget:
        return need
    fit = 0
    while fit < len(models) and sum(states[:fit + 1]) + max(acts[:fit + 1]) <= budget:
        fit += 1
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    raise ConfigError(
        f"{len(models)} configs need about {gib(need)} on {device} and {gib(free)} is free: {fit} fit "
        f"(sweep fewer values at a time, or a smaller --batch-size)")
