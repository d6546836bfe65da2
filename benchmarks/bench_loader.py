"""Stage-2 loader throughput, no model: clips/s of the training DataLoader per reader, against this machine's limits.

    python benchmarks/bench_loader.py --out benchmarks/results/loader.json            # full (~15 min on 2 cores)
    python benchmarks/bench_loader.py --quick --out /tmp/loader_quick.json            # small (~1 min)
    python benchmarks/bench_loader.py --dims 768 --clip-lengths 32,128 --workers 0 --batch 32 \
        --out /tmp/loader_issue24.json                                                 # issue 24's setup (~3 min)

Stores of `--videos` videos × `--frames` frames of fp16 `cls` tokens (D = 768 and 1408), written with the store API
in the layout `extract` makes (64-frame chunks, shards of ~32 MiB). For each clip length T, store and number of
DataLoader workers (0 = the main process, 1, 4), an epoch goes through `training.loop._loader` (fit's own DataLoader:
sampler, batch collation, spawned workers) exactly as training reads it:

- `memory`: `MemoryBatches` (read once, not timed here; `load_s` says how long);
- `random_cold`: `--read random` from a fresh `StoreBatches`, the store's pages dropped from the page cache
  (`posix_fadvise(DONTNEED)` after `fsync`);
- `random_warm`: the next epoch, same reader (with workers, `fit` starts new ones each epoch: their chunk caches
  start empty and only the page cache is warm);
- `sequential_cold`: `--read sequential` from a fresh reader, page cache dropped (a run's first epoch: it also
  pays for first touching the reader's memory); `sequential_cold_next` (no workers): its next epoch, the page
  cache dropped again (every later epoch of a run whose store the page cache cannot hold); `sequential_warm`: the
  next epochs (every part read again, now from the page cache);
- `npy_*`, `hdf5_*` (no workers; `peer_readers.py`, h5py from the `bench` extra): the same clips from one `.npy`
  per video (memory maps) and from one HDF5 file, cold (their files dropped, maps opened afresh) and warm.

Reference points in the same run: `raw_gather` (the clips' rows gathered from one in-RAM fp16 array with
`np.take`, the fastest numpy gather, indices precomputed: the limit of any in-memory loader here),
`worker_transfer` (with workers: a bare spawned DataLoader whose workers only make batches of zeros of the same
shape, the limit of anything that runs in DataLoader workers here) and `file_read` (the shard files read whole with
os.read, 8 MiB at a time: cold after dropping the page cache, and warm). Ratios are against those. `reference_per_clip` times the
per-clip path the batch readers replaced (`dataset[i]` + stacking, float32), at T=128 D=768 in one process.
`codec` compares zarr's default codec pipeline with `zarrs` (Rust) reading every shard whole and random chunks.

Every epoch is handed the sampler's order first (`follow`), as `fit` does. clips/s of a case is clips / seconds of
a whole epoch in one process; with workers, from the first batch of the last worker to the end (their start-up,
paid once per epoch by `fit`, is `start_s`). With workers an epoch lists every video 4 times (4 clips of each), so
that it lasts long against the workers' start, and every case is one epoch. Without workers, the warm cases and
the raw gather run in 3 interleaved rounds of at least `--min-seconds` each (whole epochs or passes), and so do
the cold cases (one epoch of a fresh reader each, the cold file read just before the sequential ones): the best of
each counts, the machine is shared and interleaving exposes all of them to the same load. One-process cases also
give clips per second of the process's CPU time (`cpu_clips_per_s`, `*_cpu` ratios), which other load changes less.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vivitcache.provenance import provenance
from vivitcache.store import StoreLayout, StoreWriter, TokenStore
from vivitcache.store.writer import plan_parts
from vivitcache.store.writer import shard_frames_for
from vivitcache.train_temporal.batches import MemoryBatches, StoreBatches
from vivitcache.train_temporal.clip_frames import clip_keys, train_clips
from vivitcache.train_temporal.config import AugmentConfig
from vivitcache.train_temporal.dataset import TokenClipDataset, VideoEntry, collate_batch
from vivitcache.training.loop import _loader
from vivitcache.training.sampler import ResumableSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clip_readers import InMemoryFeatures, StreamedFeatures  # noqa: E402 — the per-clip reference, kept with the tests

import peer_readers  # noqa: E402 — the .npy and HDF5 peers, next to this file


# ---------------------------------------------------------------------------------------------------- store + cache
def make_store(path: Path, videos: int, frames: int, dim: int, per_part: int = 32) -> Path:
    """A store as `extract` lays it out for fp16 `cls` tokens; reused when it is already there."""
    if (path / "zarr.json").is_file():
        return path
    chunk = 64
    layout = StoreLayout("cls", 1, dim, "fp16", shard_frames=shard_frames_for(dim * 2, chunk), chunk_frames=chunk)
    writer = StoreWriter.create_or_open(path, {"model": "bench", "weights_sha256": "bench"}, layout, ["a", "b"], {})
    rng = np.random.default_rng(0)
    ids = [f"v{i:06d}" for i in range(videos)]
    for part in plan_parts(ids, per_part):
        with writer.part(part.part_id) as pw:
            for vid in part.ids:
                pw.begin_video(vid, int(vid[1:]) % 2, f"{vid}.mp4", 25.0)
                pw.append(rng.standard_normal((frames, 1, dim), dtype=np.float32), np.arange(frames) / 25.0)
                pw.end_video()
    return path


def store_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def drop_page_cache(path: Path | list[Path]) -> None:
    """Evict a store's files (or these files) from the page cache (clean pages only: fsync first). Pages mapped by
    a live memory map stay: close the maps first."""
    for f in store_files(path) if isinstance(path, Path) else path:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_files(files: list[Path]) -> int:
    """Read the files whole, 8 MiB at a time; returns the bytes read."""
    total = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(8 << 20):
                total += len(chunk)
    return total


def file_read_bandwidth(path: Path) -> dict:
    """MB/s reading every shard file whole (cold, then warm)."""
    shards = [f for f in store_files(path) if f.parent.name == "0" and "/tokens/c/" in str(f)]
    total = sum(f.stat().st_size for f in shards)
    out = {"shard_files": len(shards), "bytes": total}
    for kind in ("cold", "warm"):
        if kind == "cold":
            drop_page_cache(path)
        t = time.perf_counter()
        read_files(shards)
        out[f"{kind}_mb_per_s"] = total / 1e6 / (time.perf_counter() - t)
    return out


# ---------------------------------------------------------------------------------------------------- cases
def entries(store: TokenStore) -> list[VideoEntry]:
    return [VideoEntry(v, store.num_frames(v), store.label(v)) for v in store.ids()]


def run_epochs(ds: TokenClipDataset, batch: int, workers: int, epochs: int | None, min_seconds: float,
               first_epoch: int = 0) -> dict:
    """Iterate fit's DataLoader over whole epochs: at least `min_seconds`, or exactly `epochs`."""
    clips, seconds, start, epoch, rates, cpu_rates = 0, 0.0, 0.0, first_epoch, [], []
    while (epochs is None and seconds < min_seconds) or (epochs is not None and epoch - first_epoch < epochs):
        sampler = ResumableSampler(len(ds), 0, shuffle=True, order=ds.epoch_order)
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        ds.follow(list(sampler))  # as fit does: the order the read-ahead walks
        t0, c0 = time.perf_counter(), time.process_time()
        it = iter(_loader(ds, batch, sampler, workers))
        first = sum(len(next(it)[0]) for _ in range(max(1, workers)))  # every worker has delivered a batch
        t1 = time.perf_counter()
        # with workers: the clips after the first batches, over the time after them; in one process: the whole epoch
        n, since = (0, t1) if workers else (first, t0)
        for x, _ in it:
            n += len(x)
        t2, c2 = time.perf_counter(), time.process_time()
        start += t1 - t0
        clips += n
        seconds += t2 - since
        rates.append(n / max(t2 - since, 1e-9))
        cpu_rates.append(n / max(c2 - c0, 1e-9) if not workers else None)  # this process's CPU time, one process
        epoch += 1
    return {"clips_per_s": max(rates), "median_clips_per_s": float(np.median(rates)), "seconds": seconds,
            "start_s": start, "epochs": epoch - first_epoch, "next_epoch": epoch,
            "cpu_clips_per_s": None if workers else max(cpu_rates)}


