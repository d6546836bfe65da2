"""Extraction throughput: decode-only, model-only and full extraction frames/s, and 2 Dask workers vs 1.

    python benchmarks/bench_extract.py --out bench_out/extract --videos 48 --frames 64 --size 128 \
        --model vit-ti --img-size 112

Prints a Markdown table and writes `<out>/bench_extract.json`. What each row measures:
- decode-only: `PrefetchingDecoder` alone (PyAV decode + resize + crop + normalise on `--decode-threads` threads);
- model-only: `frame_tokens` on random batches of `--batch-size` frames (`--torch-threads` threads, inference mode);
- extract (in-process): `run_extract(workers=0)`, the same decode threads and torch threads, into a fresh store;
  goal: at least 90 % of the smaller of the two rows above (decoding and the model overlap, neither waits).
  "frames/s" is end to end (the summary's); "parts only" leaves out the one-off model build, weights hash, store
  creation and consolidation (seconds, whatever the dataset size), and is what the ratios compare;
- extract, Dask 1 / 2 workers: `run_extract` against an already-started LocalCluster (startup not timed), each worker
  with `--torch-threads` torch threads and `--decode-threads` decode threads; goal: 2 workers ≥ 1.7× one worker
  where the machine has the cores for two workers' decode + model threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out/extract", help="Work folder (synth data, stores, JSON result).")
    p.add_argument("--videos", type=int, default=48, help="Synthetic videos.")
    p.add_argument("--frames", type=int, default=64, help="Frames per video.")
    p.add_argument("--size", type=int, default=128, help="Synthetic video side in pixels.")
    p.add_argument("--model", default="vit-ti", help="Spatial ViT alias or timm name (random init).")
    p.add_argument("--img-size", type=int, default=112, help="Spatial input size.")
    p.add_argument("--tokens", default="cls", choices=["cls", "cls+mean", "all"], help="Stored tokens.")
    p.add_argument("--batch-size", type=int, default=32, help="Frames per forward.")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads (per worker).")
    p.add_argument("--decode-threads", type=int, default=1, help="Decode threads (per worker).")
    p.add_argument("--videos-per-part", type=int, default=4, help="Videos per part (Dask task).")
    p.add_argument("--skip-dask", action="store_true", help="Only the in-process rows.")
    return p.parse_args()


def make_config(args, data: Path, store: Path, **kw):
    from vivitcache.extract import ExtractConfig

    return ExtractConfig(
        data=str(data), store=str(store), model=args.model, img_size=args.img_size, tokens=args.tokens,
        batch_size=args.batch_size, torch_threads=args.torch_threads, decode_threads=args.decode_threads,
        videos_per_part=args.videos_per_part, progress=False, **kw,
    )


def bench_decode(args, data: Path) -> dict:
    """Frames/s of decode + preprocess alone, through the extraction's own prefetching decoder."""
    from vivitcache.data.annotations import load_annotations
    from vivitcache.extract.pipeline import PartSettings, PrefetchingDecoder
    from vivitcache.extract.source import resolve_source

    source, _ = resolve_source(make_config(args, data, Path("unused")))
    settings = PartSettings(
        preprocess=source.preprocess, fps=None, stride=None, tokens=args.tokens, store_dtype="fp16",
        batch_size=args.batch_size, device="cpu", decode_threads=args.decode_threads, prefetch_frames=256,
        torch_threads=None,
    )
    records = load_annotations(data).records
    frames, start = 0, time.perf_counter()
    with PrefetchingDecoder(records, settings) as decoder:
        for _, events in decoder:
            for event in events:
                if event[0] == "frames":
                    frames += len(event[1])
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds}


def bench_model(args, frames: int) -> dict:
    """Frames/s of the spatial model alone on random preprocessed batches (inference mode, fp32 on CPU)."""
    from vivitcache.models import create_spatial, frame_tokens

    before = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)
    try:
        torch.manual_seed(0)
        model = create_spatial(args.model, img_size=args.img_size).eval()
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)  # [B, 3, S, S]
        with torch.inference_mode():
            frame_tokens(model, x, args.tokens)  # warm-up
            done, start = 0, time.perf_counter()
            while done < frames:
                frame_tokens(model, x, args.tokens)  # [B, K, D]
                done += args.batch_size
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return {"frames": done, "seconds": seconds, "frames_per_s": done / seconds}


