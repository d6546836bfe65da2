"""Zarr v3 token store: the only contract between extraction and stage-2 training.

It stores arrays and metadata and knows nothing about models or video decoding. See `layout.py` for the on-disk
layout and `writer.py` for the commit protocol that makes it safe under many concurrent writers.
"""

from vivitcache.store.fingerprint import FingerprintMismatchError, check_fingerprint, fingerprint_diff
from vivitcache.store.inspect import (
    bytes_per_frame,
    estimate_store_bytes,
    find_damage,
    format_bytes,
    store_info,
    verify_store,
)
from vivitcache.store.layout import StoreDamageError, StoreError, StoreLayout
from vivitcache.store.reader import TokenStore
from vivitcache.store.writer import Part, PartWriter, StoreWriter, plan_parts, shard_frames_for

__all__ = [
    "FingerprintMismatchError",
    "Part",
    "PartWriter",
    "StoreDamageError",
    "StoreError",
    "StoreLayout",
    "StoreWriter",
    "TokenStore",
    "bytes_per_frame",
    "check_fingerprint",
    "estimate_store_bytes",
    "fingerprint_diff",
    "find_damage",
    "format_bytes",
    "plan_parts",
    "shard_frames_for",
    "store_info",
    "verify_store",
]
