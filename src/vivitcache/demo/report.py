"""The demo's report: `build_report` gathers the numbers (stage figures straight from each run's summary.json),
`takeaway` turns them into two lines, `render_markdown` / `write_report` write OUT/report.md and OUT/report.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vivitcache.demo.config import DemoConfig
from vivitcache.provenance import provenance
from vivitcache.store.inspect import format_bytes
from vivitcache.training.checkpoint import write_json

STAGE_KEYS = ("frames", "val_top1", "val_top5", "val_loss", "epochs", "steps", "seconds", "peak_memory_bytes",
              "train_videos", "val_videos", "trainable_params", "params", "device")
"""Fields of a run's summary.json copied into the report (unchanged: report.json equals the run's numbers)."""


def stage_numbers(run: Path) -> dict:
    """A stage's figures from its summary.json, plus `seconds_per_epoch` (training and per-epoch validation)."""
    summary = json.loads((run / "summary.json").read_text())
    numbers = {k: summary[k] for k in STAGE_KEYS if k in summary}
    numbers["seconds_per_epoch"] = summary["seconds"] / summary["epochs"]
    return numbers


def _relative(path: Path, root: Path) -> str | None:
    """`path` relative to OUT with forward slashes (a Markdown link), or None when the file is missing."""
    return Path(os.path.relpath(path, root)).as_posix() if Path(path).is_file() else None


def build_report(cfg: DemoConfig, overwrite: bool, root: Path, seconds: dict[str, float], total_seconds: float,
                 extracted: dict, info: dict, problems: list[str], evaluated: dict, image: dict | None = None) -> dict:
    """Every number of the report (what report.json holds). `root`: OUT; `seconds`: wall time per step;
    `extracted`: `run_extract`'s summary; `info`: `store_info`; `problems`: `verify_store`; `evaluated`: `run_eval`."""
    stage1, stage2 = stage_numbers(root / "stage1"), stage_numbers(root / "stage2")
    layout = info["layout"]
    report = {
        "command": cfg.command(overwrite),
        "config": cfg.to_dict(),
        "image": None if image is None else {
            k: image[k] for k in ("initial_loss", "final_loss", "chance_loss", "frames", "seconds")
        },
        "stage1": stage1,
        "stage2": stage2,
        "extract": {
            "workers": cfg.extract_workers,
            **{k: extracted[k] for k in ("videos", "done", "failed", "frames", "frames_per_s", "seconds", "parts")},
        },
        "store": {
            "videos": info["videos"],
            "frames": info["frames"],
            "tokens": layout["tokens"],
            "tokens_per_frame": layout["tokens_per_frame"],
            "dim": layout["dim"],
            "dtype": layout["dtype"],
            "bytes_on_disk": info["bytes_on_disk"],
            "bytes_per_frame": info["bytes_per_frame"],
            "bytes_on_disk_per_frame": info["bytes_on_disk"] / info["frames"] if info["frames"] else None,
            "verify_ok": not problems,
            "problems": problems,
        },
        "eval": {k: evaluated[k] for k in ("val_top1", "val_top5", "val_loss", "val_videos", "views", "frames", "split")},
        "steps_seconds": dict(seconds),
        "total_seconds": total_seconds,
        "images": {
            "stage1_curves": _relative(root / "stage1" / "curves.png", root),
            "stage2_curves": _relative(root / "stage2" / "curves.png", root),
            "stage2_confusion": _relative(Path(evaluated["png"]), root),
        },
        "provenance": provenance(),
    }
    report["takeaway"] = takeaway(report)
    return report


def percent(x: float | None) -> str:
    """0.875 → '87.5 %'; None (no validation) → 'n/a'."""
    return "n/a" if x is None else f"{100 * x:.1f} %"


def secs(x: float) -> str:
    """Seconds with two significant decimals below 10 s, one above."""
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def takeaway(report: dict) -> list[str]:
    """Two lines: stage 2's accuracy at its clip length vs stage 1's, and the cost of an epoch of each."""
    s1, s2 = report["stage1"], report["stage2"]
    e1, e2 = s1["seconds_per_epoch"], s2["seconds_per_epoch"]
    accuracy = (f"Stage 2 on cached tokens: {s2['frames']} frames, val top-1 {percent(s2.get('val_top1'))} vs "
                f"stage 1's {percent(s1.get('val_top1'))} at {s1['frames']} frames.")
    extract = f"extract: {secs(report['extract']['seconds'])}"
    if e2 < e1:
        cost = (f"Each stage-2 epoch took {secs(e2)} vs {secs(e1)} for a stage-1 epoch ({e1 / e2:.1f}x less, with "
                f"{s2['frames'] / s1['frames']:g}x the frames per clip), because the spatial ViT ran once ({extract}).")
    else:
        cost = (f"Each stage-2 epoch took {secs(e2)} vs {secs(e1)} for a stage-1 epoch: at this size fixed costs "
                f"outweigh the spatial ViT, which ran once ({extract}).")
    return [accuracy, cost]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def stage_row(stage: dict) -> list[str]:
    """The cells of a stage's table row: frames, top-1, top-5, epochs, seconds, s/epoch, peak memory."""
    return [str(stage["frames"]), percent(stage.get("val_top1")), percent(stage.get("val_top5")), str(stage["epochs"]),
            secs(stage["seconds"]), secs(stage["seconds_per_epoch"]), format_bytes(stage["peak_memory_bytes"])]


