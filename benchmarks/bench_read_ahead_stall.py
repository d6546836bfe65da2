"""How long the loader stalls in cold random epochs when a model step runs between batches, as in `fit`: the
read-ahead thread warms the next batches during the step. The step is a sleep (the GIL released, as a CUDA step
mostly is); a fresh `StoreBatches` and the store's pages dropped per round. Prints the seconds spent inside
`__getitems__` per epoch, one per round (and writes them with the settings to `--out`, JSON).

Example (a store `bench_loader.py --work DIR` built):
    .venv/bin/python benchmarks/bench_read_ahead_stall.py DIR/d768_600x300.zarr --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_loader  # noqa: E402 — drop_page_cache, entries

from vivitcache.store import TokenStore  # noqa: E402
from vivitcache.train_temporal.batches import StoreBatches  # noqa: E402
from vivitcache.train_temporal.dataset import TokenClipDataset  # noqa: E402


def stalls(path: Path, T: int, rounds: int, step_s: float, batch: int = 32) -> list[float]:
    videos = bench_loader.entries(TokenStore.open(path))
    out = []
    for r in range(rounds):
        bench_loader.drop_page_cache(path)
        ds = TokenClipDataset(videos, StoreBatches(path, "cls", 1 << 30), T, train=True, batch=batch, read_ahead=64)
        order = np.random.default_rng(r).permutation(len(ds)).tolist()
        ds.follow(order)
        stall = 0.0
        for lo in range(0, len(order), batch):
            t = time.perf_counter()
            ds.__getitems__(order[lo : lo + batch])
            stall += time.perf_counter() - t
            time.sleep(step_s)  # the model step
        ds.stop_read_ahead()
        out.append(round(stall, 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step-ms", type=float, default=20.0)
    ap.add_argument("--clip-lengths", default="32,128")
    ap.add_argument("--out", type=Path, help="JSON: the settings and each T's stall per round, seconds")
    args = ap.parse_args()
    result = {"store": str(args.store), "step_ms": args.step_ms, "read_ahead": 64, "batch": 32,
              "stall_s_per_epoch": {T: stalls(args.store, T, args.rounds, args.step_ms / 1000)
                                    for T in map(int, args.clip_lengths.split(","))}}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
