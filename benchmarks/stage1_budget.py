"""Does stage 1 pay? Recipe (c) (stage 1 → extract → stage 2 on cached tokens) at several stage-1 budgets.

    .venv/bin/python benchmarks/stage1_budget.py --out runs/stage1_budget               # the recipes' default setup
    .venv/bin/python benchmarks/stage1_budget.py --out /tmp/s1 --quick                    # tiny

Each point is `vivitcache bench --recipes --only c` with its own `--stage1-epochs` / `--stage1-frames`, on one
dataset and one image checkpoint (made by the first point, passed to the others as `--data` / `--weights`), so
the points differ in their stage 1 only. Points: every epoch budget at `--frames-at` frames, and every frame count
at `--epochs-at` epochs (`--grid`: every pair). Writes OUT/stage1_budget.json and OUT/stage1_budget.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vivitcache.bench.recipes import run_recipes
from vivitcache.bench.recipes_config import RecipesConfig
from vivitcache.provenance import provenance


def points(args) -> list[tuple[int, int]]:
    """(stage-1 epochs, stage-1 frames) to run, in order."""
    if args.grid:
        return [(e, f) for f in args.frames for e in args.epochs]
    cross = [(e, args.frames_at) for e in args.epochs] + [(args.epochs_at, f) for f in args.frames]
    return list(dict.fromkeys(cross))


def run_point(args, epochs: int, frames: int, shared: dict) -> dict:
    """One recipe (c) run; its figures and its stage 1's own val top-1."""
    out = Path(args.out) / f"e{epochs}_f{frames}"
    cfg = RecipesConfig.preset(args.quick, out=str(out), recipes="c", stage1_epochs=epochs, stage1_frames=frames,
                               **shared)
    report = run_recipes(cfg)
    stage1 = json.loads((out / "stage1.json").read_text())
    c = report["c_cached"]
    return {"stage1_epochs": epochs, "stage1_frames": frames, "phases": c["phases"], "seconds": c["seconds"],
            "val_top1": c["val_top1"], "best_val_top1": c["best_val_top1"], "stage1_val_top1": stage1["val_top1"],
            "data": report["data"]["annotations"], "weights": report["weights"], "command": report["command"],
            "load_average": report["load_average"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| stage-1 epochs | stage-1 frames | stage 1 (s) | its val top-1 | extract (s) | stage 2 (s) | total (s) | "
             "(c) val top-1 | best |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = r["phases"]
        lines.append(f"| {r['stage1_epochs']} | {r['stage1_frames']} | {p['stage1']:.0f} | "
                     f"{100 * r['stage1_val_top1']:.1f}% | {p['extract']:.0f} | {p['stage2']:.0f} | "
                     f"{r['seconds']:.0f} | {100 * r['val_top1']:.1f}% | {100 * r['best_val_top1']:.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/stage1_budget")
    p.add_argument("--quick", action="store_true", help="the --quick recipes preset (tests)")
    p.add_argument("--epochs", type=ints, default=[2, 5, 10, 20], help="stage-1 epoch budgets")
    p.add_argument("--frames", type=ints, default=[2, 4, 8], help="stage-1 frames per clip")
    p.add_argument("--frames-at", type=int, default=8, help="frames of the epoch sweep")
    p.add_argument("--epochs-at", type=int, default=5, help="epochs of the frame sweep")
    p.add_argument("--grid", action="store_true", help="every (epochs, frames) pair")
    p.add_argument("--data", help="annotations to use (default: the first point makes the synthetic dataset)")
    p.add_argument("--weights", help="image checkpoint to use (default: the first point makes it)")
    args = p.parse_args()
    shared = {"data": args.data, "weights": args.weights}
    rows = []
    for epochs, frames in points(args):
        rows.append(run_point(args, epochs, frames, shared))
        shared = {"data": rows[0]["data"], "weights": rows[0]["weights"]}
    md = markdown(rows)
    out = Path(args.out)
    (out / "stage1_budget.json").write_text(json.dumps(
        {"rows": rows, "cpu_count": os.cpu_count(), "provenance": provenance()}, indent=2) + "\n")
    (out / "stage1_budget.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
