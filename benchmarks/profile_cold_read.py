"""Where a cold random batch of `--read random` spends its time: one process, no DataLoader workers.

    python benchmarks/profile_cold_read.py --work /tmp/cold24 --out benchmarks/results/profile_cold_read.json

The store is `bench_loader.py`'s (fp16 `cls` tokens, 64-frame chunks, ~32 MiB shards; `--videos` x `--frames`,
D = `--dim`), plus the same tokens as one `.npy` per video (video_features' layout; `peer_readers.export`, the files
`bench_loader.py` writes, `<store>.peers/npy`) for the reference rate. For each
clip length T, the clips of one epoch (the project's clip rule, seed 0, epoch 0, the sampler's order, batches of
`--batch`) are read through `TokenClipDataset` over a fresh `StoreBatches` (chunk cache of twice the store), after
dropping the files from the page cache (`posix_fadvise(DONTNEED)`; `resident_after_drop`: what `fincore` still
finds):

- `cold` / `warm`: clips/s of the first epoch (every chunk read from storage) and of the same epoch again;
  `cold_read_ahead`: the first epoch with the read-ahead thread walking the order (what `fit` does); `npy_cold` /
  `npy_warm`: the same clips through the same `TokenClipDataset` over `bench_loader.py`'s `.npy` peer
  (`peer_readers.NpyBatches`: `np.load(mmap_mode="r")` maps opened on a video's first clip and kept; cold: its
  maps closed, its files dropped, fresh maps; warm: the same epoch again through the maps kept open). These run in
  `--rounds` interleaved rounds (the machine is shared: each case sees the same load) and the best round counts.

`breakdown`, from cold epochs run before the rounds (the first one is the process's first reader of that T: for the
first T, memory the process never touched before):

- the bytes the clips need (their frames; whole 64-frame chunks) against what the process read: `/proc/self/io`
  (`read_bytes`: from storage, `rchar`: through read calls, `syscr`: read calls) and CPU time (user + system, all
  threads) against wall time (the rest is waiting: storage, locks);
- replays of the same chunks' byte ranges (from the shard indexes): plain `pread`s cold (one thread, and a pool of
  8), crc32c (`google_crc32c`) and decoding (bytes → the slab) warm: the floor under any chunk reader;
- `uncached`: the same epoch with the page cache warm and an empty chunk cache: everything but storage;
- `cprofile`: a cold epoch under cProfile in every thread (main, zarr's event loop, the read threads), own time
  summed by where it goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
import torch

from vivitcache.provenance import provenance
from vivitcache.store import TokenStore
from vivitcache.train_temporal.batches import StoreBatches
from vivitcache.train_temporal.dataset import TokenClipDataset
from vivitcache.train_temporal.features import FeatureRule
from vivitcache.training.sampler import ResumableSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import drop_page_cache, entries, make_store, store_files  # noqa: E402 — the same store
from peer_readers import NpyBatches, export  # noqa: E402 — bench_loader's .npy peer, for the reference rate

EMPTY = 2**64 - 1


# ---------------------------------------------------------------------------------------------------- counters
def counters() -> dict:
    """This process's read counters and CPU seconds (all threads) now."""
    io_ = dict(line.split(": ") for line in Path("/proc/self/io").read_text().split("\n") if line)
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"read_bytes": int(io_["read_bytes"]), "rchar": int(io_["rchar"]), "syscr": int(io_["syscr"]),
            "cpu_s": use.ru_utime + use.ru_stime, "wall_s": time.perf_counter()}


def since(start: dict) -> dict:
    now = counters()
    return {k: now[k] - start[k] for k in start}


def resident_bytes(paths: list[Path]) -> int | None:
    """Bytes of `paths` in the page cache (`fincore`), None if it is not installed."""
    try:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *map(str, paths)], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(int(x) for x in out.split())


def drop(path: Path) -> int | None:
    drop_page_cache(path)
    return resident_bytes(store_files(path))


# ---------------------------------------------------------------------------------------------------- the clips
def epoch_batches(ds: TokenClipDataset, batch: int, epoch: int = 0) -> list[list[int]]:
    """The sampler's order of epoch `epoch`, cut in batches (the last partial one dropped, as training does)."""
    sampler = ResumableSampler(len(ds), 0, shuffle=True)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]


