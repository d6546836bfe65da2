"""Throughput switches of a worker: `--batch-size auto` (the largest batch that fits, found once) and `--compile`.

- auto batch size: on a GPU, powers of two from 32 up to `AUTO_MAX` are run once each through the real encoder
  (staging, normalisation, model, copy back) until one runs out of memory; the largest that ran is used. Found
  once per worker process and model (`runner` caches it), so every part of a worker uses the same batches. On a CPU
  larger batches do not run faster, and `CPU_BATCH` is used.
- compile: `torch.compile` of the spatial model's `forward_features` and `forward_head` (what the token rule calls;
  compiling `forward` would leave them eager), static shapes: the pipeline pads every batch to one size
  (`PartSettings.pad_batches`), so it compiles once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

CPU_BATCH = 32
"""Batch size of `auto` on a CPU."""
AUTO_MIN, AUTO_MAX = 32, 512
"""Range of `auto` on a GPU (powers of two); above 512 frames a ViT batch gains nothing measurable."""


def largest_batch(runs: Callable[[int], None], smallest: int = AUTO_MIN, largest: int = AUTO_MAX) -> int:
    """The largest power of two in [smallest, largest] for which `runs(batch)` does not run out of device memory.

    `runs(b)` raises torch.OutOfMemoryError when b does not fit; `smallest` is returned even if it does not
    (the real run then fails with the real error, rather than here with a guess).
    """
    best, b = smallest, smallest
    while b <= largest:
        try:
            runs(b)
        except torch.OutOfMemoryError:
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next try, and the real run, start from a clean cache
        best, b = b, b * 2
    return best


def probe_batch_size(encoder_for: Callable[[int], Callable], size: int, device: torch.device) -> int:
    """`auto` for one worker: `CPU_BATCH` on a CPU; on a GPU the largest batch that the whole encoder path
    (`encoder_for(batch)`, a `pipeline.DeviceEncoder`, eager: before any compile) runs on blank frames."""
    if device.type != "cuda":
        return CPU_BATCH

    def runs(b: int) -> None:
        _, ready = encoder_for(b)([torch.zeros((b, size, size, 3), dtype=torch.uint8)])  # [b, S, S, 3]
        ready()

    return largest_batch(runs)


def compile_spatial(model: nn.Module) -> nn.Module:
    """Compile, in place, what the token rule calls (`forward_features`, `forward_head`); returns the model."""
    for name in ("forward_features", "forward_head"):
        if hasattr(model, name):
            setattr(model, name, torch.compile(getattr(model, name), dynamic=False))
    return model
