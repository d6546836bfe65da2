"""The report of `vivitcache bench --recipes`: recipes.json, recipes.md and recipes.png (val top-1 against the
recipe's cumulative wall time, phase boundaries marked), from the per-recipe results of `bench/recipes.py`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vivitcache.bench.recipes_config import RECIPES, RecipesConfig
from vivitcache.provenance import provenance

TITLES = {
    "a": "end to end at T",
    "b": "stage 1 → frozen spatial on the fly",
    "c": "stage 1 → extract → cached tokens",
    "d": "extract (image ckpt) → cached tokens",
}
"""Recipe letter → a short title (table and plot)."""

PHASES = ("train", "stage1", "extract", "stage2")
"""Every phase name, in the order they run (a JSON tool may have sorted a stored result's keys)."""

GOALS = {"c_time_vs_a": 0.25, "c_top1_points_below_a": 1.0, "b_time_vs_a": 0.5}
"""The issue's goals at T=32: (c) within 1 point of (a)'s final top-1 in ≤ 0.25× its time; (b) about 0.5× (a)."""


def seconds_to_reach(recipe: dict, target: float) -> float | None:
    """The recipe's wall time at its first validation of the final phase with val top-1 ≥ `target` (None: never)."""
    for point in recipe["curve"]:
        if point["phase"] == recipe["final_phase"] and point["val_top1"] >= target - 1e-9:
            return point["seconds"]
    return None


def compare(results: dict[str, dict]) -> dict:
    """Against (a): each recipe's time ratio and the time to (a)'s final top-1 less 1 point; the goals."""
    if "a" not in results:
        return {}
    a = results["a"]
    target = a["val_top1"] - GOALS["c_top1_points_below_a"] / 100
    out = {"target_val_top1": target, "per_recipe": {}}
    for letter, r in results.items():
        reach = seconds_to_reach(r, target)
        out["per_recipe"][RECIPES[letter]] = {
            "time_vs_a": r["seconds"] / a["seconds"],
            "seconds_to_a_final_less_1_point": reach,
            "top1_points_vs_a": 100 * (r["val_top1"] - a["val_top1"]),
        }
    goals = {}
    if "c" in results:  # (c) reaches (a)'s final top-1 less 1 point within a quarter of (a)'s time
        reach = out["per_recipe"][RECIPES["c"]]["seconds_to_a_final_less_1_point"]
        goals["c_within_1_point_in_quarter_time"] = reach is not None and reach <= GOALS["c_time_vs_a"] * a["seconds"]
    if "b" in results:
        goals["b_time_vs_a"] = out["per_recipe"][RECIPES["b"]]["time_vs_a"]
    out["goals"] = goals
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def markdown(report: dict, cfg: RecipesConfig) -> str:
    """recipes.md: setup line, the table, the goals, the command."""
    vs = report["vs_a"].get("per_recipe", {})
    lines = [
        f"{cfg.model} ({cfg.spatial_depth or 'all'} spatial blocks, patch {cfg.patch_size or 'default'}) @ "
        f"{cfg.img_size or 'default'} px, {cfg.temporal_depth} temporal block(s); T={cfg.frames}; epoch budget "
        f"{cfg.epochs} (stage 1: {cfg.stage1_epochs} at {cfg.stage1_frames} frames); batch {cfg.batch_size}, lr "
        f"{cfg.lr:g}; {report['data']['train_videos']} train / {report['data']['val_videos']} val videos; seed "
        f"{cfg.seed}; {cfg.device}, {cfg.threads or 'default'} torch thread(s); load average "
        f"{report['load_average']['before']} before, {report['load_average']['after']} after.",
        "",
        "| recipe | phases (s) | total | vs (a) | to (a)'s final − 1 pt | val top-1 | best | peak memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in RECIPES.values():
        if name not in report:
            continue
        r, v = report[name], vs.get(name, {})
        phases = " + ".join(f"{p} {s:.0f}" for p, s in r["phases"].items())
        ratio = f"{v['time_vs_a']:.2f}×" if v else "—"
        reach = v.get("seconds_to_a_final_less_1_point")
        lines.append(f"| ({name[0]}) {TITLES[name[0]]} | {phases} | {r['seconds']:.0f} s | {ratio} | "
                     f"{'never' if v and reach is None else '—' if not v else f'{reach:.0f} s'} | "
                     f"{_pct(r['val_top1'])} | {_pct(r['best_val_top1'])} | {_mib(r['peak_memory_bytes'])} |")
    goals = report["vs_a"].get("goals", {})
    if goals:
        at = "T=32" if cfg.frames == 32 and not cfg.quick else f"T=32; this run: T={cfg.frames}, quick={cfg.quick}"
        lines += ["", f"Goals (set for {at}): " + "; ".join(
            [f"(c) reaches (a)'s final top-1 less 1 point in ≤ 0.25× (a)'s time: {'met' if goals[k] else 'NOT met'}"
             for k in goals if k.startswith("c_")]
            + [f"(b) vs (a): {goals['b_time_vs_a']:.2f}× (paper: about 0.5×)" for k in goals if k == "b_time_vs_a"])
            + "."]
    lines += [
        "",
        "Wall time per phase, each recipe in its own process; (b) and (c) count the same stage-1 run (one run, made "
        "once). Every training phase validates after each epoch (in its time). Val top-1: the final phase's model at "
        "its end, and its best epoch. Peak memory: the largest peak RSS of the recipe's processes (CPU).",
        "",
        f"Command: `{cfg.command()}`",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, png: Path) -> Path:
    """One PNG: val top-1 against cumulative wall time, a curve per recipe, its phase ends as dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, name in enumerate(n for n in RECIPES.values() if n in report):
        r, color = report[name], f"C{i}"
        for phase in r["phases"]:
            pts = [p for p in r["curve"] if p["phase"] == phase]
            style = "o-" if phase == r["final_phase"] else "o:"
            label = f"({name[0]}) {TITLES[name[0]]}" if phase == r["final_phase"] else None
            ax.plot([p["seconds"] for p in pts], [100 * p["val_top1"] for p in pts], style, color=color, ms=3,
                    label=label)
        end = 0.0
        for phase, seconds in r["phases"].items():
            end += seconds
            ax.axvline(end, color=color, ls=":", lw=0.8, alpha=0.6)
            ax.annotate(phase, (end, 100), color=color, fontsize=7, rotation=90, ha="right", va="top")
    ax.set_xlabel("cumulative wall time (s)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_ylim(0, 101)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("time to accuracy (dotted: end of each phase; dotted curve: stage-1 model at its own clip length)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def write_report(cfg: RecipesConfig, results: dict[str, dict], shared: dict, out: Path) -> dict:
    """recipes.json (each recipe under its key, plus config, comparison, shared inputs), recipes.md, recipes.png."""
    from vivitcache.data.annotations import load_annotations

    dataset = load_annotations(shared["data"], seed=cfg.seed)
    report = {
        **{RECIPES[k]: {**r, "title": TITLES[k], "phases": {p: r["phases"][p] for p in PHASES if p in r["phases"]}}
           for k, r in results.items()},
        "vs_a": compare(results),
        "config": cfg.to_dict(),
        "command": cfg.command(),
        "data": {"annotations": shared["data"], "classes": dataset.classes,
                 "train_videos": len(dataset.split("train")), "val_videos": len(dataset.split("val"))},
        "weights": shared["weights"],
        "image_checkpoint_seconds": (shared["image_checkpoint"] or {}).get("seconds"),
        "load_average": shared["load_average"],
        "cpu_count": os.cpu_count(),
        "provenance": provenance(),
    }
    files = {"json": out / "recipes.json", "md": out / "recipes.md", "png": out / "recipes.png"}
    md = markdown(report, cfg)
    files["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    files["md"].write_text(md)
    plot(report, files["png"])
    return {**report, "markdown": md, "files": {k: str(v) for k, v in files.items()}}
