"""The paper's stage-2 ablations (arXiv 2306.04822, Table 1) on our synthetic motion data, ≥ 3 seeds each.

    .venv/bin/python benchmarks/paper_ablations.py --out /tmp/ablations            # full: the demo's recipe
    .venv/bin/python benchmarks/paper_ablations.py --out /tmp/abl_quick --quick    # tiny (tests)

One recipe: every config comes from the demo's builders (`vivitcache.demo.run`) on `DemoConfig`, overridden (with
`dataclasses.replace`) only where a row says so. Computed once and shared: dataset A (synth, seed s) and B (synth,
seed s+1: the same classes, other videos), an image checkpoint per dataset, stage-1 runs on A at T = 2 / 4 / 8
frames and on B at T = 8 (one seed each: stage 1 is the expensive part; the seeds vary stage 2 only), and one store
of A's videos per stage-1 spatial model (each stage 1 fine-tunes its spatial ViT, so each has its own tokens).

Every stage-2 row trains on A's train split and reports A's val split (A's labels.csv is passed as `splits`
everywhere, also for B's init), at the demo's stage-2 frames, for seeds 0..S-1; mean ± std (population std over
seeds) of the final epoch's val top-1. "Frozen spatial" rows read the store of the stage-1 (T=8) spatial ViT, as in
the paper, and their random-init model has the stage-1 run's architecture. Comparisons (random vs stage-1 init,
same vs other dataset) reuse the rows' per-seed values: nothing is trained twice.

Writes OUT/ablations.json (per-seed numbers, comparisons, timings, config, provenance) and OUT/ablations.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vivitcache.config import ModelConfig, from_dict
from vivitcache.data.synth import make_synth_dataset
from vivitcache.demo.config import DemoConfig
from vivitcache.demo.run import extract_config, image_config, stage1_config, stage2_config, torch_threads
from vivitcache.extract import run_extract
from vivitcache.pretrain import run_pretrain
from vivitcache.pretrain.image import run_image_pretrain
from vivitcache.provenance import provenance
from vivitcache.train_temporal import INIT_PARTS, TrainConfig, run_train
from vivitcache.training.checkpoint import load_config

DATASETS = ("A", "B")
"""A: the dataset every row trains and scores on; B: the same classes from another synth seed (another dataset of
the same kind). Not a disjoint class set: synth has 10 classes and the recipe uses 8, and the head init needs the
same classes."""

STAGE1_RUNS = (("A", 8), ("A", 4), ("A", 2), ("B", 8))
"""(dataset, frames) of the shared stage-1 runs; each one's spatial ViT gets its own store of A's videos."""


@dataclass(frozen=True)
class Row:
    """One stage-2 ablation row."""

    id: str
    """Folder name under OUT/stage2 and key in ablations.json."""
    label: str
    """What the row trains, for the table."""
    paper: float | None
    """The matching top-1 of the paper's Table 1 (SSv2, ViViT-B), None when the paper has no such row."""
    stage1: str
    """Stage-1 run (`A_T8` …) whose spatial ViT made the row's store, and whose parts `init_parts` takes."""
    init_parts: tuple[str, ...] = ()
    """Parts taken from that stage-1 run; empty: random init with the stage-1 architecture."""
    no_adapter: bool = False
    """No adapter between the frozen tokens and the temporal transformer."""


# The paper's Table 1 rows, in order: frozen spatial without adapter 27.75; + adapter 38.77; + temporal init from
# stage 1 58.54; full method 63.85; end-to-end baseline 64.45 (stage 1 itself, below the rows).
ROWS = (
    Row("no_adapter", "frozen spatial, no adapter, temporal random", 27.75, "A_T8", no_adapter=True),
    Row("adapter", "frozen spatial + adapter, temporal random (= random init)", 38.77, "A_T8"),
    Row("temporal_init", "+ temporal and head init from stage 1 (8 frames)", 58.54, "A_T8", ("temporal", "head")),
    Row("full_init_T8", "+ adapter init too: full stage-1 init, stage 1 on 8 frames (ours = the demo)", 63.85,
        "A_T8", INIT_PARTS),
    Row("full_init_T4", "full stage-1 init, stage 1 on 4 frames", None, "A_T4", INIT_PARTS),
    Row("full_init_T2", "full stage-1 init, stage 1 on 2 frames", None, "A_T2", INIT_PARTS),
    Row("other_dataset", "full stage-1 init from dataset B (other videos), tokens of A by B's spatial", None, "B_T8",
        INIT_PARTS),
)

