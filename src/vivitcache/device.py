"""Which device and precision a command runs on: `resolve_device` (`--device`) and bf16 autocast (`--precision`);
used by extraction and both training stages."""

from __future__ import annotations

import contextlib

import torch

from vivitcache.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → cuda when available, else cpu; `cuda` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: torch sees no CUDA device (use --device cpu or auto)")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting: `auto` is bf16 on CUDA with bf16 support, fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    raise ConfigError(f"--precision {precision}: use auto, bf16 or fp32")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype`, or a no-op when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
