"""Top-k accuracy, the metrics.jsonl log, the PNG training curve and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vivitcache.training.checkpoint import write_json


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[-1])
    top = logits.topk(maxk, dim=-1).indices  # [B, maxk]
    hit = top.eq(target[:, None])  # [B, maxk]
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class MetricsLog:
    """Append-only JSONL log, one object per line; `truncate(n)` drops lines past a checkpoint on resume."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def lines(self) -> int:
        return sum(1 for _ in self.path.open()) if self.path.exists() else 0

    def truncate(self, n: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = self.path.read_text().splitlines(keepends=True)[:n]
        self.path.write_text("".join(kept))

    def log(self, **row) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.path.open()] if self.path.exists() else []


def plot_curves(metrics_path: Path, png_path: Path, title: str = "") -> Path:
    """Training loss per step and validation top-1 per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog(metrics_path).rows()
    steps = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
    a.set_xlabel("optimiser step")
    a.set_ylabel("train loss")
    a.grid(alpha=0.3)
    b.plot([r["epoch"] for r in evals], [100 * r["val_top1"] for r in evals], "o-", label="top-1")
    b.plot([r["epoch"] for r in evals], [100 * r["val_top5"] for r in evals], "s--", label="top-5")
    b.set_xlabel("epoch")
    b.set_ylabel("val accuracy (%)")
    b.set_ylim(0, 101)
    b.grid(alpha=0.3)
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def write_summary(path: Path, summary: dict) -> None:
    """summary.json, written atomically."""
    write_json(Path(path), summary)
