"""Describe and check a token store: `store_info`, `verify_store` / `find_damage`, and the size arithmetic behind
the README table."""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import shlex
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import zarr

from vivitcache.store.index import index_state, open_index, part_names, read_commit_digest
from vivitcache.store.plan import read_plan
from vivitcache.store.layout import FRAME_TIMES, META, PARTS, TOKENS, StoreError, StoreLayout, bytes_per_frame, read_json
from vivitcache.store.reader import TokenStore, check_part_files, read_root
from vivitcache.store.writer import staging_dirs

REPAIR = ("repair: `vivitcache extract --data ANNOTATIONS --store {path} --repair` (with the options of the first "
          "run) moves the damaged parts aside and re-extracts exactly their videos")


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
    """Summary of a store from its index: counts, fingerprint, layout, classes, size, files, staging folders.

    Damaged parts are left out of the counts and listed under `damaged_parts` (run `verify_store` for details).
    """
    store = TokenStore.open(path, strict=False)
    layout = store.layout
    sums = store.part_sums()  # sizes come from the commit records (measured at commit): no walk over the files
    frames, disk = store.total_frames, sums["disk_bytes"]
    files = sums["files"] + len(store.part_ids())  # + each part's own record (not in its `files`)
    return {
        "path": str(store.path),
        "videos": len(store),
        "frames": frames,
        "failed": len(store.failures()),
        "parts": len(store.part_ids()),
        "fingerprint": store.fingerprint,
        "layout": layout.to_dict(),
        "classes": store.classes,
        "bytes_on_disk": disk,
        "bytes_per_frame": layout.frame_bytes,
        "compression_ratio": round(frames * layout.frame_bytes / disk, 3) if disk else None,
        "part_files": files if sums["files"] else None,
        "files_per_million_frames": round(files / frames * 1e6, 1) if frames and sums["files"] else None,
        "staging_dirs": staging_dirs(store.path),
        "damaged_parts": store.problems,
        "duplicate_ids": [d[0] for d in store.duplicates],
        "index": _index_note(index_state(store.path)),
        "created": store.created,
        "provenance": store.provenance,
    }


PATH_OPTIONS = ("--data", "--checkpoint", "--weights", "--video-root", "--labels")
"""Options of `vivitcache extract` that name files: made absolute in the repair hint."""


def _repair_hint(path: Path, root: dict) -> str:
    """The repair command: the store's first `vivitcache extract` command line (from its provenance) + --repair,
    run on THIS store (`path`: a copied or moved store must not repair the original) with absolute paths (relative
    ones resolved against the folder that command ran in, when the provenance recorded it)."""
    prov = root.get("provenance") or {}
    argv = [str(a) for a in prov.get("argv") or []]
    if len(argv) > 1 and argv[1] == "extract" and Path(argv[0]).name in ("vivitcache", "__main__.py"):
        command = shlex.join(["vivitcache", *_absolute_args(argv[1:], path, prov.get("cwd")), "--repair"])
        return (f"repair: `{command}` (the command that made this store, on this store, plus --repair) moves the "
                "damaged parts aside and re-extracts exactly their videos")
    return REPAIR.format(path=path)


def _absolute_args(args: list[str], store: Path, cwd: str | None) -> list[str]:
    """`args` with `--store` set to `store` and the file options made absolute against `cwd` (kept when unknown)."""
    out: list[str] = []
    it = iter(a for a in args if a != "--repair")
    for arg in it:
        name, eq, value = arg.partition("=")
        if name == "--store" or name in PATH_OPTIONS:
            value = value if eq else next(it, "")
            if name == "--store":
                value = str(store)
            elif cwd and not os.path.isabs(os.path.expanduser(value)):
                value = os.path.join(cwd, value)
            out += [name, value]
        else:
            out.append(arg)
    return out


def _index_note(state: str) -> str:
    notes = {"old": "old (written before the columnar index: run `vivitcache index STORE`)",
             "damaged": "damaged (not used, every commit record is read instead: run `vivitcache index STORE`)"}
    return notes.get(state, state)


