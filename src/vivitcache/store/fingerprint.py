"""Fingerprints: what made a store (model, weights sha256, preprocessing, sampling, tokens, dtype, schema, ...).

A fingerprint is a plain JSON dict built by the caller. Two fingerprints agree when their canonical JSON agrees
(sorted keys, tuples as lists, floats as given), compared key by key; nested dicts are compared per dotted key so a
message says `preprocess.size` rather than dumping both dicts.
"""

from __future__ import annotations

import json

from vivitcache.store.layout import StoreError

MISSING = "<missing>"
"""Shown in a diff for a key one side does not have."""


class FingerprintMismatchError(StoreError, ValueError):
    """Two fingerprints differ; the one-line message lists every differing key with both values."""

    def __init__(self, diff: dict, context: str = "fingerprint mismatch", left: str = "expected", right: str = "got",
                 hint: str = ""):
        self.diff = diff
        parts = [f"{key}: {left} {_show(a)}, {right} {_show(b)}" for key, (a, b) in diff.items()]
        super().__init__(f"{context}: " + "; ".join(parts) + (f" ({hint})" if hint else ""))


def canonical_json(value, what: str = "fingerprint") -> str:
    """JSON with sorted keys and no whitespace; StoreError naming `what` if `value` is not JSON data."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} is not plain JSON data: {e}") from None


def _show(value) -> str:
    if value is MISSING:
        return MISSING
    text = canonical_json(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flatten(value, prefix: str, out: dict) -> dict:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _flatten(sub, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def fingerprint_diff(a: dict, b: dict, keys=None) -> dict:
    """{dotted key: (value in a, value in b)} for every key whose canonical JSON differs (MISSING when absent).

    `keys` limits the comparison to these top-level keys.
    """
    if keys is not None:
        a = {k: a[k] for k in keys if k in a}
        b = {k: b[k] for k in keys if k in b}
    flat_a, flat_b = _flatten(a, "", {}), _flatten(b, "", {})
    diff = {}
    for key in sorted(set(flat_a) | set(flat_b)):
        va, vb = flat_a.get(key, MISSING), flat_b.get(key, MISSING)
        if va is MISSING or vb is MISSING or canonical_json(va) != canonical_json(vb):
            diff[key] = (va, vb)
    return diff


def check_fingerprint(expected: dict, actual: dict, keys=None) -> None:
    """Raise FingerprintMismatchError if `actual` differs from `expected` (on `keys` only, when given)."""
    diff = fingerprint_diff(expected, actual, keys)
    if diff:
        raise FingerprintMismatchError(diff)
