"""Stage-2 training benchmark: does streaming tokens from the store keep up, and what does 128 frames cost?

1. Epoch time of `run_train` on the same store and model: frame features already in memory (`--in-memory`) vs
   streamed from the store (chunk reads through the LRU cache, read-ahead thread), once with a cache that holds the
   store and once with a cache far smaller than it (every epoch reads every chunk again). Goal: streamed ≤ 1.10×.
2. Peak memory (process RSS, sampled by the training loop) of stage 2 at T=128 frames of ViT-g-width tokens
   (D=1408) at batch 4, on stores made by a 40-block `vit-g` and by a 12-block `vit-ti`-like model of the same
   width: the spatial model never runs in stage 2, so its depth cannot change the figure. Goal: < 2 GB on CPU.

Each measurement runs in a fresh subprocess (so peak RSS is its own). Prints Markdown, writes JSON.

    .venv/bin/python benchmarks/bench_train.py --out bench_train.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_store(path: Path, videos: int, frames: int, dim: int, model: str, depth: int, classes: int, seed: int) -> Path:
    """A token store of random CLS tokens (fp16, shards of 256 frames, chunks of 64 as `extract` makes for cls)."""
    from vivitcache.store import StoreLayout, StoreWriter
    from vivitcache.store.writer import plan_parts

    if (path / "zarr.json").exists():
        return path
    rng = np.random.default_rng(seed)
    fingerprint = {"model": model, "depth": depth, "embed_dim": dim, "weights_sha256": f"bench-{model}-{depth}"}
    layout = StoreLayout("cls", 1, dim, "fp16", shard_frames=256, chunk_frames=64)
    names = [f"class{c}" for c in range(classes)]
    writer = StoreWriter.create_or_open(path, fingerprint, layout, names, {"made_by": "benchmarks/bench_train.py"})
    ids = [f"v{i:05d}" for i in range(videos)]
    for part in plan_parts(ids, 32):
        with writer.part(part.part_id) as pw:
            for vid in part.ids:
                pw.begin_video(vid, int(vid[1:]) % classes, f"{vid}.mp4", 25.0)
                pw.append(rng.standard_normal((frames, 1, dim), dtype=np.float32), np.arange(frames) / 25.0)
                pw.end_video()
    writer.consolidate()
    return path


def child(spec: dict) -> dict:
    """One `run_train` in this (fresh) process, or with spec["loader_only"] one pass over its training clips."""
    import torch

    from vivitcache.config import ModelConfig, OptimConfig, RunConfig
    from vivitcache.train_temporal import TrainConfig, run_train
    from vivitcache.training.runtime import _rss_bytes

    torch.set_num_threads(spec["threads"])
    baseline = _rss_bytes()  # torch, timm, zarr imported: shared libraries mapped, no tensor yet
    cfg = TrainConfig(
        store=spec["store"], frames=spec["frames"], init=None, in_memory=spec["in_memory"],
        cache_mb=spec["cache_mb"], read_ahead=spec["read_ahead"], val_fraction=0.0,
        model=ModelConfig(temporal_dim=spec["temporal_dim"], temporal_depth=spec["temporal_depth"]),
        optim=OptimConfig(epochs=spec["epochs"], batch_size=spec["batch"], warmup_epochs=0.0, precision="fp32"),
        run=RunConfig(out=spec["out"], device="cpu", workers=spec["workers"], log_every=10**6),
    )
    if spec.get("loader_only"):
        return loader_pass(cfg)
    t0 = time.perf_counter()
    summary = run_train(cfg)
    return {
        "total_seconds": time.perf_counter() - t0,
        "fit_seconds": summary["seconds"],
        "epoch_seconds": summary["seconds"] / spec["epochs"],
        "peak_memory_bytes": summary["peak_memory_bytes"],
        "baseline_rss_bytes": baseline,
        "params": summary["params"],
        "steps": summary["steps"],
    }


def loader_pass(cfg) -> dict:
    """Seconds to build every training clip of `cfg.optim.epochs` epochs in fit's order, without a model."""
    from vivitcache.store import TokenStore
    from vivitcache.train_temporal.dataset import TokenClipDataset
    from vivitcache.train_temporal.run import _features, labelled_videos
    from vivitcache.training.sampler import ResumableSampler

    store = TokenStore.open(cfg.store)
    t0 = time.perf_counter()
    features = _features(store.path, "cls", cfg.in_memory, cfg.cache_mb)
    setup = time.perf_counter() - t0
    dataset = TokenClipDataset(labelled_videos(store), features, cfg.frames, train=True, read_ahead=0)
    epochs = []
    for epoch in range(cfg.optim.epochs):
        dataset.set_epoch(epoch)
        sampler = ResumableSampler(len(dataset), cfg.run.seed, shuffle=True)
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for i in sampler:  # fit's order
            dataset[i]
        epochs.append(time.perf_counter() - t0)
    return {"setup_seconds": setup, "epoch_seconds": epochs}


