"""Describe and check a token store: `store_info`, `verify_store`, and the size arithmetic behind the README table."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import zarr

from vivitcache.store.fingerprint import canonical_json
from vivitcache.store.index import index_state, part_names, read_commit, read_index
from vivitcache.store.layout import BYTES_PER_VALUE, FRAME_TIMES, PARTS, TOKENS, StoreError, StoreLayout
from vivitcache.store.reader import VIDEO_FIELDS, TokenStore, read_root
from vivitcache.store.writer import staging_dirs


def bytes_per_frame(tokens_per_frame: int, dim: int, dtype: str) -> int:
    """Stored bytes of one frame's tokens, before compression: K * D * 2 for fp16 and bf16."""
    if dtype not in BYTES_PER_VALUE:
        raise StoreError(f"unknown store dtype {dtype!r}, use one of {', '.join(BYTES_PER_VALUE)}")
    return tokens_per_frame * dim * BYTES_PER_VALUE[dtype]


def estimate_store_bytes(frames: int, tokens_per_frame: int, dim: int, dtype: str = "fp16") -> int:
    """Size of a store holding `frames` frames (uncompressed; shard indexes and metadata are negligible)."""
    return frames * bytes_per_frame(tokens_per_frame, dim, dtype)


def format_bytes(n: float) -> str:
    """1536 → '1.5 KiB' (binary units, as `du -h`)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def store_info(path) -> dict:
    """Summary of a store: counts, fingerprint, layout, classes, size, staging folders, provenance.

    Damaged parts are left out of the counts and listed under `damaged_parts` (run `verify_store` for details).
    """
    store = TokenStore.open(path, strict=False)
    layout = store.layout
    commits = {p: store.commit(p) for p in store.part_ids()}
    # Sizes come from the commit records (measured at commit) so this stays fast on a store of millions of files.
    disk = sum(int(c.get("disk_bytes", 0)) for c in commits.values())
    return {
        "path": str(store.path),
        "videos": len(store),
        "frames": store.total_frames,
        "failed": len(store.failures()),
        "parts": len(commits),
        "fingerprint": store.fingerprint,
        "layout": layout.to_dict(),
        "classes": store.classes,
        "bytes_on_disk": disk,
        "bytes_per_frame": layout.frame_bytes,
        "compression_ratio": round(store.total_frames * layout.frame_bytes / disk, 3) if disk else None,
        "staging_dirs": staging_dirs(store.path),
        "damaged_parts": store.problems,
        "duplicate_ids": [d[0] for d in store.duplicates],
        "index": index_state(store.path),
        "created": store.created,
        "provenance": store.provenance,
    }


def verify_store(path, checksums: bool = True) -> list[str]:
    """Problems found in a store (empty list = OK).

    Checks: the root record and fingerprint; every part's commit record (readable, consistent offsets); its arrays
    exist with the recorded shape and dtype; every shard file covering committed frames exists (zarr would silently
    return zeros for a missing one); with `checksums`, every shard is read back (crc32c per chunk) and the tokens'
    sha256 matches the commit record; no video id is committed twice; the consolidated index agrees with the parts.
    """
    path = Path(os.path.abspath(path))
    try:
        root = read_root(path)
        layout = StoreLayout.from_dict(root["layout"])
        names = part_names(path)
    except StoreError as e:
        return [str(e)]
    problems = []
    if not root["fingerprint"]:
        problems.append(f"{path}: empty fingerprint")
    commits = {}
    for name in names:
        try:
            commits[name] = read_commit(path, name)
        except StoreError as e:
            problems.append(str(e))
            continue
        problems += _check_part(path / PARTS / name, commits[name], layout, checksums)
    owner: dict[str, str] = {}
    for name, commit in commits.items():
        for video in commit["videos"]:
            if isinstance(video, dict) and "id" in video:
                if video["id"] in owner:
                    problems.append(f"video id {video['id']!r} committed twice: parts {owner[video['id']]} and {name}")
                owner.setdefault(video["id"], name)
    index = read_index(path)
    for name, record in (index or {}).get("parts", {}).items():
        if name in commits and canonical_json(record) != canonical_json(commits[name]):
            problems.append(f"{path}/index: record of part {name} differs from the part's commit record "
                            "(re-run consolidate)")
    return problems


def _check_part(part: Path, commit: dict, layout: StoreLayout, checksums: bool) -> list[str]:
    problems, frames = [], commit["frames"]
    where = f"{part.parent.name}/{part.name}"
    offset = 0
    for video in commit["videos"]:
        if not isinstance(video, dict) or any(k not in video for k in VIDEO_FIELDS):
            problems.append(f"{where}: malformed video entry {video!r}")
            return problems
        if video["offset"] != offset or video["num_frames"] < 1:
            problems.append(f"{where}: video {video['id']!r} at offset {video['offset']} with {video['num_frames']} "
                            f"frames, expected offset {offset} and at least 1 frame")
        offset = video["offset"] + video["num_frames"]
    if offset != frames:
        problems.append(f"{where}: videos cover {offset} frames, commit record says {frames}")
    try:
        tokens = zarr.open_array(store=str(part / TOKENS), mode="r")
        times = zarr.open_array(store=str(part / FRAME_TIMES), mode="r")
    except Exception as e:  # noqa: BLE001 — any zarr error means the array is unusable
        return problems + [f"{where}: cannot open arrays ({type(e).__name__}: {e})"]
    want = (frames, layout.tokens_per_frame, layout.dim)
    if tokens.shape != want or str(tokens.dtype) != layout.numpy_dtype:
        problems.append(f"{where}/{TOKENS}: shape {list(tokens.shape)} {tokens.dtype}, "
                        f"expected {list(want)} {layout.numpy_dtype}")
        return problems
    if times.shape != (frames,):
        problems.append(f"{where}/{FRAME_TIMES}: shape {list(times.shape)}, expected [{frames}]")
    shard = (tokens.shards or tokens.chunks)[0]
    missing = []
    for i in range(-(-frames // shard)):
        key = tokens.metadata.encode_chunk_key((i, 0, 0))
        if not (part / TOKENS / key).is_file():
            missing.append(f"{key} (frames {i * shard}-{min(frames, (i + 1) * shard) - 1})")
    if missing:
        return problems + [f"{where}/{TOKENS}: missing shard file(s) {', '.join(missing)}"]
    if checksums:
        digests = []
        for start in range(0, frames, shard):
            try:
                block = tokens[start : min(frames, start + shard)]
            except Exception as e:  # noqa: BLE001 — a crc32c or decode error: the shard is damaged
                return problems + [f"{where}/{TOKENS}: frames {start}.. unreadable ({type(e).__name__}: {e})"]
            digests.append(hashlib.sha256(block.tobytes()).digest())
        try:
            times[:]
        except Exception as e:  # noqa: BLE001 — a crc32c or decode error
            problems.append(f"{where}/{FRAME_TIMES}: unreadable ({type(e).__name__}: {e})")
        if hashlib.sha256(b"".join(digests)).hexdigest() != commit["tokens_sha256"]:
            problems.append(f"{where}/{TOKENS}: sha256 differs from the commit record (data changed after commit)")
    return problems