STAGE_HEADER = ["frames", "val top-1", "val top-5", "epochs", "seconds", "s / epoch", "peak memory"]


def render_markdown(report: dict) -> str:
    """report.md: command, takeaway, a table per stage, extraction and store, step times, curves, confusion."""
    cfg, s1, s2 = report["config"], report["stage1"], report["stage2"]
    ex, st, ev, images = report["extract"], report["store"], report["eval"], report["images"]
    prov = report["provenance"]
    commit = (prov.get("git_commit") or "no git")[:10]
    val_per_class = round(cfg["val_fraction"] * cfg["videos_per_class"])
    lines = [
        "# vivitcache demo: ViViT in two stages, stage 2 on cached tokens",
        "",
        f"Command: `{report['command']}`  ",
        f"Device: {s1['device']} · vivitcache {prov['vivitcache']} ({commit}) · torch {prov['packages'].get('torch')} · "
        f"{prov['host']} · {prov['time']}",
        "",
        f"Data: {cfg['classes']} synthetic motion classes × {cfg['videos_per_class']} videos ({cfg['video_frames']} "
        f"frames, {cfg['video_size']} px), {val_per_class} per class validate. Model: spatial {cfg['model']} "
        f"({cfg['img_size']} px, patch {cfg['patch_size']}, {cfg['spatial_depth']} blocks, image checkpoint below), temporal "
        f"{cfg['temporal_depth']} blocks. Val accuracies: last epoch, {cfg['eval_views']} views per video.",
        "",
        "## Takeaway",
        "",
        *[f"- {line}" for line in report["takeaway"]],
        "",
        *_image_lines(report["image"], cfg),
        "## Stage 1: whole ViViT end to end on decoded pixels (`stage1/`)",
        "",
        *_table(STAGE_HEADER, [stage_row(s1)]),
        "",
        f"## Extraction: frozen spatial ViT once over every frame (`tokens.zarr`, Dask, {ex['workers']} workers)",
        "",
        *_table(
            ["videos", "frames", "frames/s", "seconds", "store on disk", "bytes / frame", "verify"],
            [[str(ex["videos"]), str(ex["frames"]), f"{ex['frames_per_s']:.0f}", secs(ex["seconds"]),
              f"{format_bytes(st['bytes_on_disk'])} ({st['bytes_on_disk']} B)",
              f"{st['bytes_per_frame']} ({st['tokens']}: {st['tokens_per_frame']} × {st['dim']} {st['dtype']})",
              "OK" if st["verify_ok"] else f"{len(st['problems'])} problem(s)"]],
        ),
        *[f"- problem: {p}" for p in st["problems"]],
        "",
        "## Stage 2: adapter + temporal + head on cached tokens, initialised from stage 1 (`stage2/`)",
        "",
        *_table(STAGE_HEADER, [stage_row(s2)]),
        "",
        f"Final eval (`vivitcache eval`, {ev['split']} split, {ev['views']} views, {ev['frames']} frames): top-1 "
        f"{percent(ev['val_top1'])}, top-5 {percent(ev['val_top5'])} on {ev['val_videos']} videos.",
        "",
        "## Wall time per step",
        "",
        *_table(["step", "seconds"], [[name, secs(t)] for name, t in report["steps_seconds"].items()]
                + [["**total**", f"**{secs(report['total_seconds'])}**"]]),
        "",
        "## Curves",
        "",
    ]
    for key, title in (("stage1_curves", "stage 1"), ("stage2_curves", "stage 2")):
        lines += [f"![{title}]({images[key]})" if images[key] else f"({title}: no curves.png)", ""]
    if images["stage2_confusion"]:
        lines += ["## Stage-2 confusion (val)", "", f"![stage 2 confusion]({images['stage2_confusion']})", ""]
    return "\n".join(lines)


def _image_lines(image: dict | None, cfg: dict) -> list[str]:
    """The image-checkpoint section: what stage 1's spatial ViT started from."""
    if image is None:
        return ["Stage 1's spatial ViT starts from random init (no image checkpoint).", ""]
    return [
        "## Image checkpoint: the offline stand-in for ImageNet weights (`image.safetensors`)",
        "",
        f"The spatial ViT alone, {cfg['image_steps']} steps on {image['frames']} single frames, learns to locate what "
        f"moves (target from the pixels, no class labels; `vivitcache image-pretrain`): localisation loss "
        f"{image['initial_loss']:.3f} → {image['final_loss']:.3f} (predicting the mean: {image['chance_loss']:.3f}), "
        f"{secs(image['seconds'])}. Stage 1 fine-tunes it at {cfg['stage1_spatial_lr_scale']} × the LR.",
        "",
    ]


def write_report(root: Path, report: dict) -> tuple[Path, Path]:
    """Write OUT/report.md and OUT/report.json; returns their paths."""
    md, js = Path(root) / "report.md", Path(root) / "report.json"
    md.write_text(render_markdown(report))
    write_json(js, report)
    return md, js
