"""Token values to stored values and back: float16 as is, bfloat16 as its uint16 bits (zarr has no bfloat16)."""

from __future__ import annotations

import numpy as np

from vivitcache.store.layout import StoreError


def _is_torch_tensor(x) -> bool:
    # Checked by module name so the store never imports torch just to read or write numpy arrays.
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits as uint16, rounding to nearest even (what `tensor.to(torch.bfloat16)` does).

    Hand-written because numpy has no bfloat16: add 0x7FFF plus the lowest kept bit, keep the high 16 bits.
    NaNs stay quiet NaNs with their sign.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits → float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode_tokens(tokens, dtype: str) -> np.ndarray:
    """A float numpy array or torch tensor → the stored array (`float16`, or `uint16` bfloat16 bits), C-contiguous.

    Raises StoreError for non-float input and for values that are not finite once stored (NaN/inf from the model,
    or fp16 overflow past 65504: store such a model's tokens as bf16).
    """
    if _is_torch_tensor(tokens):
        import torch

        t = tokens.detach().cpu()
        if t.dtype == torch.bfloat16 and dtype == "bf16":
            out = t.contiguous().view(torch.int16).numpy().view(np.uint16)  # exact: already bfloat16
            _check_finite(bf16_bits_to_float32(out), "bf16")
            return out
        if t.dtype == torch.float16 and dtype == "fp16":
            out = t.contiguous().numpy()
            _check_finite(out, "fp16")
            return out
        if not t.is_floating_point():
            raise StoreError(f"tokens must be floating point, got torch {t.dtype}")
        tokens = t.float().numpy()
    arr = np.asarray(tokens)
    if not np.issubdtype(arr.dtype, np.floating):
        raise StoreError(f"tokens must be floating point, got {arr.dtype}")
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(arr, dtype="<f2")
        _check_finite(out, "fp16", arr)
        return out
    if dtype == "bf16":
        out = float32_to_bf16_bits(arr.astype(np.float32, copy=False))
        _check_finite(bf16_bits_to_float32(out), "bf16")
        return out
    raise StoreError(f"unknown store dtype {dtype!r}")


def _check_finite(stored: np.ndarray, dtype: str, original: np.ndarray | None = None) -> None:
    if np.isfinite(stored).all():
        return
    source = stored if original is None else original
    if original is not None and np.isfinite(original).all():
        peak = float(np.abs(original).max())
        raise StoreError(f"tokens overflow {dtype} (max |value| {peak:.4g} > 65504): store this model as bf16")
    raise StoreError(f"tokens contain NaN or inf ({int((~np.isfinite(source)).sum())} values)")


def decode_tokens(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values → floats: identity for fp16 (float16), bfloat16 bits → float32 for bf16."""
    if dtype == "fp16":
        return raw
    if dtype == "bf16":
        return bf16_bits_to_float32(raw)
    raise StoreError(f"unknown store dtype {dtype!r}")