def clip_frames(ds: TokenClipDataset, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(part [B], frame numbers in the part [B, T]) of the clips of samples `rows`."""
    r = np.asarray(rows, dtype=np.int64)
    idx, _ = ds.clip_indices(r)  # [B, T]
    return ds.table.part[r], ds.table.offset[r][:, None] + idx


def epoch(ds: TokenClipDataset, batches: list[list[int]]) -> dict:
    """Read every batch once: clips/s and the read counters over the epoch."""
    start = counters()
    for rows in batches:
        ds.__getitems__(rows)
    spent = since(start)
    clips = sum(map(len, batches))
    return {"clips_per_s": clips / spent["wall_s"], **spent}


def needed(store: TokenStore, ds: TokenClipDataset, batches: list[list[int]]) -> dict:
    """What the epoch's clips need: distinct frames and distinct chunks, as counts and bytes, and the chunks' byte
    ranges in their shard files ({file: [(offset, nbytes)]}, from the shard indexes)."""
    lay, parts = store.layout, store.part_ids()
    frames, chunks = set(), set()
    for rows in batches:
        part, f = clip_frames(ds, rows)  # [B], [B, T]
        keys = (part[:, None] << 32) + f  # [B, T]
        frames.update(np.unique(keys).tolist())
        chunks.update(np.unique((part[:, None] << 32) + f // lay.chunk_frames).tolist())
    ranges: dict[str, list] = {}
    for key in sorted(chunks):
        p, c = divmod(key, 1 << 32)
        reader = store.shard_chunks(parts[p])  # the part's shard files and their checked indexes
        shard, inner = divmod(c, reader.per_shard)
        ranges.setdefault(str(reader.file(shard)), []).append(tuple(reader.index(shard)[inner]))
    chunk_bytes = int(sum(n for rs in ranges.values() for _, n in rs))
    return {"frames": len(frames), "frame_bytes": len(frames) * lay.frame_bytes, "chunks": len(chunks),
            "chunk_bytes": chunk_bytes, "shard_files": len(ranges), "ranges": ranges}


# ---------------------------------------------------------------------------------------------------- replays
def replay_reads(ranges: dict, threads: int) -> dict:
    """Cold `pread`s of exactly these byte ranges (sorted by file and offset), on `threads` threads."""
    jobs = [(f, int(o), int(n)) for f, rs in ranges.items() for o, n in sorted(rs)]
    fds = {f: os.open(f, os.O_RDONLY) for f in ranges}
    start = counters()
    try:
        if threads == 1:
            total = sum(len(os.pread(fds[f], n, o)) for f, o, n in jobs)
        else:
            with ThreadPoolExecutor(threads) as pool:
                total = sum(pool.map(lambda j: len(os.pread(fds[j[0]], j[2], j[1])), jobs))
    finally:
        for fd in fds.values():
            os.close(fd)
    spent = since(start)
    return {"threads": threads, "reads": len(jobs), "bytes": total, "mb_per_s": total / 1e6 / spent["wall_s"], **spent}


def replay_cpu(ranges: dict, chunk_shape: tuple[int, ...]) -> dict:
    """Warm: read the ranges (page cache), then crc32c each chunk and decode it into a slab, timed apart."""
    datas = []
    for f, rs in ranges.items():
        with open(f, "rb") as fh:
            for o, n in rs:
                fh.seek(int(o))
                datas.append(fh.read(int(n)))
    t = time.perf_counter()
    for d in datas:
        if google_crc32c.value(d[:-4]) != int.from_bytes(d[-4:], "little"):
            raise RuntimeError("crc32c mismatch")
    crc = time.perf_counter() - t
    slab = np.empty((len(datas),) + chunk_shape, dtype=np.float16)  # [chunks, cf, K, D]
    t = time.perf_counter()
    for i, d in enumerate(datas):
        slab[i] = np.frombuffer(d, dtype="<f2", count=slab[i].size).reshape(chunk_shape)
    decode = time.perf_counter() - t
    nbytes = sum(map(len, datas))
    return {"chunks": len(datas), "bytes": nbytes, "crc32c_s": crc, "crc32c_mb_per_s": nbytes / 1e6 / crc,
            "decode_s": decode, "decode_mb_per_s": nbytes / 1e6 / decode}


# ---------------------------------------------------------------------------------------------------- cProfile
class ThreadProfiles:
    """cProfile in every thread: the main thread, zarr's event-loop thread (already running) and threads started
    while it is on (read pools, zarr's executor); cProfile alone sees only the thread that enabled it."""

    def __init__(self):
        self.profiles: list[cProfile.Profile] = []

    def _new(self) -> cProfile.Profile:
        prof = cProfile.Profile()
        self.profiles.append(prof)
        return prof

    def _hook(self, *_):  # the first profile event of a new thread: hand the thread to its own cProfile
        self._new().enable()  # replaces this hook in this thread only

    def __enter__(self):
        from zarr.core import sync

        threading.setprofile(self._hook)
        if sync.loop[0] is not None:  # zarr's loop thread exists already
            sync.loop[0].call_soon_threadsafe(lambda: self._new().enable())
        self._new().enable()
        return self

    def __exit__(self, *exc):
        threading.setprofile(None)
        for prof in self.profiles:
            prof.disable()  # a thread's profile stops counting here even if another thread disables it

    def grouped(self, top: int = 25) -> dict:
        """tottime summed over threads by group, and the top functions."""
        stats = pstats.Stats(self.profiles[0], stream=io.StringIO())
        for prof in self.profiles[1:]:
            stats.add(prof)
        groups: dict[str, float] = {}
        rows = []
        for (file, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():
            groups[group(file, name)] = groups.get(group(file, name), 0.0) + tottime
            rows.append((tottime, calls, f"{Path(file).name}:{line}({name})"))
        rows.sort(reverse=True)
        return {"threads": len(self.profiles), "tottime_by_group_s": dict(sorted(groups.items(), key=lambda x: -x[1])),
                "top": [{"tottime_s": t, "calls": c, "function": f} for t, c, f in rows[:top]]}


def group(file: str, name: str) -> str:
    """Where a function's own time goes, for the breakdown."""
    if file == "~":
        if any(w in name for w in ("acquire", "wait", "select", "poll", "sleep", "join", "_queue")):
            return "waiting (locks, futures, idle threads and event loop)"
        if any(w in name for w in ("read", "pread", "open", "stat", "close", "seek")):
            return "file syscalls (open/read/stat/close)"
        if "crc32c" in name or "google_crc32c" in name:
            return "crc32c"
        return "builtins (numpy, copies, other C)"
    for key, label in (("/zarr/", "zarr (codec pipeline, indexing)"), ("/numcodecs/", "numcodecs"),
                       ("/asyncio/", "asyncio"), ("/concurrent/", "thread pools"), ("google_crc32c", "crc32c"),
                       ("/numpy/", "numpy (Python)"), ("vivitcache", "vivitcache (Python)"),
                       ("/torch/", "torch (Python)")):
        if key in file:
            return label
    return "other Python"


# ---------------------------------------------------------------------------------------------------- one T
def rates(path: Path, npy: TokenClipDataset, make, batches: list[list[int]], rounds: int) -> dict:
    """`rounds` interleaved rounds of: ours cold (a fresh reader after dropping the page cache), ours warm (the same
    epoch again), ours cold with the read-ahead thread, .npy cold (`npy`'s maps closed, its files dropped), .npy
    warm. The machine is shared: every case sees the same load, and the best round of each counts (all rounds are
    kept)."""
    runs: dict[str, list] = {k: [] for k in ("cold", "warm", "cold_read_ahead", "npy_cold", "npy_warm")}
    for _ in range(rounds):
        drop(path)
        ds = make()
        runs["cold"].append(epoch(ds, batches))
        runs["warm"].append(epoch(ds, batches))
        drop(path)
        ahead = make(read_ahead=32)
        ahead.follow([i for rows in batches for i in rows])
        runs["cold_read_ahead"].append(epoch(ahead, batches))
        ahead.stop_read_ahead()
        npy.features.reset()  # its maps closed first: pages an open map holds are not dropped
        drop_page_cache(npy.features.files())
        runs["npy_cold"].append(epoch(npy, batches))  # maps opened on each video's first clip, kept
        runs["npy_warm"].append(epoch(npy, batches))  # through the maps kept open
    out = {k: max(v, key=lambda r: r["clips_per_s"]) | {"rounds_clips_per_s": [r["clips_per_s"] for r in v]}
           for k, v in runs.items()}
    out["ratios"] = {"cold_vs_npy_cold": out["cold"]["clips_per_s"] / out["npy_cold"]["clips_per_s"],
                     "cold_read_ahead_vs_npy_cold": out["cold_read_ahead"]["clips_per_s"]
                     / out["npy_cold"]["clips_per_s"],
                     "warm_vs_npy_warm": out["warm"]["clips_per_s"] / out["npy_warm"]["clips_per_s"]}
    return out


def diagnose(path: Path, store: TokenStore, make, batches: list[list[int]]) -> dict:
    """The breakdown of one cold epoch: bytes needed, replays of its reads, everything but storage, cProfile."""
    ds = make()
    need = needed(store, ds, batches)
    ranges = need.pop("ranges")
    out: dict = {"needed": need, "resident_after_drop": drop(path)}
    out["cold"] = epoch(ds, batches)
    out["uncached"] = epoch(make(), batches)  # page cache warm now, chunk cache empty
    for threads in (1, 8):
        drop(path)
        out[f"replay_pread_{threads}"] = replay_reads(ranges, threads)
    lay = store.layout
    out["replay_cpu"] = replay_cpu(ranges, (lay.chunk_frames, lay.tokens_per_frame, lay.dim))
    drop(path)
    ds = make()
    with ThreadProfiles() as profiles:
        out["cold_profiled"] = epoch(ds, batches)
    out["cprofile"] = profiles.grouped()
    return out


def profile_T(path: Path, npy: Path, T: int, batch: int, rounds: int) -> dict:
    store = TokenStore.open(path)
    videos = entries(store)
    cache = 2 * sum(f.stat().st_size for f in store_files(path))

    def make(read_ahead: int = 0) -> TokenClipDataset:
        return TokenClipDataset(videos, StoreBatches(path, "cls", cache), T, train=True, batch=batch,
                                read_ahead=read_ahead)

    rule = FeatureRule(store, "cls")
    peer = NpyBatches(npy, {v.id: v.num_frames for v in videos}, rule.dim, rule.dtype)
    batches = epoch_batches(make(), batch)
    out = {"T": T, "batch": batch, "clips": sum(map(len, batches))}
    out["breakdown"] = diagnose(path, store, make, batches)
    out.update(rates(path, TokenClipDataset(videos, peer, T, train=True, batch=batch), make, batches, rounds))
    return out


def summary(row: dict) -> str:
    b = row["breakdown"]
    c, need, rate = b["cold"], b["needed"], lambda k: f"{row[k]['clips_per_s']:.0f}"  # noqa: E731
    return (f"T={row['T']}: clips/s (best of rounds) cold {rate('cold')}, with read-ahead {rate('cold_read_ahead')}, "
            f"warm {rate('warm')}; .npy cold {rate('npy_cold')}, warm {rate('npy_warm')} | one cold epoch: "
            f"{c['wall_s']:.2f} s, cpu {c['cpu_s']:.2f} s, {c['read_bytes'] / 1e6:.0f} MB from storage in "
            f"{c['syscr']} read calls for {need['frame_bytes'] / 1e6:.0f} MB of frames in "
            f"{need['chunk_bytes'] / 1e6:.0f} MB of chunks; page cache warm: {b['uncached']['wall_s']:.2f} s; "
            f"pread replay x1 {b['replay_pread_1']['wall_s']:.2f} s, x8 {b['replay_pread_8']['wall_s']:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON results file")
    ap.add_argument("--work", type=Path, required=True, help="folder for the store and the .npy files (kept)")
    ap.add_argument("--videos", type=int, default=600)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the timed cases (best counts)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a loader process
    path = make_store(args.work / f"d{args.dim}_{args.videos}x{args.frames}.zarr", args.videos, args.frames, args.dim)
    npy = export(TokenStore.open(path), path.with_suffix(".peers"), hdf5=False)["npy"]
    results = {"command": " ".join([Path(sys.executable).name] + sys.argv), "load_before": os.getloadavg(),
               "provenance": provenance(), "store_bytes": sum(f.stat().st_size for f in store_files(path)),
               "layout": TokenStore.open(path).layout.to_dict(), "cases": []}
    for T in args.T:
        row = profile_T(path, npy, T, args.batch, args.rounds)
        results["cases"].append(row)
        print(summary(row), flush=True)
    results["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