def verify_store(path, checksums: bool = True, quick: bool = False, workers: int | None = None) -> list[str]:
    """Problems found in a store (empty list = OK); see `find_damage`."""
    return find_damage(path, checksums=checksums and not quick, workers=workers)[0]


def find_damage(path, checksums: bool = True, workers: int | None = None) -> tuple[list[str], set[str]]:
    """(problems, ids of damaged parts). Empty problems = OK.

    Always (`verify --quick`, metadata only): the root record; every part's commit record (readable, videos tile its
    frames); every file it lists exists with its recorded size (older records: every shard covering committed frames
    and the frame-times chunk exist; zarr would silently read a missing one as zeros / NaN); the arrays have the
    recorded shape; no video id is committed twice; the index agrees with the parts: every column passes its crc32c,
    every part it lists is in `parts/` with the record it indexed; every part of the plan is in `parts/`.
    With `checksums`, every chunk is also read back (crc32c) and the tokens' sha256 compared with the record, in
    `workers` processes (default: this process's cores, for stores over `PROCESSES_FROM_BYTES`). Processes, not threads: zarr decodes every read on one
    event-loop thread per process, so threads do not add decode throughput. Spawned, not forked (zarr's loop thread
    does not survive a fork).
    """
    path = Path(os.path.abspath(path))
    try:
        root = read_root(path)
        layout = StoreLayout.from_dict(root["layout"])
        names = part_names(path)
    except StoreError as e:
        return [str(e)], set()
    problems: list[str] = []
    if not root["fingerprint"]:
        problems.append(f"{path}: empty fingerprint")
    spawn = workers is not None or _store_bytes(path) > PROCESSES_FROM_BYTES  # as asked, or when it pays off
    workers = workers or _cores()
    check = functools.partial(_check_part, path, layout=layout, checksums=checksums)
    if checksums and spawn and workers > 1 and len(names) > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(check, names, chunksize=max(1, len(names) // (8 * workers))))
    else:  # metadata only: a few small reads per part; threads overlap the file system's latency
        with ThreadPoolExecutor(max_workers=min(32, 4 * workers)) as pool:
            results = list(pool.map(check, names))
    commits, digests, damaged = {}, {}, set()
    for name, (commit, digest, found) in zip(names, results):
        if commit is not None:
            commits[name], digests[name] = commit, digest
        if found:
            damaged.add(name)
            problems += found
    owner: dict[str, str] = {}
    for name, commit in commits.items():
        for video in commit["videos"]:
            if video["id"] in owner:
                problems.append(f"video id {video['id']!r} committed twice: parts {owner[video['id']]} and {name}")
            owner.setdefault(video["id"], name)
    missing = _index_problems(path, commits, digests, problems, damaged)
    missing += _unmade_planned_parts(path, set(names), missing, problems)
    if damaged - set(missing):
        problems.append(_repair_hint(path, root))
    elif missing:
        problems.append(f"repair: a re-run of the `vivitcache extract` that made {path} re-creates the missing part(s)")
    return problems, damaged


def _index_problems(path: Path, commits: dict, digests: dict, problems: list[str], damaged: set[str]) -> list[str]:
    """Add what is wrong with the index (a column failing its crc32c, a record differing from it) and the parts it
    lists that `parts/` lacks (also to `damaged`: `--repair` re-extracts them); returns those missing parts."""
    try:
        view = open_index(path, strict=False)
    except StoreError as e:
        problems.append(f"{path}/index: {e}")
        return []
    if view.index_problem:
        problems.append(view.index_problem)
    for seg in view.segments:
        if seg.name is None:
            continue
        for p, name in enumerate(seg.part_names):
            if name in commits and seg.digest[p] != digests[name]:
                problems.append(f"part {name}: its commit record differs from the index (edited after indexing, or "
                                f"re-published: `vivitcache index {path}` re-reads every record)")
                damaged.add(name)
    for name in view.missing:
        problems.append(f"part {name}: {path / PARTS / name} is missing, but the index lists it (deleted, or left "
                        "out of a copy)")
        damaged.add(name)
    return list(view.missing)


def _unmade_planned_parts(path: Path, present: set[str], missing: list[str], problems: list[str]) -> list[str]:
    """Add the parts the store's plan lists that are not in `parts/` (an unfinished extraction, or deleted);
    returns them."""
    try:
        planned = read_plan(path).parts
    except StoreError as e:
        problems.append(f"{path}/plan: {e}")
        return []
    unmade = sorted(set(planned) - present - set(missing))
    for name in unmade:
        problems.append(f"part {name}: planned ({len(planned[name])} videos) but not in {path / PARTS} (an "
                        "unfinished extraction, or deleted): its videos have no tokens")
    return unmade


PROCESSES_FROM_BYTES = 2 * 2**30
"""Below this a store is verified in this process: one process checks ~400 MB/s, and starting each spawned worker
(importing zarr and numpy) costs about a second."""


def _store_bytes(path: Path) -> int:
    try:
        return open_index(path, strict=False).part_sums()["disk_bytes"]
    except StoreError:
        return 0


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _check_part(root: Path, name: str, layout: StoreLayout, checksums: bool):
    """(commit record or None, its digest, problems) of one part."""
    part = root / PARTS / name
    try:
        commit, digest = read_commit_digest(root, name)
    except StoreError as e:
        return None, None, [str(e)]
    try:
        check_part_files(part, commit, layout)
    except StoreError as e:
        return commit, digest, [str(e)]
    frames = commit["frames"]
    where = f"part {name}: {part}"
    want = {TOKENS: ([frames, layout.tokens_per_frame, layout.dim], layout.numpy_dtype), FRAME_TIMES: ([frames], None)}
    for array, (shape, dtype) in want.items():  # the arrays' own metadata, read as JSON (cheap, no zarr objects)
        try:
            meta = read_json(part / array / META)
            ok = meta.get("shape") == shape and (dtype is None or meta.get("data_type") == dtype)
        except (StoreError, AttributeError) as e:
            return commit, digest, [f"{where}/{array}: unreadable metadata ({e})"]
        if not ok:
            return commit, digest, [f"{where}/{array}: shape {meta.get('shape')} {meta.get('data_type')}, expected "
                                    f"{shape} {dtype or ''}".rstrip()]
    if not checksums:
        return commit, digest, []
    try:
        tokens = zarr.open_array(store=str(part / TOKENS), mode="r")
        times = zarr.open_array(store=str(part / FRAME_TIMES), mode="r")
    except Exception as e:  # noqa: BLE001 — any zarr error means the array is unusable
        return commit, digest, [f"{where}: cannot open arrays ({type(e).__name__}: {e})"]
    problems = []
    shard = (tokens.shards or tokens.chunks)[0]
    digests = []
    for i, start in enumerate(range(0, frames, shard)):
        try:
            block = tokens[start : min(frames, start + shard)]
        except Exception as e:  # noqa: BLE001 — a crc32c or decode error: the shard is damaged
            key = tokens.metadata.encode_chunk_key((i, 0, 0))
            return commit, digest, [f"{where}/{TOKENS}/{key}: frames {start}.. unreadable ({type(e).__name__}: {e})"]
        digests.append(hashlib.sha256(block.tobytes()).digest())
    try:
        times[:]
    except Exception as e:  # noqa: BLE001 — a crc32c or decode error
        problems.append(f"{where}/{FRAME_TIMES}/c/0: unreadable ({type(e).__name__}: {e})")
    if hashlib.sha256(b"".join(digests)).hexdigest() != commit["tokens_sha256"]:
        problems.append(f"{where}/{TOKENS}: sha256 differs from the commit record (data changed after commit)")
    return commit, digest, problems
