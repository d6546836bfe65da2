"""Package exports that load on first use (PEP 562): light modules (configs, the store layout) stay importable
without the heavy ones (torch, zarr) their package also holds."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, where: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """(`__getattr__`, `__all__`) for `package`, exporting each name of `where` from its submodule."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__, sorted(where)