def raw_gather(features: np.ndarray, base: np.ndarray, table, T: int, batch: int, min_seconds: float
               ) -> tuple[float, float]:
    """clips/s of `features[rows]` alone (video i's frames start at row `base[i]`): the rows of whole batches
    precomputed with the clip rule, in random order. (per second of wall time, per second of CPU time)"""
    n = len(table.frames)
    order = np.random.default_rng(0).permutation(n)
    rows = []
    for i in range(0, n - batch + 1, batch):
        b = order[i : i + batch]
        idx = train_clips(table.frames[b], T, clip_keys(0, 0, b), AugmentConfig()).indices  # [B, T]
        rows.append(base[b][:, None] + idx)
    rates, cpu_rates, t = [], [], time.perf_counter()
    while time.perf_counter() - t < min_seconds:  # passes over the epoch's batches: the best pass counts
        t1, c1 = time.perf_counter(), time.process_time()
        for r in rows:
            np.take(features, r, axis=0)  # [B, T, D]; the fastest numpy gather (a[r] is ~25 % slower)
        rates.append(sum(map(len, rows)) / (time.perf_counter() - t1))
        cpu_rates.append(sum(map(len, rows)) / max(time.process_time() - c1, 1e-9))
    return max(rates), max(cpu_rates)


class ZeroBatches(torch.utils.data.Dataset):
    """Batches of zeros of one clip shape, made in a DataLoader worker: what moving batches between processes costs."""

    def __init__(self, n: int, shape: tuple[int, ...]):
        self.n, self.shape = n, shape

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.zeros((len(indices),) + self.shape, dtype=torch.float16)  # [B, T, D]


