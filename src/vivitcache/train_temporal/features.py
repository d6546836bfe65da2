"""`FeatureRule`: how a store's tokens become the frame features the temporal stage sees, and in which dtype.

The temporal stage sees one feature per frame (`models.tokens.frame_features`: the pooled embedding or class token,
alone or with the mean patch token). Features keep the store's float16 when they are the stored values unchanged
(fp16 store, feature = stored token), else float32 (bf16 stores; a mean over patch tokens is computed in float32).
Every reader (`batches.py`; the per-clip reference readers of the tests) uses this one rule, so streamed and
in-memory training see bit-identical inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vivitcache.models.tokens import frame_feature_dim, frame_features, needs_arithmetic, token_info
from vivitcache.store import TokenStore


class FeatureRule:
    """How stored tokens [n, K, D] become frame features [n, Din] for one model, and in which dtype they are kept."""

    def __init__(self, store: TokenStore, frame_token: str):
        self.stored_kind = store.layout.tokens
        self.frame_token = frame_token
        self.num_prefix_tokens, self.class_token = token_info(store.fingerprint)
        self.dim = frame_feature_dim(store.layout.dim, frame_token, store.layout.tokens_per_frame)
        # the stored values themselves unless a mean over an `all` store's patches is computed (in float32)
        arithmetic = needs_arithmetic(self.stored_kind, frame_token)
        self.dtype = np.float16 if store.layout.dtype == "fp16" and not arithmetic else np.float32
        probe = torch.zeros(1, store.layout.tokens_per_frame, 1)
        frame_features(probe, self.stored_kind, frame_token, self.num_prefix_tokens, self.class_token)  # fail early
        self.passthrough = self._passes_through(store)

    def _passes_through(self, store: TokenStore) -> bool:
        """Whether a frame's features are its stored bytes as they are ([K, D] → [K·D], the same dtype): a reader
        may then read stored chunks straight into its feature buffers. Decided on a probe of distinct finite
        values, not on the kind names."""
        k, d = store.layout.tokens_per_frame, store.layout.dim
        if np.dtype(store.layout.numpy_dtype) != np.dtype(self.dtype) or self.dim != k * d:
            return False
        position = np.arange(2 * k * d)  # [2·K·D]; two probes of finite float16 bit patterns name each position
        for bits in ((position % 0x7C00).astype(np.uint16), (position // 0x7C00).astype(np.uint16)):
            probe = bits.view(np.float16).reshape(2, k, d)  # [2, K, D]
            if not np.array_equal(self(probe).view(np.uint16), bits.reshape(2, k * d)):
                return False
        return True

    def __call__(self, decoded: np.ndarray) -> np.ndarray:
        """Decoded tokens [n, K, D] → frame features [n, Din] in `self.dtype` (models.tokens.frame_features)."""
        tokens = torch.from_numpy(np.ascontiguousarray(decoded, dtype=self.dtype))  # [n, K, D]
        feats = frame_features(tokens, self.stored_kind, self.frame_token, self.num_prefix_tokens, self.class_token)  # [n, Din]
        return np.ascontiguousarray(feats.numpy())


class StoreReader:
    """A reader of one store's frame features that pickles as (store path, frame token, cache bytes) and reopens the
    store in the process that unpickles it (zarr v3 must not cross a fork; a DataLoader worker opens its own), with
    an empty cache. Subclasses open their store (`_store`) and cache in `_open`."""

    def __init__(self, store_path: str | Path, frame_token: str, cache_bytes: int = 512 * 2**20):
        self.store_path = Path(store_path)
        self.frame_token = frame_token
        self.cache_bytes = int(cache_bytes)
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def __getstate__(self):
        return {"store_path": self.store_path, "frame_token": self.frame_token, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    @property
    def store(self) -> TokenStore:
        return self._store
