"""Opening a store's columnar index at 10⁶ videos, with every column's crc32c checked (issue 19: under 0.5 s).

    .venv/bin/python benchmarks/bench_index_open.py --videos 1000000 --out benchmarks/results/bench_index_open.json

Only the index is real: the commit records are synthesised in memory and written as one segment (`build_columns`,
`write_segment`), and `parts/` holds an empty folder per part (an open lists `parts/` and reads no record of an
indexed part). Each open runs in a fresh process: `warm` with the index files in the page cache, `cold` after
`posix_fadvise(DONTNEED)` drops them (as after a reboot, without needing root). `crc_s`: the checksum pass alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vivitcache.store import StoreLayout, StoreWriter
from vivitcache.store.index import _write_manifest, build_columns, write_segment

CHILD = r"""
import json, sys, time
def rss_mb(kind):  # VmRSS = RssAnon (private) + RssFile (mapped index pages, shared between processes)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(kind + ":")) / 1024
from vivitcache.store import TokenStore
from vivitcache.store import reader, index, columns  # imported before the clock starts, as in bench_store.py
rss, anon = rss_mb("VmRSS"), rss_mb("RssAnon")
t = time.perf_counter()
store = TokenStore.open(sys.argv[1])
n = len(store)
label = store.label(sys.argv[2])
print(json.dumps({"open_s": time.perf_counter() - t, "videos": n, "rss_open_mb": rss_mb("VmRSS") - rss,
                  "private_rss_open_mb": rss_mb("RssAnon") - anon}))
"""


def make_index(path: Path, n: int, per_part: int) -> None:
    StoreWriter.create_or_open(path, {"model": "bench"}, StoreLayout("pooled", 1, 64, "fp16"),
                               [f"class{c:03d}" for c in range(400)])
    commits = {}
    for start in range(0, n, per_part):
        pid = f"p{start // per_part:07d}"
        (path / "parts" / pid).mkdir()
        videos = [{"id": f"class{i % 400:03d}/video_{i:07d}", "label": i % 400, "offset": 16 * (i - start),
                   "num_frames": 16, "source": f"/data/class{i % 400:03d}/video_{i:07d}.mp4", "fps": 8.0}
                  for i in range(start, min(n, start + per_part))]
        commits[pid] = {"part_id": pid, "videos": videos, "failures": [], "frames": 16 * len(videos),
                        "disk_bytes": 0, "files": {}}
    cols, attrs = build_columns(commits, {}, {p: "0" * 64 for p in commits})
    _write_manifest(path, [write_segment(path, cols, attrs)], -1)


def drop_cache(folder: Path) -> None:
    for d, _, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def open_in_child(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), "class007/video_0000007"], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def crc_seconds(path: Path) -> tuple[float, int]:
    """The checksum pass alone over every column file (warm), and the bytes it covers."""
    import google_crc32c

    files = [Path(d) / f for d, _, names in os.walk(path / "index") for f in names if f == "0"]
    datas = [np.memmap(f, dtype=np.uint8, mode="r") for f in files if f.stat().st_size]
    t = time.perf_counter()
    for data in datas:
        google_crc32c.value(data[:-4])
    return time.perf_counter() - t, sum(len(d) for d in datas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=1_000_000)
    ap.add_argument("--videos-per-part", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_index_open_"))
    try:
        path = root / "s.zarr"
        make_index(path, args.videos, args.videos_per_part)
        open_in_child(path)  # page the files in
        runs = [open_in_child(path) for _ in range(args.repeats)]
        warm = [r["open_s"] for r in runs]
        cold = []
        for _ in range(args.repeats):
            drop_cache(path / "index")
            cold.append(open_in_child(path)["open_s"])
        crc_s, nbytes = crc_seconds(path)
        result = {"videos": args.videos, "videos_per_part": args.videos_per_part, "index_bytes": nbytes,
                  "warm_open_s": warm, "cold_open_s": cold,
                  "rss_open_mb": runs[-1]["rss_open_mb"], "private_rss_open_mb": runs[-1]["private_rss_open_mb"],
                  "crc_s": crc_s, "load": os.getloadavg()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
