"""Zarr v3 token store: the only contract between extraction and stage-2 training.

It stores arrays and metadata and knows nothing about models or video decoding. See `layout.py` for the on-disk
layout and `writer.py` for the commit protocol that makes it safe under many concurrent writers.

The public API is what this package exports: the reader (`TokenStore`), the writer (`StoreWriter`, `PartWriter`),
the layout (`StoreLayout`), the errors, and `store_info` / `verify_store`. Everything else is internal and imported
from its module. The names load on first use (PEP 562), so `store.layout` (token kinds, layout) is cheap to import.
"""

from vivitcache.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "TokenStore": "reader",
    "StoreWriter": "writer",
    "PartWriter": "writer",
    "StoreLayout": "layout",
    "StoreError": "layout",
    "StoreDamageError": "layout",
    "FingerprintMismatchError": "fingerprint",
    "store_info": "inspect",
    "verify_store": "inspect",
})