def worker_transfer(workers: int, batch: int, T: int, dim: int, clips: int) -> float:
    """clips/s of a bare spawned DataLoader whose workers only make fp16 batches of zeros [batch, T, dim]: the limit
    of any loader that runs in DataLoader workers on this machine (torch moves each batch through shared memory)."""
    dl = torch.utils.data.DataLoader(ZeroBatches(clips, (T, dim)), batch_size=batch, num_workers=workers,
                                     multiprocessing_context="spawn", collate_fn=collate_batch)
    it = iter(dl)
    for _ in range(workers):  # every worker has started
        next(it)
    t, n = time.perf_counter(), 0
    for x in it:
        n += len(x)
    return n / (time.perf_counter() - t)


def per_clip_reference(ds: TokenClipDataset, batch: int, min_seconds: float) -> float:
    """clips/s of the per-clip path (`dataset[i]`, float32, stacked per batch), in one process."""
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    clips, t = 0, time.perf_counter()
    while time.perf_counter() - t < min_seconds:
        for i in range(0, len(order) - batch + 1, batch):
            torch.stack([ds[j][0] for j in order[i : i + batch]])
            clips += batch
    return clips / (time.perf_counter() - t)


def codec_pipelines(path: Path, store: TokenStore, min_seconds: float) -> dict:
    """zarr's default codec pipeline vs zarrs': every part read whole (warm), and random single-chunk reads."""
    import zarr

    out = {}
    pipelines = {"zarr": "zarr.core.codec_pipeline.BatchedCodecPipeline", "zarrs": "zarrs.ZarrsCodecPipeline"}
    try:
        import zarrs  # noqa: F401
    except ImportError:
        pipelines.pop("zarrs")
    parts = store.part_ids()
    for name, pipeline in pipelines.items():
        with zarr.config.set({"codec_pipeline.path": pipeline}):
            arrays = [zarr.open_array(str(path / "parts" / p / "tokens"), mode="r") for p in parts]
            nbytes = sum(a.nbytes for a in arrays)
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < min_seconds:
                for a in arrays:
                    a[:]
                n += 1
            whole = nbytes * n / 1e6 / (time.perf_counter() - t)
            rng = np.random.default_rng(0)
            cf = arrays[0].chunks[0]
            t, reads = time.perf_counter(), 0
            while time.perf_counter() - t < min_seconds:
                a = arrays[int(rng.integers(len(arrays)))]
                c = int(rng.integers(a.shape[0] // cf))
                a[c * cf : (c + 1) * cf]
                reads += 1
            out[name] = {"whole_parts_mb_per_s": whole, "chunk_reads_per_s": reads / (time.perf_counter() - t)}
    return out


def cold_case(ds: TokenClipDataset, files: Path | list[Path], batch: int, workers: int, first_epoch: int = 0) -> dict:
    """One epoch of `ds` after dropping its reader's files from the page cache (peers: their maps closed first)."""
    getattr(ds.features, "reset", lambda: None)()
    drop_page_cache(files)
    return run_epochs(ds, batch, workers, 1, 0, first_epoch=first_epoch)


def bench_case(path: Path, memory: MemoryBatches, peers: dict, T: int, workers: int, batch: int, min_seconds: float,
               cache: int) -> dict:
    """One row: every reader at clip length T with `workers` DataLoader workers (peers in one process only)."""
    row: dict = {"T": T, "workers": workers}
    base_videos = entries(memory.store)
    table = memory.table([v.id for v in base_videos])
    base = memory.base[table.part] + table.offset  # [N] first row of each video in the one array
    # with workers, an epoch must be long against their start: every video 4 times (4 clips each)
    videos = base_videos * (4 if workers else 1)
    mem = TokenClipDataset(videos, memory, T, train=True, batch=batch)
    peer_sets = {} if workers else {name: TokenClipDataset(videos, reader, T, train=True, batch=batch)
                                    for name, reader in peers.items()}
    # cold cases in interleaved rounds too (one with workers), each reader fresh, the best round of each counts
    cold: dict[str, list] = {}
    for _ in range(1 if workers else 3):
        drop_page_cache(path)
        rnd = TokenClipDataset(videos, StoreBatches(path, "cls", cache), T, train=True, batch=batch, read_ahead=32)
        cold.setdefault("random_cold", []).append(run_epochs(rnd, batch, workers, 1, 0))
        rnd.stop_read_ahead()
        for name, ds in peer_sets.items():  # the same clips as `random_cold` (epoch 0)
            cold.setdefault(f"{name}_cold", []).append(cold_case(ds, ds.features.files(), batch, workers))
        drop_page_cache(path)
        cold.setdefault("file_read_cold", []).append(file_read_bandwidth(path)["cold_mb_per_s"])  # just before
        drop_page_cache(path)
        seq = TokenClipDataset(videos, StoreBatches(path, "cls"), T, train=True, batch=batch, read="sequential",
                               streams=4, shuffle_buffer=512)
        cold.setdefault("sequential_cold", []).append(run_epochs(seq, batch, workers, 1, 0))
        if workers == 0:  # the epochs after the first: the same process, the page cache dropped again
            cold.setdefault("sequential_cold_next", []).append(cold_case(seq, path, batch, workers, first_epoch=1))
    row["file_read_cold_mb_per_s"] = max(cold.pop("file_read_cold"))
    row |= {name: max(runs, key=lambda x: x["clips_per_s"]) for name, runs in cold.items()}
    # warm cases in interleaved rounds with the raw gather, the best round of each counts (shared machine)
    warm = {"memory": (mem, 0), "random_warm": (rnd, 1), "sequential_warm": (seq, 1)}
    warm |= {f"{name}_warm": (ds, 1) for name, ds in peer_sets.items()}
    for ds in peer_sets.values():  # every page of their files in the page cache, as the store's after its epochs
        read_files(ds.features.files())
    rounds: dict[str, list] = {"raw": []} | {name: [] for name in warm}
    for r in range(1 if workers else 3):
        rounds["raw"].append(raw_gather(memory.features.numpy(), base, table, T, batch, min_seconds))
        once = dict(epochs=1 if workers else None, min_seconds=min_seconds)
        for name, (ds, first) in warm.items():
            rounds[name].append(run_epochs(ds, batch, workers, first_epoch=first + 10 * r, **once))
    rnd.stop_read_ahead()
    raw = rounds.pop("raw")
    row["raw_gather_clips_per_s"], row["raw_gather_cpu_clips_per_s"] = max(r[0] for r in raw), max(r[1] for r in raw)
    if workers:
        row["worker_transfer_clips_per_s"] = worker_transfer(workers, batch, T, memory.rule.dim, len(videos))
    for name, runs in rounds.items():
        row[name] = max(runs, key=lambda x: x["clips_per_s"])
    row["ratios"] = ratios(row, memory.store, path)
    return row


def ratios(row: dict, store: TokenStore, path: Path) -> dict:
    """The row's figures against their limits and peers (None where the row has no such case)."""
    rate = {k: v["clips_per_s"] for k, v in row.items() if isinstance(v, dict) and "clips_per_s" in v}
    limit, workers = row["raw_gather_clips_per_s"], row["workers"]
    store_bytes = sum(f.stat().st_size for f in store_files(path))
    file_read = row["file_read_cold_mb_per_s"] * 1e6

    def per(a: str, b: str) -> float | None:
        return rate[a] / rate[b] if a in rate and b in rate else None

    return {
        "memory_vs_raw_gather": rate["memory"] / limit,
        # per second of this process's CPU time (one process): what the machine's other load does not change
        "memory_vs_raw_gather_cpu": row["memory"]["cpu_clips_per_s"] / row["raw_gather_cpu_clips_per_s"]
        if workers == 0 else None,
        "random_warm_vs_raw_gather": rate["random_warm"] / limit,
        # with workers, against what torch's DataLoader moves between processes here at all
        "memory_vs_worker_transfer": rate["memory"] / row["worker_transfer_clips_per_s"] if workers else None,
        # bytes the sequential epoch read (the whole store) per second of the epoch, vs reading the files (one
        # process, whose epoch time covers every batch; with workers the epoch holds every video 4 times)
        "sequential_cold_vs_file_read": store_bytes / row["sequential_cold"]["seconds"] / file_read
        if workers == 0 else None,
        "sequential_cold_next_vs_file_read": store_bytes / row["sequential_cold_next"]["seconds"] / file_read
        if workers == 0 else None,
        "random_cold_vs_npy_cold": per("random_cold", "npy_cold"),
        "random_warm_vs_npy_warm": per("random_warm", "npy_warm"),
        "random_warm_vs_npy_warm_cpu": row["random_warm"]["cpu_clips_per_s"] / row["npy_warm"]["cpu_clips_per_s"]
        if "npy_warm" in row else None,
        "random_cold_vs_hdf5_cold": per("random_cold", "hdf5_cold"),
        "sequential_cold_vs_npy_cold": per("sequential_cold", "npy_cold"),
    }


def bench_store(path: Path, dim: int, Ts: list[int], workers_list: list[int], batch: int, min_seconds: float,
                reference: bool) -> dict:
    store = TokenStore.open(path)
    base_videos = entries(store)
    result: dict = {"dim": dim, "videos": len(base_videos), "frames_per_video": base_videos[0].num_frames,
                    "store_bytes": sum(f.stat().st_size for f in store_files(path)),
                    "layout": store.layout.to_dict(), "file_read": file_read_bandwidth(path)}
    t = time.perf_counter()
    memory = MemoryBatches(path, "cls")
    result["memory_load_s"] = time.perf_counter() - t
    cache = 2 * result["store_bytes"]
    result["codec"] = codec_pipelines(path, store, min_seconds / 2)
    peers = {}
    if 0 in workers_list:
        files = peer_readers.export(store, path.with_suffix(".peers"))
        frames = {v.id: v.num_frames for v in base_videos}
        peers = {"npy": peer_readers.NpyBatches(files["npy"], frames, memory.rule.dim, memory.rule.dtype),
                 "hdf5": peer_readers.Hdf5Batches(files["hdf5"], frames, memory.rule.dim, memory.rule.dtype)}
        result["peer_bytes"] = {name: sum(f.stat().st_size for f in reader.files()) for name, reader in peers.items()}
    cases = []
    for T in Ts:
        for workers in workers_list:
            row = bench_case(path, memory, peers, T, workers, batch, min_seconds, cache)
            cases.append(row)
            print(json.dumps({k: (v["clips_per_s"] if isinstance(v, dict) and "clips_per_s" in v else v)
                              for k, v in row.items() if k != "ratios"} | row["ratios"]), flush=True)
    if reference:
        T = 128 if 128 in Ts else Ts[-1]
        result["reference_per_clip"] = {
            "T": T,
            "memory_clips_per_s": per_clip_reference(
                TokenClipDataset(base_videos, InMemoryFeatures(path, "cls"), T, train=True), batch, min_seconds),
            "streamed_warm_clips_per_s": per_clip_reference(
                TokenClipDataset(base_videos, StreamedFeatures(path, "cls", cache), T, train=True), batch,
                min_seconds),
        }
    result["cases"] = cases
    return result


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small: 48 videos of 200 frames, D=768, T=32, no workers")
    ap.add_argument("--out", type=Path, required=True, help="JSON results file")
    ap.add_argument("--work", type=Path, default=None, help="folder for the stores (default: a temp folder, removed)")
    ap.add_argument("--videos", type=int, default=600)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--dims", type=ints, default=[768, 1408], help="token widths, comma-separated (default 768,1408)")
    ap.add_argument("--clip-lengths", type=ints, default=[32, 128], help="clip lengths T (default 32,128)")
    ap.add_argument("--workers", type=ints, default=[0, 1, 4],
                    help="DataLoader workers per case (default 0,1,4); the .npy and HDF5 peers run with 0 only")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.frames, args.min_seconds, args.batch = 48, 200, 0.5, 16
        args.dims, args.clip_lengths, args.workers = [768], [32], [0]
    dims, Ts, workers = args.dims, args.clip_lengths, args.workers
    if 0 in workers and importlib.util.find_spec("h5py") is None:
        raise SystemExit(f"error: {peer_readers.H5PY_HINT}")
    torch.set_num_threads(1)  # as in a loader process; the gathers are single-threaded numpy
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        results = {
            "command": " ".join([Path(sys.executable).name] + sys.argv),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "provenance": provenance(),
            "batch": args.batch,
            "stores": [],
        }
        for dim in dims:
            path = make_store(work / f"d{dim}_{args.videos}x{args.frames}.zarr", args.videos, args.frames, dim)
            results["stores"].append(bench_store(path, dim, Ts, workers, args.batch, args.min_seconds,
                                                 reference=dim == 768))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
