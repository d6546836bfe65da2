"""A sweep's leaderboard: sweep.json, sweep.md (best config marked, each with its `vivitcache train` command) and
sweep.png (every config's validation top-1 per epoch, from its run folder's metrics.jsonl)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from vivitcache.provenance import provenance
from vivitcache.sweep.grid import ConfigArgs
from vivitcache.train_temporal.config import TrainConfig
from vivitcache.training.checkpoint import write_json
from vivitcache.training.metrics import MetricsLog
from vivitcache.training.runtime import is_main_process


def _rows(results: list[tuple[ConfigArgs, TrainConfig, dict]], command_of: Callable) -> list[dict]:
    rows = []
    for args, cfg, summary in results:
        rows.append({
            "name": args.name,
            "varying": dict(args.varying),
            "val_top1": summary["val_top1"],
            "val_top5": summary["val_top5"],
            "best_val_top1": summary["best_val_top1"],
            "epochs": summary["epochs"],
            "epochs_done": summary["epochs_done"],
            "stopped": summary["stopped"],
            "trainable_params": summary["trainable_params"],
            "run_folder": cfg.run.out,
            "command": command_of(args, cfg),
        })
    return sorted(rows, key=lambda r: -(r["val_top1"] or 0.0))


def _markdown(content: dict) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "# Sweep leaderboard", "",
        f"{len(content['configs'])} configs in {content['groups']} group(s), {content['seconds']:.1f} s; "
        f"pruning: {content['sweep']['prune']} ({content['epochs_trained']} of {content['epochs_total']} epochs "
        "trained).", "",
        "| | config | val top-1 % | val top-5 % | best top-1 % | epochs | stopped |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in content["configs"]:
        mark = "**best**" if row["name"] == content["best"] else ""
        lines.append(f"| {mark} | {row['name']} | {pct(row['val_top1'])} | {pct(row['val_top5'])} | "
                     f"{pct(row['best_val_top1'])} | {row['epochs_done']}/{row['epochs']} | {row['stopped'] or ''} |")
    lines += ["", "Each config alone, as a plain `vivitcache train` command:", ""]
    lines += [f"- {row['name']}: `{row['command']}`" for row in content["configs"]]
    return "\n".join(lines) + "\n"


def _plot(content: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in content["configs"]:
        evals = [r for r in MetricsLog(Path(row["run_folder"]) / "metrics.jsonl").rows() if r.get("kind") == "eval"]
        ax.plot([r["epoch"] for r in evals], [100 * r["val_top1"] for r in evals], "o-", ms=3,
                lw=2.5 if row["name"] == content["best"] else 1, label=row["name"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=1 + len(content["configs"]) // 12)
    ax.set_title(f"sweep: {len(content['configs'])} configs")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_report(out: Path, results: list[tuple[ConfigArgs, TrainConfig, dict]], extra: dict,
                 command_of: Callable[[ConfigArgs, TrainConfig], str]) -> dict:
    """Write sweep.json, sweep.md and sweep.png into `out` (rank 0); returns sweep.json's content."""
    rows = _rows(results, command_of)
    content = {
        "configs": rows,
        "best": rows[0]["name"],
        "epochs_total": sum(r["epochs"] for r in rows),
        "epochs_trained": sum(r["epochs_done"] for r in rows),
        **extra,
        "provenance": provenance(),
    }
    content["epochs_saved_by_pruning"] = content["epochs_total"] - content["epochs_trained"]
    if is_main_process():
        write_json(out / "sweep.json", content)
        (out / "sweep.md").write_text(_markdown(content))
        _plot(content, out / "sweep.png")
    return content
