"""One `vivitcache sweep` of N stage-2 configs against N separate `vivitcache train` runs of the same configs.

    .venv/bin/python benchmarks/bench_sweep.py --out benchmarks/results/bench_sweep.json

The store holds random fp16 tokens (D=768, as ViT-B/16's embedding): `--videos` videos of `--frames-per-video`
frames, 10 classes. The configs are the issue's small stage 2: temporal width 384 (6 heads), T=32, lr × weight decay
× depth (1 or 2 blocks) = 8 configs, `--epochs` epochs, batch 32, random reads. Every run is its own process
(`python -m vivitcache ...`), timed from start to exit: what a user waits for. `train_seconds` is the time inside
training (summary.json's `seconds`), without process start and imports. `loader_epoch_s` is one epoch of the loader
alone (the batches, no model), the part a sweep reads once instead of N times.
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

from vivitcache.provenance import provenance
from vivitcache.store import StoreLayout, StoreWriter
from vivitcache.store.writer import plan_parts

CONFIG = ["--init", "none", "--frames", "32", "--batch-size", "32", "--temporal-dim", "384", "--temporal-heads", "6",
          "--eval-views", "1", "--read", "random"]
GRID = {"--lr": ["3e-4", "1e-3"], "--weight-decay": ["0.05", "0.1"], "--temporal-depth": ["1", "2"]}


def make_store(path: Path, videos: int, frames: int, dim: int = 768, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    layout = StoreLayout("pooled", 1, dim, "fp16")
    writer = StoreWriter.create_or_open(path, {"model": "bench-random", "weights_sha256": "0" * 64}, layout,
                                        [f"class{c}" for c in range(classes)], {})
    ids = [f"class{i % classes}/v{i:05d}" for i in range(videos)]
    for part in plan_parts(ids, 64):
        with writer.part(part.part_id) as pw:
            for vid in part.ids:
                label = int(vid[5:vid.index("/")])
                x = rng.normal(0, 1, (frames, 1, dim)).astype(np.float32)  # [n, K, D]
                x[:, 0, label] += 3 * np.linspace(-1, 1, frames)  # a ramp in its own feature per class: learnable
                pw.begin_video(vid, label, f"{vid}.mp4", 25.0)
                pw.append(x, np.arange(frames) / 25.0)
                pw.end_video()


def timed(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vivitcache", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


LOADER = r"""
import sys, time
from vivitcache.store import TokenStore
from vivitcache.train_temporal.config import TrainConfig
from vivitcache.train_temporal.run import prepare_data
cfg = TrainConfig(store=sys.argv[1], frames=32, read="random")
cfg.optim.batch_size = 32
data = prepare_data(cfg, TokenStore.open(sys.argv[1]), "pooled")
data.train_set.set_epoch(0)
order = __import__("random").Random(0).sample(range(len(data.train_set)), len(data.train_set))
data.train_set.follow(order)
t = time.perf_counter()
for i in range(0, len(order) - 31, 32):
    data.train_set.__getitems__(order[i:i + 32])
print(time.perf_counter() - t)
data.stop()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_sweep.json"))
    ap.add_argument("--videos", type=int, default=600)
    ap.add_argument("--frames-per-video", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine.")
    ap.add_argument("--dir", type=Path, default=None, help="Scratch folder (default: a temp dir, removed).")
    a = ap.parse_args()
    scratch = Path(a.dir or tempfile.mkdtemp(prefix="bench_sweep_"))
    store = scratch / "tokens.zarr"
    if not store.exists():
        make_store(store, a.videos, a.frames_per_video)
    common = ["--store", str(store), *CONFIG, "--epochs", str(a.epochs), "--device", a.device]
    sweep_args = [token for option, values in GRID.items() for token in (option, ",".join(values))]
    sweep_s = timed(["sweep", "--out", str(scratch / "sweep"), "--overwrite", *common, *sweep_args])
    report = json.loads((scratch / "sweep" / "sweep.json").read_text())
    separate, rows = 0.0, []
    for row in sorted(report["configs"], key=lambda r: r["name"]):
        folder = scratch / "alone" / row["name"]
        args = [token for option, value in row["varying"].items() for token in (option, value)]
        seconds = timed(["train", *common, *args, "--out", str(folder), "--overwrite"])
        alone = json.loads((folder / "summary.json").read_text())
        sweep_summary = json.loads((Path(row["run_folder"]) / "summary.json").read_text())
        separate += seconds
        rows.append({"name": row["name"], "process_s": seconds, "train_seconds": alone["seconds"],
                     "val_top1_alone": alone["val_top1"], "val_top1_sweep": sweep_summary["val_top1"]})
    loader = float(subprocess.run([sys.executable, "-c", LOADER, str(store)], check=True, capture_output=True,
                                  text=True).stdout.split()[-1])
    result = {
        "configs": len(rows),
        "videos": a.videos,
        "frames_per_video": a.frames_per_video,
        "epochs": a.epochs,
        "device": a.device,
        "sweep_s": sweep_s,
        "sweep_train_s": report["seconds"],
        "separate_s": separate,
        "separate_train_s": sum(r["train_seconds"] for r in rows),
        "speedup": separate / sweep_s,
        "train_speedup": sum(r["train_seconds"] for r in rows) / report["seconds"],
        "loader_epoch_s": loader,
        # the loader's share of training time: one read per epoch in the sweep, one per config and epoch apart
        "read_share_sweep": loader * a.epochs / report["seconds"],
        "read_share_separate": loader * a.epochs * len(rows) / sum(r["train_seconds"] for r in rows),
        "max_abs_val_top1_diff": max(abs(r["val_top1_alone"] - r["val_top1_sweep"]) for r in rows),
        "rows": rows,
        "load_avg_1min": os.getloadavg()[0],
        "provenance": provenance(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "provenance")}, indent=2))
    if a.dir is None:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