COMPARISONS = (
    ("random_vs_temporal_init", "random init → temporal + head init from stage 1", "adapter", "temporal_init"),
    ("random_vs_full_init", "random init → full stage-1 init (adapter too)", "adapter", "full_init_T8"),
    ("other_vs_same_dataset", "init from dataset B → init from the same dataset A", "other_dataset", "full_init_T8"),
)
"""(id, label, row a, row b): b − a from the rows' own per-seed values (no extra run)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Output folder, new or empty (data, runs, stores, ablations.json/.md).")
    p.add_argument("--seeds", type=int, default=3, help="Stage-2 seeds per row (>= 3 for the table).")
    p.add_argument("--quick", action="store_true", help="The demo's --quick sizes (tests).")
    p.add_argument("--stage1-epochs", type=int, default=None, help="Override the recipe's stage-1 epochs.")
    p.add_argument("--stage2-epochs", type=int, default=None, help="Override the recipe's stage-2 epochs.")
    p.add_argument("--videos-per-class", type=int, default=None, help="Override the synth videos per class.")
    p.add_argument("--seed", type=int, default=0, help="Seed of dataset A (B: seed + 1), image checkpoints, stage 1.")
    return p.parse_args(argv)


def recipe(args: argparse.Namespace) -> DemoConfig:
    """The demo's config with this script's overrides (None: the recipe's own value)."""
    return DemoConfig.preset(args.quick, out=args.out, seed=args.seed, stage1_epochs=args.stage1_epochs,
                             stage2_epochs=args.stage2_epochs, videos_per_class=args.videos_per_class)


def build_shared(cfg: DemoConfig, out: Path, timings: dict) -> dict:
    """Datasets, image checkpoints, stage-1 runs and stores shared by the rows; returns their paths and stage-1
    summaries. Every step's wall time goes into `timings` (each store's extraction as `extract_<run>`)."""
    shared: dict = {"stage1": {}, "stores": {}}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - start
        return result

    for offset, name in enumerate(DATASETS):
        data = out / f"data_{name}"
        timed(f"synth_{name}", lambda: make_synth_dataset(
            data, classes=cfg.classes, videos_per_class=cfg.videos_per_class, frames=cfg.video_frames,
            size=cfg.video_size, seed=cfg.seed + offset, val_fraction=cfg.val_fraction))
        image = out / f"image_{name}.safetensors"
        timed(f"image_{name}", lambda: run_image_pretrain(image_config(cfg, data / "labels.csv", image)))
        shared[f"labels_{name}"], shared[f"image_{name}"] = data / "labels.csv", image
    for name, frames in STAGE1_RUNS:
        key = f"{name}_T{frames}"
        run = out / f"stage1_{key}"
        s1 = stage1_config(cfg, shared[f"labels_{name}"], run, shared[f"image_{name}"])
        s1 = dataclasses.replace(s1, model=dataclasses.replace(s1.model, num_frames=frames))
        shared["stage1"][key] = {"path": run, "summary": timed(f"stage1_{key}", lambda: run_pretrain(s1))}
        store = out / f"tokens_{key}.zarr"  # A's videos through this run's spatial ViT
        timed(f"extract_{key}", lambda: run_extract(extract_config(cfg, shared["labels_A"], run, store)))
        shared["stores"][key] = store
    return shared


def row_config(row: Row, cfg: DemoConfig, shared: dict, out: Path, seed: int) -> TrainConfig:
    """The stage-2 TrainConfig of one row and seed: the demo's, on the row's store, scored on A's split."""
    init = shared["stage1"][row.stage1]["path"]
    tc = stage2_config(cfg, shared["stores"][row.stage1], init, out / "stage2" / row.id / f"seed{seed}")
    changes = dict(
        splits=str(shared["labels_A"]),  # always A's split, whatever the init's own annotations
        run=dataclasses.replace(tc.run, seed=seed),
        no_adapter=row.no_adapter,
        # same numbers as streaming from the store (measured), ~13 % less time
        in_memory=True,
    )
    if row.init_parts:
        changes["init_parts"] = list(row.init_parts)
    else:  # random init, but the very architecture of the stage-1 run (what `--init` would have built)
        changes["init"] = None
        changes["model"] = from_dict(ModelConfig, load_config(init)["config"]["model"])
    return dataclasses.replace(tc, **changes)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    return statistics.fmean(values), statistics.pstdev(values)


def compare(rows: list[dict]) -> list[dict]:
    """The COMPARISONS, from the rows' own per-seed values: b − a of the means, and per seed (same seed, paired)."""
    by_id = {r["row"]: r for r in rows}
    result = []
    for cid, label, a, b in COMPARISONS:
        ra, rb = by_id[a], by_id[b]
        per_seed = [y - x for x, y in zip(ra["top1"], rb["top1"])]
        result.append({"comparison": cid, "label": label, "a": a, "b": b, "a_top1": ra["top1"], "b_top1": rb["top1"],
                       "delta": rb["mean"] - ra["mean"], "delta_per_seed": per_seed})
    return result


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def render(result: dict) -> str:
    cfg, seeds = result["config"], result["seeds"]
    lines = [
        f"Recipe: the demo's (`DemoConfig`): synth {cfg['classes']} classes × {cfg['videos_per_class']} videos × "
        f"{cfg['video_frames']} frames at {cfg['video_size']} px; {cfg['model']} {cfg['img_size']} px, patch "
        f"{cfg['patch_size']}, {cfg['spatial_depth']} spatial + {cfg['temporal_depth']} temporal blocks; image "
        f"checkpoint {cfg['image_steps']} steps; stage 1 {cfg['stage1_epochs']} epochs (spatial LR × "
        f"{cfg['stage1_spatial_lr_scale']}); stage 2 at {cfg['stage2_frames']} frames, {cfg['stage2_epochs']} epochs; "
        f"val top-1 of the final epoch, {cfg['eval_views']} views.",
        f"Stage-1 runs (A at 2 / 4 / 8 frames, B at 8) and the image checkpoints are single-seed (seed {cfg['seed']}); "
        f"the seeds 0..{seeds - 1} vary stage 2 only (its random-init parts, clip sampling, shuffling). ± is the "
        "population std over seeds.",
        "Frozen spatial = the stage-1 (8 frames) spatial ViT's cached tokens of A, as in the paper; every row trains "
        "on A's train split and is scored on A's val split. Dataset B = the same classes rendered with the next "
        "synth seed (other videos); its stage 1 is used through its own store of A's videos.",
        "",
        "| row | ours: val top-1 % (mean ± std) | per seed | seeds | paper (SSv2, ViViT-B) |",
        "|---|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        paper = f"{row['paper']:.2f}" if row["paper"] is not None else "–"
        lines.append(f"| {row['label']} | {pct(row['mean'])} ± {pct(row['std'])} | "
                     f"{' / '.join(pct(v) for v in row['top1'])} | {len(row['top1'])} | {paper} |")
    s1 = result["stage1_val_top1"]
    lines.append(f"| stage 1 itself (end to end, 8 frames; the paper's end-to-end baseline) | {pct(s1['A_T8'])} | "
                 "(single-seed) | 1 | 64.45 |")
    lines += ["", "Stage 1 alone at 2 / 4 / 8 frames: " + " / ".join(
        f"{pct(s1[f'A_T{t}'])} %" for t in (2, 4, 8)) + f"; on dataset B (its own val): {pct(s1['B_T8'])} %.", "",
        "Comparisons (same rows, no extra run; Δ = b − a of the means, then per seed):", ""]
    for c in result["comparisons"]:
        lines.append(f"- {c['label']}: {pct(statistics.fmean(c['a_top1']))} → {pct(statistics.fmean(c['b_top1']))} "
                     f"(Δ {100 * c['delta']:+.1f}; per seed {' / '.join(f'{100 * d:+.1f}' for d in c['delta_per_seed'])})")
    t = result["timings_seconds"]
    shared = " · ".join(f"{k} {v:.0f}" for k, v in t.items() if not k.startswith("stage2_"))
    stage2 = sum(v for k, v in t.items() if k.startswith("stage2_"))
    runs = sum(k.startswith("stage2_") for k in t)
    lines += ["", f"Time (s): {shared}; stage 2: {runs} runs, {stage2:.0f} s in all "
              f"({stage2 / max(1, runs):.0f} s each).",
              "", f"Command: `{result['command']}` ({result['total_seconds'] / 60:.1f} min)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    out = Path(args.out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"{out}: exists and is not an empty folder (the runs and stores would collide); choose "
                         "another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg = recipe(args)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with torch_threads(cfg.threads):
        shared = build_shared(cfg, out, timings)
        rows = []
        for row in ROWS:
            top1 = []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                summary = run_train(row_config(row, cfg, shared, out, seed))
                timings[f"stage2_{row.id}_seed{seed}"] = time.perf_counter() - t0
                top1.append(summary["val_top1"])
            mean, std = mean_std(top1)
            rows.append({"row": row.id, "label": row.label, "paper": row.paper, "stage1": row.stage1,
                         "init_parts": list(row.init_parts), "no_adapter": row.no_adapter,
                         "top1": top1, "mean": mean, "std": std})
    argv = sys.argv[1:] if argv is None else argv
    result = {
        "command": "python benchmarks/paper_ablations.py " + " ".join(argv),
        "config": cfg.to_dict(),
        "seeds": args.seeds,
        "datasets": {name: {"labels": str(shared[f"labels_{name}"]), "synth_seed": cfg.seed + i}
                     for i, name in enumerate(DATASETS)},
        "stage1_seed": cfg.seed,
        "rows": rows,
        "comparisons": compare(rows),
        "stage1_val_top1": {k: v["summary"]["val_top1"] for k, v in shared["stage1"].items()},
        "stores": {k: str(v) for k, v in shared["stores"].items()},
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
