"""Store at scale: write n videos through the public writer API, then time what readers, writers and `verify` do.

    .venv/bin/python benchmarks/bench_store.py --videos 10000 100000 1000000 --out benchmarks/results/bench_store.json

Per n: write (parts + index), open with a fresh index and after one new part (each in a fresh process, with the RSS
the open adds), `ids()`, lookup by id, `committed_ids`, `info`, `verify --quick`, `verify` (parallel) against a plain
parallel read of the same files (the disk's bandwidth as this machine serves it), and the files on disk. Then how
each figure grows from the smallest n to the largest. Tokens: 16 frames per video, K=1, D=64 fp16 (128 B per frame,
the shape of the issue's 10⁵-video measurement), `--videos-per-part` per part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vivitcache.store import StoreLayout, StoreWriter, store_info, verify_store
from vivitcache.store.writer import plan_parts

FINGERPRINT = {"model": "bench", "weights_sha256": "0" * 64, "sampling": {"fps": 8.0}}
CLASSES = [f"class{c:03d}" for c in range(400)]

CHILD = r"""
import json, os, sys, time, resource
def rss_mb(kind="VmRSS"):  # VmRSS = RssAnon (private) + RssFile (mapped index pages, shared between processes)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(kind + ":")) / 1024
from vivitcache.store import TokenStore
before, before_anon = rss_mb(), rss_mb("RssAnon")
t = time.perf_counter()
store = TokenStore.open(sys.argv[1])
n = len(store)
open_s = time.perf_counter() - t
after_open = rss_mb()
ids = json.loads(sys.argv[2])
t = time.perf_counter()
for i in ids:
    store.location(i)
lookup_us = (time.perf_counter() - t) / len(ids) * 1e6
after_lookups, after_lookups_anon = rss_mb(), rss_mb("RssAnon")
t = time.perf_counter()
all_ids = store.ids()
ids_s = time.perf_counter() - t
print(json.dumps({"open_s": open_s, "videos": n, "rss_open_mb": after_open - before,
                  "rss_after_lookups_mb": after_lookups - before,
                  "private_rss_after_lookups_mb": after_lookups_anon - before_anon, "lookup_us": lookup_us, "ids_s": ids_s,
                  "rss_after_ids_mb": rss_mb() - before}))
