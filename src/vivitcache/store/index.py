"""Finding the committed parts of a store: the commit records, from the consolidated index when it is fresh.

Committed parts never change (a part is published once, by rename), so a commit record read once stays true as long
as its folder is still there. The index (`index/zarr.json`, written by `write_index`) keeps every commit record plus
the mtime of `parts/` when it was made; an index is used only while `parts/` still has that mtime (no part was
added or removed since). Otherwise every `parts/<id>/zarr.json` is read (correct, just slower on a big store).
"""

from __future__ import annotations

import os
from pathlib import Path

from vivitcache.provenance import now_iso
from vivitcache.store.layout import (
    COMMIT_KEY,
    INDEX,
    INDEX_KEY,
    META,
    PART_ID_PATTERN,
    PARTS,
    StoreError,
    group_meta,
    read_group_attrs,
    write_json_atomic,
)

COMMIT_FIELDS = ("part_id", "videos", "failures", "frames", "bytes", "tokens_sha256")


def part_names(root: Path) -> list[str]:
    """Folder names under `parts/` that can be part ids, sorted."""
    try:
        names = os.listdir(root / PARTS)
    except FileNotFoundError:
        raise StoreError(f"{root}: no {PARTS}/ folder (not a vivitcache store?)") from None
    return sorted(n for n in names if PART_ID_PATTERN.match(n))


def read_commit(root: Path, part_id: str) -> dict:
    """The commit record of one part; StoreError if missing or malformed."""
    commit = read_group_attrs(root / PARTS / part_id, COMMIT_KEY)
    missing = [k for k in COMMIT_FIELDS if k not in commit]
    if missing:
        raise StoreError(f"{root / PARTS / part_id / META}: commit record lacks {', '.join(missing)}")
    if commit["part_id"] != part_id:
        raise StoreError(f"{root / PARTS / part_id / META}: commit record is for part {commit['part_id']!r}")
    if not isinstance(commit["videos"], list) or not isinstance(commit["failures"], list):
        raise StoreError(f"{root / PARTS / part_id / META}: commit record videos/failures are not lists")
    return commit


def _parts_mtime_ns(root: Path) -> int:
    return os.stat(root / PARTS).st_mtime_ns


def read_index(root: Path) -> dict | None:
    """The consolidated index, or None if absent or unreadable."""
    try:
        index = read_group_attrs(root / INDEX, INDEX_KEY)
    except StoreError:
        return None
    return index if isinstance(index.get("parts"), dict) else None


def read_commits(root: Path, strict: bool = True) -> tuple[dict[str, dict], list[str]]:
    """({part_id: commit record}, problems), using the index when it is fresh.

    strict: a part folder without a valid commit record raises StoreError (readers must not silently lose data);
    otherwise it is left out and described in `problems` (a writer then treats the part as not committed).
    """
    mtime = _parts_mtime_ns(root)
    names = part_names(root)
    index = read_index(root)
    cached = index["parts"] if index is not None and index.get("parts_mtime_ns") == mtime else {}
    commits, problems = {}, []
    for name in names:
        if name in cached:
            commits[name] = cached[name]
            continue
        try:
            commits[name] = read_commit(root, name)
        except StoreError as e:
            if strict:
                raise StoreError(f"{e} (run `vivitcache verify`; delete the part folder to re-extract it)") from None
            problems.append(str(e))
    return commits, problems


def write_index(root: Path) -> dict:
    """Read every commit record and write the consolidated index; returns it."""
    mtime = _parts_mtime_ns(root)  # taken first: a part published meanwhile makes the index stale, never wrong
    parts = {}
    for name in part_names(root):
        try:
            parts[name] = read_commit(root, name)
        except StoreError:
            continue  # a damaged part stays out of the index; `verify` reports it
    index = {"parts_mtime_ns": mtime, "time": now_iso(), "parts": parts}
    (root / INDEX).mkdir(exist_ok=True)
    write_json_atomic(root / INDEX / META, group_meta({INDEX_KEY: index}))
    return index


def index_state(root: Path) -> str:
    """`fresh`, `stale` or `absent`."""
    index = read_index(root)
    if index is None:
        return "absent"
    return "fresh" if index.get("parts_mtime_ns") == _parts_mtime_ns(root) else "stale"
