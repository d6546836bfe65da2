"""The hashed train/val split, one rule for stage 1 (annotations without a split column) and stage 2 (store videos).

Per class, the round(val_fraction·n) ids with the smallest sha256(f"{seed}/{id}") validate: deterministic,
independent of row order, stratified by class. Given stage 1's seed and fraction, stage 2 holds out exactly the
videos stage 1 held out, since store ids are the annotation ids.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Iterable


def hashed_val_ids(items: Iterable[tuple[str, Hashable]], val_fraction: float, seed: int) -> set[str]:
    """The validation ids among (id, class) pairs."""
    by_class: dict[Hashable, list[str]] = defaultdict(list)
    for video_id, cls in items:
        by_class[cls].append(video_id)
    val: set[str] = set()
    for ids in by_class.values():
        ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}/{i}".encode()).hexdigest())
        val.update(ranked[: round(val_fraction * len(ranked))])
    return val