"""


def video_id(i: int) -> str:
    return f"{CLASSES[i % len(CLASSES)]}/video_{i:07d}"


def write_store(path: Path, n: int, frames: int, per_part: int) -> dict:
    layout = StoreLayout("pooled", 1, 64, "fp16", shard_frames=2**18, chunk_frames=256)  # 32 MiB shards
    writer = StoreWriter.create_or_open(path, FINGERPRINT, layout, CLASSES, {"bench": "bench_store"})
    block = np.random.default_rng(0).standard_normal((frames, 1, 64)).astype(np.float16)  # [T, K, D]
    times = np.arange(frames) / 8.0
    t = time.perf_counter()
    parts = plan_parts([video_id(i) for i in range(n)], per_part)
    for part in parts:
        with writer.part(part.part_id) as pw:  # the public writer API
            for vid in part.ids:
                pw.begin_video(vid, int(vid[5:8]), f"/data/{vid}.mp4", 8.0)
                pw.append(block, times)
                pw.end_video()
    parts_s = time.perf_counter() - t
    t = time.perf_counter()
    writer.consolidate()
    return {"write_parts_s": parts_s, "index_s": time.perf_counter() - t, "parts": len(parts)}


def in_fresh_process(path: Path, ids: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(ids)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    value = fn(*args, **kw)
    return time.perf_counter() - t, value


def raw_read_mb_s(path: Path, workers: int) -> tuple[float, int]:
    """Plain parallel read of every file under parts/ (what the disk gives this process), MB/s and bytes."""
    files = [os.path.join(d, f) for d, _, names in os.walk(path / "parts") for f in names]

    def read(name):
        with open(name, "rb") as f:
            return len(f.read())

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(read, files))
    return total / 2**20 / (time.perf_counter() - t), total


def direct_read_mb_s(path: Path, workers: int) -> float:
    """Parallel O_DIRECT read of every file under parts/: the disk's own bandwidth, past the page cache (which this
    benchmark cannot drop without root on the host)."""
    import mmap

    files = [os.path.join(d, f) for d, _, names in os.walk(path / "parts") for f in names]

    def read(name):
        fd = os.open(name, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 8 << 20)  # page-aligned, as O_DIRECT needs
        total = 0
        try:
            while True:
                n = os.readv(fd, [buf])
                total += n
                if n < len(buf):
                    return total
        finally:
            os.close(fd)
            buf.close()

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(read, files))
    return total / 2**20 / (time.perf_counter() - t)


def bench(n: int, root: Path, frames: int, per_part: int) -> dict:
    path = root / f"store_{n}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    row = {"videos": n, "frames_per_video": frames, "videos_per_part": per_part}
    row.update(write_store(path, n, frames, per_part))
    rng = np.random.default_rng(1)
    probe = [video_id(int(i)) for i in rng.integers(0, n, 2000)]
    fresh = in_fresh_process(path, probe)
    row.update({f"fresh_{k}": v for k, v in fresh.items()})
    writer = StoreWriter.open(path)
    row["committed_ids_s"], ids = timed(writer.committed_ids)
    assert len(ids) == n
    row["info_s"], info = timed(store_info, path)
    row["files"] = sum(len(names) for _, _, names in os.walk(path))
    row["files_per_million_frames"] = info["files_per_million_frames"]
    row["bytes_on_disk"] = info["bytes_on_disk"]
    row["verify_quick_s"], problems = timed(verify_store, path, quick=True)
    assert problems == []
    row["verify_s"], problems = timed(verify_store, path)
    assert problems == []
    row["verify_mb_s"] = info["bytes_on_disk"] / 2**20 / row["verify_s"]
    with writer.part("onemore") as pw:  # one new part: the index is now stale
        pw.begin_video("extra/video", 0, "/data/extra.mp4", 8.0)
        pw.append(np.zeros((frames, 1, 64), np.float16))
        pw.end_video()
    stale = in_fresh_process(path, probe[:200])
    row["stale_open_s"], row["stale_rss_open_mb"] = stale["open_s"], stale["rss_open_mb"]
    assert stale["videos"] == n + 1
    shutil.rmtree(path)
    return row


def verify_bandwidth(root: Path, parts: int) -> dict:
    """`verify` on parts of realistic size (64 videos x 128 frames x 2 KiB = 16 MiB, one shard each) against a plain
    parallel read of the same files: how close checking comes to the disk (page cache warm for both)."""
    path = root / "bandwidth.zarr"
    shutil.rmtree(path, ignore_errors=True)
    layout = StoreLayout("pooled", 1, 1024, "fp16", shard_frames=16384, chunk_frames=256)
    writer = StoreWriter.create_or_open(path, FINGERPRINT, layout, CLASSES)
    block = np.random.default_rng(0).standard_normal((128, 1, 1024)).astype(np.float16)  # [T, K, D]
    for p in range(parts):
        with writer.part(f"p{p:04d}") as pw:
            for v in range(64):
                pw.begin_video(f"p{p}/v{v}", 0, "/x.mp4", 8.0)
                pw.append(block)
                pw.end_video()
    cores = len(os.sched_getaffinity(0))
    disk = direct_read_mb_s(path, 2 * cores)
    raw, total = raw_read_mb_s(path, 2 * cores)  # page cache warm from here on
    out = {"parts": parts, "mb": total / 2**20, "disk_read_mb_s": disk, "cached_read_mb_s": raw, "cores": cores}
    for w in sorted({1, cores}):  # workers given: that many spawned processes
        seconds, problems = timed(verify_store, path, workers=w)
        assert problems == []
        out[f"verify_mb_s_{w}_processes"] = total / 2**20 / seconds
    out["verify_vs_disk_read"] = out[f"verify_mb_s_{cores}_processes"] / disk
    shutil.rmtree(path)
    return out


def growth(rows: list[dict]) -> dict:
    """Each timed figure at the largest n over the smallest, beside the ratio of n (flat = 1, linear = n ratio)."""
    a, b = rows[0], rows[-1]
    keys = ["fresh_open_s", "stale_open_s", "fresh_rss_open_mb", "fresh_lookup_us", "fresh_ids_s", "committed_ids_s",
            "info_s", "verify_quick_s", "verify_s", "write_parts_s", "index_s", "files"]
    return {"n_ratio": b["videos"] / a["videos"],
            **{k: round(b[k] / a[k], 2) if a[k] else None for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--videos-per-part", type=int, default=256)
    ap.add_argument("--bandwidth-parts", type=int, default=32, help="16 MiB parts for the verify bandwidth check.")
    ap.add_argument("--root", default=None, help="Scratch folder (default: a temporary one).")
    ap.add_argument("--out", default="benchmarks/results/bench_store.json")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bench_store_"))
    rows = []
    for n in args.videos:
        rows.append(bench(n, root, args.frames, args.videos_per_part))
        print(json.dumps(rows[-1]), flush=True)
    bandwidth = verify_bandwidth(root, args.bandwidth_parts)
    print(json.dumps(bandwidth), flush=True)
    result = {"bench": "bench_store", "command": " ".join([Path(sys.executable).name] + sys.argv),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
              "rows": rows, "growth": growth(rows) if len(rows) > 1 else None, "verify_bandwidth": bandwidth}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["growth"]))


if __name__ == "__main__":
    main()