def bench_extract(args, data: Path, store: Path, **kw) -> dict:
    """run_extract end to end (summary), and the fan-out alone: the parts' wall time, without the one-off model
    build + weights hash, store creation and consolidation (what a long extraction converges to)."""
    import vivitcache.extract.runner as runner

    shutil.rmtree(store, ignore_errors=True)
    fanout = []

    def timed(fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                fanout.append(time.perf_counter() - start)
        return wrapper

    in_process, on_dask = runner._run_in_process, runner._run_on_dask
    runner._run_in_process, runner._run_on_dask = timed(in_process), timed(on_dask)
    try:
        summary = runner.run_extract(make_config(args, data, store, **kw))
    finally:
        runner._run_in_process, runner._run_on_dask = in_process, on_dask
    return {"frames": summary["frames"], "seconds": summary["seconds"], "frames_per_s": summary["frames_per_s"],
            "fanout_seconds": fanout[0], "fanout_frames_per_s": summary["frames"] / fanout[0]}


def bench_dask(args, data: Path, out: Path, workers: int) -> dict:
    """run_extract on an already running LocalCluster (cluster startup and worker imports not timed)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("vivitcache.extract.runner"))  # imports torch/timm/zarr in every worker
        store = out / f"dask{workers}.zarr"
        return bench_extract(args, data, store, workers=workers, scheduler=cluster.scheduler_address)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from vivitcache.data.synth import make_synth_dataset

    data = out / "synth"
    classes = 8
    if not (data / "labels.csv").is_file():
        make_synth_dataset(data, classes=classes, videos_per_class=max(1, args.videos // classes),
                           frames=args.frames, size=args.size, seed=0)
    data = data / "labels.csv"

    rows = {}
    rows["decode-only"] = bench_decode(args, data)
    rows["model-only"] = bench_model(args, rows["decode-only"]["frames"] // 2)
    rows["extract (in-process)"] = bench_extract(args, data, out / "inproc.zarr", workers=0)
    if not args.skip_dask:
        rows["extract, Dask 1 worker"] = bench_dask(args, data, out, 1)
        rows["extract, Dask 2 workers"] = bench_dask(args, data, out, 2)

    bound = min(rows["decode-only"]["frames_per_s"], rows["model-only"]["frames_per_s"])
    steady = lambda name: rows[name]["fanout_frames_per_s"]  # noqa: E731
    ratios = {"extract / min(decode, model)": steady("extract (in-process)") / bound}
    if not args.skip_dask:
        ratios["2 workers / 1 worker"] = steady("extract, Dask 2 workers") / steady("extract, Dask 1 worker")
    print(f"\n{args.model} @ {args.img_size}px, tokens={args.tokens}, {rows['decode-only']['frames']} frames of "
          f"{args.size}px H.264, batch {args.batch_size}, torch threads {args.torch_threads}, decode threads "
          f"{args.decode_threads} (per worker), {os.cpu_count()} CPU cores\n")
    print("| measurement | frames | seconds | frames/s | frames/s, parts only |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        parts = f"{r['fanout_frames_per_s']:.1f}" if "fanout_frames_per_s" in r else ""
        print(f"| {name} | {r['frames']} | {r['seconds']:.2f} | {r['frames_per_s']:.1f} | {parts} |")
    for name, value in ratios.items():
        print(f"| **{name}** (parts only) | | | | **{value:.2f}** |")
    result = {"args": vars(args), "cpu_count": os.cpu_count(), "rows": rows, "ratios": ratios,
              "torch": torch.__version__, "numpy": np.__version__}
    (out / "bench_extract.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / 'bench_extract.json'}")


if __name__ == "__main__":
    main()
