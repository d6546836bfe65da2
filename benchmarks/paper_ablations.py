"""The paper's stage-2 ablations (arXiv 2306.04822, Table 1) on our synthetic motion data, ≥ 3 seeds each.

    .venv/bin/python benchmarks/paper_ablations.py --out /tmp/ablations            # full: the demo's recipe
    .venv/bin/python benchmarks/paper_ablations.py --out /tmp/abl_quick --quick    # tiny (tests)

One recipe: every config comes from the demo's builders (`vivitcache.demo.run`) on `DemoConfig`, overridden only
where a row says so. Computed once and shared: dataset A (synth, seed s) and B (synth, seed s+1: same classes, other
videos), an image checkpoint per dataset, stage-1 runs on A at T = 2 / 4 / 8 frames and on B at T = 8 (one seed
each: stage 1 is the expensive part; the seeds vary stage 2), and one store of A's videos per stage-1 spatial model
(each stage 1 fine-tunes its spatial ViT, so each has its own tokens). Every stage-2 row trains on A's train split
and reports A's val split (A's labels.csv is passed as `splits` everywhere, also for B's init), at the demo's
stage-2 frames, for seeds 0..S-1; mean ± std (population std over seeds) of the final val top-1.

Writes OUT/ablations.json (per-seed numbers, timings, config, provenance) and OUT/ablations.md (the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from vivitcache.data.synth import make_synth_dataset
from vivitcache.demo.config import DemoConfig
from vivitcache.demo.run import extract_config, image_config, stage1_config, stage2_config, torch_threads
from vivitcache.extract import run_extract
from vivitcache.pretrain import run_pretrain
from vivitcache.pretrain.image import run_image_pretrain
from vivitcache.provenance import provenance
from vivitcache.train_temporal import run_train

# (row id, label, paper's SSv2 ViViT-B top-1 for the matching row or None). The paper's Table 1 rows, in order:
# frozen spatial without adapter 27.75; + adapter 38.77; + temporal init from stage 1 58.54; full method 63.85;
# end-to-end baseline 64.45.
ROWS = [
    ("no_adapter", "frozen spatial, no adapter, temporal random", 27.75),
    ("adapter", "frozen spatial + adapter, temporal random (= random init)", 38.77),
    ("temporal_init", "+ temporal and head init from stage 1 (8 frames)", 58.54),
    ("full_init_T8", "+ adapter init too: full stage-1 init, stage 1 on 8 frames (ours = the demo)", 63.85),
    ("full_init_T4", "full stage-1 init, stage 1 on 4 frames", None),
    ("full_init_T2", "full stage-1 init, stage 1 on 2 frames", None),
    ("other_dataset", "full stage-1 init from dataset B (other videos), tokens of A by B's spatial", None),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Output folder (data, runs, stores, ablations.json/.md).")
    p.add_argument("--seeds", type=int, default=3, help="Stage-2 seeds per row (>= 3 for the table).")
    p.add_argument("--quick", action="store_true", help="The demo's --quick sizes (tests).")
    p.add_argument("--stage1-epochs", type=int, default=None, help="Override the recipe's stage-1 epochs.")
    p.add_argument("--stage2-epochs", type=int, default=None, help="Override the recipe's stage-2 epochs.")
    p.add_argument("--videos-per-class", type=int, default=None, help="Override the synth videos per class.")
    p.add_argument("--seed", type=int, default=0, help="Seed of dataset A, the image checkpoints and stage 1.")
    return p.parse_args(argv)


def recipe(args: argparse.Namespace) -> DemoConfig:
    """The demo's config with this script's overrides (threads 1: two runs never share a core's time slices)."""
    return DemoConfig.preset(args.quick, out=args.out, seed=args.seed, stage1_epochs=args.stage1_epochs,
                             stage2_epochs=args.stage2_epochs, videos_per_class=args.videos_per_class)


def build_shared(cfg: DemoConfig, out: Path, timings: dict) -> dict:
    """Datasets, image checkpoints, stage-1 runs and stores shared by the rows; returns their paths and stage-1
    summaries."""
    shared: dict = {"stage1": {}, "stores": {}}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - start
        return result

    for name, seed in (("A", cfg.seed), ("B", cfg.seed + 1)):
        data = out / f"data_{name}"
        timed(f"synth_{name}", lambda: make_synth_dataset(
            data, classes=cfg.classes, videos_per_class=cfg.videos_per_class, frames=cfg.video_frames,
            size=cfg.video_size, seed=seed, val_fraction=cfg.val_fraction))
        image = out / f"image_{name}.safetensors"
        timed(f"image_{name}", lambda: run_image_pretrain(image_config(cfg, data / "labels.csv", image)))
        shared[f"labels_{name}"], shared[f"image_{name}"] = data / "labels.csv", image
    stage1_runs = [("A", 8), ("A", 4), ("A", 2), ("B", 8)]
    for name, frames in stage1_runs:
        key = f"{name}_T{frames}"
        run = out / f"stage1_{key}"
        s1 = stage1_config(cfg, shared[f"labels_{name}"], run, shared[f"image_{name}"])
        s1.model.num_frames = frames
        shared["stage1"][key] = {"path": run, "summary": timed(f"stage1_{key}", lambda: run_pretrain(s1))}
        store = out / f"tokens_{key}.zarr"  # A's videos through this run's spatial ViT
        timed(f"extract_{key}", lambda: run_extract(extract_config(cfg, shared["labels_A"], run, store)))
        shared["stores"][key] = store
    return shared


def row_config(row: str, cfg: DemoConfig, shared: dict, out: Path, seed: int):
    """The stage-2 TrainConfig of one row and seed."""
    key = {"full_init_T4": "A_T4", "full_init_T2": "A_T2", "other_dataset": "B_T8"}.get(row, "A_T8")
    init = shared["stage1"][key]["path"]
    tc = stage2_config(cfg, shared["stores"][key], init, out / "stage2" / row / f"seed{seed}")
    tc.splits = str(shared["labels_A"])  # always A's split, whatever the init's own annotations
    tc.run.seed = seed
    if row in ("no_adapter", "adapter"):
        tc.init = None  # random init, the stage-1 architecture
        tc.model = dataclasses.replace(tc.model, spatial=cfg.model, temporal_depth=cfg.temporal_depth)
        tc.no_adapter = row == "no_adapter"
    elif row == "temporal_init":
        tc.init_parts = ["temporal", "head"]
    return tc


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    return statistics.fmean(values), statistics.pstdev(values)


def render(result: dict) -> str:
    lines = [
        "| row | ours: val top-1 (mean ± std) | seeds | paper (SSv2, ViViT-B) |",
        "|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        paper = f"{row['paper']:.2f}" if row["paper"] is not None else "–"
        lines.append(f"| {row['label']} | {100 * row['mean']:.1f} ± {100 * row['std']:.1f} | {len(row['top1'])} | "
                     f"{paper} |")
    s1 = result["stage1_val_top1"]
    lines.append(f"| stage 1 itself (end to end, 8 frames; the paper's end-to-end baseline) | {100 * s1['A_T8']:.1f} "
                 f"(1 seed) | 1 | 64.45 |")
    lines += ["", "Stage 1 alone at 2 / 4 / 8 frames: " + " / ".join(
        f"{100 * s1[f'A_T{t}']:.1f} %" for t in (2, 4, 8)) + f"; on dataset B (its own val): {100 * s1['B_T8']:.1f} %.",
        "", f"Command: `{result['command']}` ({result['total_seconds'] / 60:.1f} min)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    cfg = recipe(args)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with torch_threads(cfg.threads):
        shared = build_shared(cfg, out, timings)
        rows = []
        for row, label, paper in ROWS:
            top1 = []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                summary = run_train(row_config(row, cfg, shared, out, seed))
                timings[f"stage2_{row}_seed{seed}"] = time.perf_counter() - t0
                top1.append(summary["val_top1"])
            mean, std = mean_std(top1)
            rows.append({"row": row, "label": label, "paper": paper, "top1": top1, "mean": mean, "std": std})
    result = {
        "command": "python benchmarks/paper_ablations.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": cfg.to_dict(),
        "seeds": args.seeds,
        "rows": rows,
        "stage1_val_top1": {k: v["summary"]["val_top1"] for k, v in shared["stage1"].items()},
        "timings_seconds": timings,
        "total_seconds": time.perf_counter() - start,
        "provenance": provenance(),
    }
    (out / "ablations.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "ablations.md").write_text(render(result) + "\n")
    print(render(result))
    return result


if __name__ == "__main__":
    main()