def run_child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_train.json", help="JSON results file.")
    p.add_argument("--work", default=None, help="Folder for stores and runs (default: a temporary one).")
    p.add_argument("--videos", type=int, default=64, help="Videos in the epoch-time store.")
    p.add_argument("--video-frames", type=int, default=300, help="Frames per video (Kinetics: 10 s at 30 fps).")
    p.add_argument("--dim", type=int, default=1408, help="Token width D (1408: ViT-g).")
    p.add_argument("--frames", type=int, default=128, help="Clip length T of stage 2.")
    p.add_argument("--batch", type=int, default=8, help="Batch size of the epoch-time runs.")
    p.add_argument("--epochs", type=int, default=2, help="Epochs per epoch-time run.")
    p.add_argument("--temporal-dim", type=int, default=384, help="Temporal width of the epoch-time model.")
    p.add_argument("--temporal-depth", type=int, default=4, help="Temporal blocks (both parts).")
    p.add_argument("--small-cache-mb", type=float, default=8.0, help="Cache of the 'cache ≪ store' streamed run.")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: stable figures on a shared machine).")
    p.add_argument("--rounds", type=int, default=3, help="Rounds of the epoch-time runs (fastest kept per mode).")
    p.add_argument("--memory-batch", type=int, default=4, help="Batch size of the peak-memory runs.")
    p.add_argument("--narrow-dim", type=int, default=768, help="Temporal width of the narrower peak-memory model.")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    store = make_store(work / "epoch.zarr", args.videos, args.video_frames, args.dim, "vit_giant_patch14_224", 40, 8, 0)
    store_mb = args.videos * args.video_frames * args.dim * 2 / 2**20
    base = {"store": str(store), "frames": args.frames, "epochs": args.epochs, "batch": args.batch,
            "temporal_dim": args.temporal_dim, "temporal_depth": args.temporal_depth, "threads": args.threads,
            "workers": 0, "read_ahead": 32, "cache_mb": 4 * store_mb, "in_memory": False}
    modes = {
        "in memory": {"in_memory": True},
        "streamed, cache ≥ store": {},
        f"streamed, cache {args.small_cache_mb:g} MiB ≪ store": {"cache_mb": args.small_cache_mb},
        f"streamed, cache {args.small_cache_mb:g} MiB, no read-ahead": {"cache_mb": args.small_cache_mb, "read_ahead": 0},
    }
    # the machine may be shared: modes alternate within each round, and each mode keeps its fastest round
    rounds: dict[str, list[dict]] = {name: [] for name in modes}
    for r in range(args.rounds):
        for name, extra in modes.items():
            result = run_child({**base, **extra, "out": str(work / f"run_{r}_{len(rounds[name])}_{hash(name) & 0xffff}")})
            rounds[name].append(result)
            print(f"  round {r + 1}: {name}: {result['epoch_seconds']:.2f} s/epoch", file=sys.stderr)
    timing = {name: min(rs, key=lambda x: x["epoch_seconds"]) for name, rs in rounds.items()}
    loader = {name: run_child({**base, **extra, "loader_only": True, "out": str(work / "loader")})
              for name, extra in list(modes.items())[:3]}

    # peak memory at T=128, D=1408, batch 4: the default stage-2 model (temporal width = D) and a narrower one
    memory = {}
    for model, depth, width in [("vit_giant_patch14_224", 40, None), ("vit_tiny_patch16_224", 12, None),
                                ("vit_giant_patch14_224", 40, args.narrow_dim)]:
        mstore = make_store(work / f"mem_{depth}.zarr", 4 * args.memory_batch, 160, args.dim, model, depth, 4, 1)
        spec = {**base, "store": str(mstore), "batch": args.memory_batch, "epochs": 1, "temporal_dim": width,
                "cache_mb": 512.0, "out": str(work / f"mem_run_{depth}_{width}")}
        key = f"{model} | {depth} | {width or args.dim}"
        memory[key] = run_child(spec)
        print(f"  memory {key}: {memory[key]['peak_memory_bytes'] / 2**30:.2f} GiB", file=sys.stderr)

    ref = timing["in memory"]["epoch_seconds"]
    lines = [
        f"### Stage 2 epoch time: streamed vs in memory ({args.videos} videos × {args.video_frames} frames, "
        f"D={args.dim} fp16 = {store_mb:.0f} MiB, T={args.frames}, batch {args.batch}, temporal {args.temporal_dim}×"
        f"{args.temporal_depth}, {args.epochs} epochs per run, fastest of {args.rounds} rounds, CPU {args.threads} "
        "threads, no DataLoader workers)",
        "",
        "| features | s / epoch | vs in memory | loader alone, s / epoch (1st, last) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in timing.items():
        alone = loader.get(name)
        cell = f"{alone['epoch_seconds'][0]:.2f}, {alone['epoch_seconds'][-1]:.2f}" if alone else "—"
        lines.append(f"| {name} | {r['epoch_seconds']:.2f} | {r['epoch_seconds'] / ref:.3f}× | {cell} |")
    lines += [
        "",
        f"Loading the store into memory first: {loader['in memory']['setup_seconds']:.2f} s (not in the epoch times).",
        "",
        f"### Stage 2 peak memory: T={args.frames}, D={args.dim} tokens, batch {args.memory_batch}, "
        f"{args.temporal_depth} temporal blocks, AdamW fp32, CPU",
        "",
        "| store made by | spatial blocks | temporal width | model params | peak RSS | RSS after imports | training adds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in memory.items():
        peak, base_rss = r["peak_memory_bytes"], r["baseline_rss_bytes"]
        lines.append(f"| {key} | {r['params'] / 1e6:.1f} M | {peak / 2**30:.2f} GiB | {base_rss / 2**30:.2f} GiB | "
                     f"{(peak - base_rss) / 2**30:.2f} GiB |")
    lines += ["", "The spatial ViT is not part of the stage-2 model (no spatial parameters, never run): only the "
              "token width D reaches stage 2, so stores of equal D cost the same whatever the spatial depth. "
              "'RSS after imports' is torch/timm/zarr code mapped before any tensor exists."]
    print("\n".join(lines))
    result = {"args": vars(args), "store_mib": store_mb, "timing": timing, "rounds": rounds, "loader": loader,
              "memory": memory,
              "ratios": {k: v["epoch_seconds"] / ref for k, v in timing.items()}}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
