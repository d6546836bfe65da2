"""`run_bench`: the three stage-2 cost modes side by side on the same data, backbone, split, seed and epochs.

    OUT/data/          synthetic videos + labels.csv (unless `data` names existing annotations)
    OUT/init/          a stage-1 run that was never trained (random init under the seed): every mode starts from it
    OUT/tokens.zarr    its spatial ViT's tokens, extracted once for (c) (timed apart: a one-off cost)
    OUT/runs/{a,b,c}/  one `fit` run per mode, each in its own spawned process (clean peak memory)
    OUT/bench.json     everything: config, per-mode figures, extraction, ratios, break-even, provenance
    OUT/bench.md       the table, the extraction line and the command that made it
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from vivitcache.bench.config import BenchConfig
from vivitcache.bench.modes import MODE_NAMES, MODES, ModeInputs, process_peak_rss
from vivitcache.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig
from vivitcache.data.annotations import load_annotations
from vivitcache.data.synth import make_synth_dataset
from vivitcache.errors import ConfigError
from vivitcache.provenance import provenance

GOALS = {"b/c": 30.0, "a/c": 100.0}
"""The issue's goals on CPU: (c) this many times cheaper per epoch than (b) and (a)."""


# ------------------------------------------------------------------------------------------------ inputs
def bench_data(cfg: BenchConfig, out: Path) -> Path:
    """The annotations every mode uses: `cfg.data`, else the synthetic dataset in OUT/data (kept when it already
    has exactly the asked-for parameters)."""
    if cfg.data is not None:
        path = Path(cfg.data).absolute()
        if not path.exists():
            raise ConfigError(f"bench: --data {cfg.data}: not found")
        return path
    folder = out / "data"
    wanted = {"classes": cfg.classes, "videos_per_class": cfg.videos_per_class, "frames": cfg.video_frames,
              "size": cfg.video_size, "seed": cfg.seed}
    try:
        made = json.loads((folder / "synth.json").read_text())
        if {k: made.get(k) for k in wanted} == wanted and (folder / "labels.csv").is_file():
            return (folder / "labels.csv").absolute()
    except (OSError, ValueError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    make_synth_dataset(folder, classes=cfg.classes, videos_per_class=cfg.videos_per_class, frames=cfg.video_frames,
                       size=cfg.video_size, seed=cfg.seed)
    return (folder / "labels.csv").absolute()


def make_init(cfg: BenchConfig, data: Path, classes: list[str], out: Path) -> Path:
    """A stage-1 run that was never trained: the ViViT random-initialised under the seed, saved exactly as
    `run_pretrain` saves its runs, so `extract --checkpoint` and `train --init` take it. Its clip length is the
    bench's T, so no mode resizes position embeddings.

    Not `run_pretrain` with epochs=0: `fit` writes its checkpoint at the end of an epoch, so no epoch, no run.
    """
    from vivitcache.data.transforms import Preprocess
    from vivitcache.hashing import state_dict_sha256
    from vivitcache.models.vivit import build_vivit
    from vivitcache.runs import RunRecord, Stage1Made
    from vivitcache.training.checkpoint import save_checkpoint
    from vivitcache.training.runtime import seed_everything

    model_cfg = ModelConfig(spatial=cfg.model, img_size=cfg.img_size, patch_size=cfg.patch_size,
                            spatial_depth=cfg.spatial_depth, temporal_depth=cfg.temporal_depth,
                            num_frames=cfg.frames, num_classes=len(classes))
    pretrain = PretrainConfig(model=model_cfg, data=DataConfig(data=str(data)), optim=OptimConfig(epochs=0),
                              run=RunConfig(out=str(out), seed=cfg.seed, device=cfg.device))
    seed_everything(cfg.seed)
    model = build_vivit(model_cfg)
    preprocess = Preprocess.from_timm(model.spatial, cfg.img_size)
    record = RunRecord(stage=1, model=model_cfg, classes=classes, settings=pretrain.to_dict(),
                       stage1=Stage1Made(preprocess.to_dict(), state_dict_sha256(model.spatial)))
    save_checkpoint(out, model.state_dict(), {"config": record.to_json(), "provenance": provenance()})
    return out


def extract_tokens(cfg: BenchConfig, data: Path, init: Path, store: Path) -> dict:
    """Extract every frame of every video with the init's spatial ViT into `store` (in this process); the figures."""
    from vivitcache.extract import ExtractConfig, run_extract
    from vivitcache.store import store_info

    summary = run_extract(ExtractConfig(data=str(data), store=str(store), checkpoint=str(init), workers=0,
                                        device=cfg.device, seed=cfg.seed, torch_threads=cfg.threads or None))
    info = store_info(store)
    return {
        "seconds": summary["seconds"],
        "frames": summary["frames"],
        "videos": summary["done"],
        "frames_per_second": summary["frames_per_s"],
        "store": str(store),
        "store_bytes": info["bytes_on_disk"],
        "bytes_per_frame": info["bytes_per_frame"],
        "tokens": info["layout"]["tokens"],
        "dtype": info["layout"]["dtype"],
        "failed": info["failed"],
        "model": info["fingerprint"]["model"],
        "img_size": info["fingerprint"]["img_size"],
        "patch_size": info["fingerprint"]["patch_size"],
        "depth": info["fingerprint"]["depth"],
    }


# ------------------------------------------------------------------------------------------------ modes
def _mode_in_child(mode: str, inputs: ModeInputs) -> dict:
    """Runs in a fresh spawned process: one mode, with the bench's torch threads."""
    import torch

    if inputs.cfg.threads:
        torch.set_num_threads(inputs.cfg.threads)
    return MODES[mode](inputs)


def run_mode(mode: str, inputs: ModeInputs) -> dict:
    """One mode in its own spawned process (its peak memory is its own; no state from the modes before)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_mode_in_child, mode, inputs).result()


# ------------------------------------------------------------------------------------------------ summary
def break_even_epochs(one_off: float, cached_per_epoch: float, other_per_epoch: float) -> int | None:
    """Fewest whole epochs after which one-off + n·cached < n·other (None when cached is not cheaper per epoch)."""
    saved = other_per_epoch - cached_per_epoch
    if saved <= 0:
        return None
    return math.floor(one_off / saved) + 1


def _ratios(modes: dict[str, dict], key) -> dict[str, float]:
    return {f"{m}/c": key(modes[m]) / key(modes["c"]) for m in ("a", "b")}


def _mib(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _times(x: float) -> str:
    return f"{x:.0f}×" if x >= 10 else f"{x:.1f}×" if x >= 1 else f"{x:.2f}×"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def markdown(result: dict) -> str:
    """bench.md: setup line, the table, the extraction and break-even lines, goals, the command."""
    cfg, modes, ext = result["config"], result["modes"], result["extraction"]
    d, ratios = result["data"], result["ratios"]
    c = modes["c"]
    backbone = (f"{cfg['model']} ({ext['model']}, {ext['depth']} spatial blocks, patch {ext['patch_size']}) "
                f"@ {ext['img_size']} px")
    lines = [
        f"{backbone}, T={cfg['frames']} frames, {cfg['temporal_depth']} temporal block(s); {d['train_videos']} train / "
        f"{d['val_videos']} val videos ({d['source']}); {cfg['epochs']} epoch(s), batch {cfg['batch_size']} "
        f"({cfg['accum_steps']} micro-batches), seed {cfg['seed']}; {c['device']}, {c['torch_threads']} torch threads.",
        "",
        "| mode | s / epoch | vs (c) | peak memory | vs (c) | training adds | val top-1 | spatial frames / epoch | "
        "trainable params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in ("a", "b", "c"):
        r = modes[m]
        t = r["seconds_per_epoch"] / c["seconds_per_epoch"]
        mem = r["peak_memory_bytes"] / c["peak_memory_bytes"]
        top1 = "—" if r["val_top1"] is None else f"{100 * r['val_top1']:.1f}%"
        lines.append(
            f"| ({m}) {r['name']} | {r['seconds_per_epoch']:.2f} | {_times(t)} | {_mib(r['peak_memory_bytes'])} | "
            f"{_times(mem)} | {_mib(r['peak_memory_bytes'] - r['rss_after_imports_bytes'])} | {top1} | "
            f"{r['spatial_frames_train'] // r['epochs']} | {_params(r['trainable_params'])} |"
        )
    be = result["break_even"]

    def after(n):
        return "never" if n is None else f"from epoch {n} on"

    goals = result["goals"]
    lines += [
        "",
        f"One-off extraction for (c): {ext['frames']} frames of {ext['videos']} videos in {ext['seconds']:.1f} s "
        f"({ext['frames_per_second']:.1f} frames/s), store {_mib(ext['store_bytes'])} ({ext['tokens']} tokens, "
        f"{ext['dtype']}, {ext['bytes_per_frame']} B/frame). Extraction + (c) epochs is cheaper than (b) "
        f"{after(be['vs_b'])} and than (a) {after(be['vs_a'])}.",
        "",
        ("Goals on CPU (set for the default ViT-S setup; --quick models are too small for them): " if cfg["quick"]
         else "Goals on CPU: ") + "; ".join(
            f"{k} ≥ {v:g}×: {'met' if goals[k]['met'] else 'NOT met'} ({_times(ratios['seconds_per_epoch'][k])})"
            for k, v in GOALS.items()
        ) + ".",
        "",
        f"(b) and (c) train the same model on the same clips (tokens on the fly in fp32 vs cached in fp16): last "
        f"training loss {modes['b']['train_loss']:.4f} vs {c['train_loss']:.4f}"
        + ("" if c["val_loss"] is None else f", val loss {modes['b']['val_loss']:.4f} vs {c['val_loss']:.4f}") + ".",
        "",
        "s / epoch: the training epoch alone (decoding, forward, backward, optimiser; not evaluation or checkpoints), "
        "from `fit`'s clips/s at the epoch's last step. Peak memory: the mode's own process (VmHWM), imports "
        "included; 'training adds' is that minus the RSS right after imports. Spatial frames: images through the "
        "spatial ViT while training, counted at its patch embedding. Small data: the ratios, not the absolute "
        "times, are the point.",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ entry point
def run_bench(cfg: BenchConfig) -> dict:
    """Make/use the data, the init and the store, run (a), (b), (c) one after another in their own processes,
    write OUT/bench.json and OUT/bench.md; returns bench.json's content plus `markdown` and `files`."""
    start = time.perf_counter()
    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("init", "tokens.zarr", "runs"):  # our own outputs of an earlier run: an old store would resume
        shutil.rmtree(out / stale, ignore_errors=True)

    data = bench_data(cfg, out)
    dataset = load_annotations(data, seed=cfg.seed)
    init = make_init(cfg, data, dataset.classes, out / "init")
    extraction = extract_tokens(cfg, data, init, out / "tokens.zarr")

    modes = {}
    for mode in MODES:
        inputs = ModeInputs(cfg=cfg, data=str(data), init=str(init), store=str(out / "tokens.zarr"),
                            out=str(out / "runs" / mode))
        modes[mode] = run_mode(mode, inputs)

    c = modes["c"]
    ratios = {
        "seconds_per_epoch": _ratios(modes, lambda r: r["seconds_per_epoch"]),
        "peak_memory": _ratios(modes, lambda r: r["peak_memory_bytes"]),
        "peak_memory_above_imports": _ratios(modes, lambda r: r["peak_memory_bytes"] - r["rss_after_imports_bytes"]),
    }
    result = {
        "config": cfg.to_dict(),
        "command": cfg.command(),
        "data": {
            "annotations": str(data),
            "source": cfg.data if cfg.data else (f"synthetic, {cfg.classes} classes × {cfg.videos_per_class}, "
                                                 f"{cfg.video_frames} frames of {cfg.video_size} px"),
            "classes": dataset.classes,
            "train_videos": len(dataset.split("train")),
            "val_videos": len(dataset.split("val")),
        },
        "init": str(init),
        "extraction": extraction,
        "modes": modes,
        "ratios": ratios,
        "break_even": {
            "vs_b": break_even_epochs(extraction["seconds"], c["seconds_per_epoch"], modes["b"]["seconds_per_epoch"]),
            "vs_a": break_even_epochs(extraction["seconds"], c["seconds_per_epoch"], modes["a"]["seconds_per_epoch"]),
            "note": "fewest whole epochs after which extraction + n (c) epochs take less time than n epochs of the mode",
        },
        "b_vs_c": {
            "train_loss_abs_diff": abs(modes["b"]["train_loss"] - c["train_loss"]),
            "val_loss_abs_diff": None if c["val_loss"] is None else abs(modes["b"]["val_loss"] - c["val_loss"]),
            "note": "(b) and (c) train the same model from the same init on the same clips; they differ only in where "
                    "frame tokens come from (spatial ViT on the fly, fp32, vs the store, fp16)",
        },
        "goals": {k: {"ratio_at_least": v, "met": ratios["seconds_per_epoch"][k] >= v} for k, v in GOALS.items()},
        "bench_seconds": time.perf_counter() - start,
        "parent_peak_memory_bytes": process_peak_rss(),
        "cpu_count": os.cpu_count(),
        "provenance": provenance(),
    }
    md = markdown(result)
    files = {"json": str(out / "bench.json"), "md": str(out / "bench.md")}
    Path(files["json"]).write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    Path(files["md"]).write_text(md)
    return {**result, "markdown": md, "files": files}


__all__ = ["BenchConfig", "MODE_NAMES", "break_even_epochs", "make_init", "run_bench", "run_mode"]
