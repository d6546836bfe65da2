"""`run_demo`: the whole method end to end, through the same library calls the CLI commands make, each step timed.

    OUT/data/          `synth`: motion-only videos + labels.csv (train/val split column)
    OUT/image.safetensors  `image-pretrain`: the spatial ViT taught to locate what moves (stand-in for ImageNet weights)
    OUT/stage1/        `pretrain`: the whole ViViT end to end on short clips of decoded pixels
    OUT/tokens.zarr    `extract` (Dask LocalCluster): the stage-1 spatial ViT once over every frame; then `verify`, `info`
    OUT/stage2/        `train`: adapter + temporal + head on cached tokens, longer clips, initialised from stage 1;
                       `eval` adds eval.json and eval_confusion.png
    OUT/report.md      accuracies, times, peak memory, store size, curves, takeaway (`report.py`)
    OUT/report.json    the same numbers + the config + provenance
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from vivitcache.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig
from vivitcache.data.synth import make_synth_dataset
from vivitcache.errors import UserError
from vivitcache.demo.config import DemoConfig
from vivitcache.demo.report import build_report, write_report
from vivitcache.extract import ExtractConfig, run_extract
from vivitcache.pretrain import run_pretrain
from vivitcache.pretrain.image import ImagePretrainConfig, run_image_pretrain
from vivitcache.progress import console
from vivitcache.store import store_info, verify_store
from vivitcache.train_temporal import TrainConfig, run_eval, run_train

DATA, IMAGE, STAGE1, STORE, STAGE2 = "data", "image.safetensors", "stage1", "tokens.zarr", "stage2"
REPORT_MD, REPORT_JSON = "report.md", "report.json"
DEMO_ENTRIES = (DATA, IMAGE, "image.json", STAGE1, STORE, STAGE2, REPORT_MD, REPORT_JSON)
"""Everything the demo writes into OUT: all that `overwrite` may remove."""

STEPS = (
    ("synth", "synthetic dataset"),
    ("image", "image checkpoint: spatial ViT learns to locate what moves, single frames, no labels"),
    ("stage1", "stage 1: whole ViViT end to end on decoded pixels"),
    ("extract", "extract: frozen spatial ViT once over every frame"),
    ("store", "verify + info of the token store"),
    ("stage2", "stage 2: adapter + temporal + head on cached tokens"),
    ("eval", "eval of stage 2 on the val split"),
)
"""(name, title) of the timed steps, in order."""


class DemoOutputExistsError(UserError, FileExistsError, ValueError):
    """OUT already holds files: refused without `overwrite` (nothing may be lost), and refused even with it when
    some of them are not the demo's own outputs."""


def prepare_out(out: Path, overwrite: bool) -> None:
    """Make OUT ready: create it, or empty a former demo's OUT when `overwrite`; else `DemoOutputExistsError`.

    `overwrite` removes only the demo's own entries (`DEMO_ENTRIES`): a mistyped `--out ~ --overwrite` is refused
    instead of wiping a home folder.
    """
    if out.exists() and not out.is_dir():
        raise DemoOutputExistsError(f"{out}: exists and is not a folder")
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    if entries and not overwrite:
        raise DemoOutputExistsError(f"{out}: exists and is not empty ({len(entries)} entries); pass --overwrite to "
                                    "replace an earlier demo's outputs, or choose another --out")
    foreign = [e for e in entries if e not in DEMO_ENTRIES]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DemoOutputExistsError(f"{out}: holds {shown}, which the demo does not write; --overwrite only replaces "
                                    f"a demo's own outputs ({', '.join(DEMO_ENTRIES)})")
    for entry in entries:
        path = out / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with `threads` torch intra-op threads (None: unchanged), then restore the former count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _timed(seconds: dict[str, float], name: str):
    """Print the step's header, run it, record its wall time under `name`."""
    index = [n for n, _ in STEPS].index(name)
    console.print(f"[bold cyan]demo {index + 1}/{len(STEPS)}[/] {STEPS[index][1]}", highlight=False)
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def image_config(cfg: DemoConfig, labels: Path, out: Path) -> ImagePretrainConfig:
    """What `vivitcache image-pretrain` builds for the demo's image checkpoint."""
    return ImagePretrainConfig(
        data=str(labels), out=str(out), model=cfg.model, img_size=cfg.img_size, patch_size=cfg.patch_size,
        spatial_depth=cfg.spatial_depth, steps=cfg.image_steps, batch_size=cfg.image_batch_size, seed=cfg.seed,
    )


def stage1_config(cfg: DemoConfig, labels: Path, out: Path, weights: Path | None) -> PretrainConfig:
    """What `vivitcache pretrain --weights IMAGE` builds for the demo's stage 1."""
    return PretrainConfig(
        model=ModelConfig(
            spatial=cfg.model, img_size=cfg.img_size, patch_size=cfg.patch_size, spatial_depth=cfg.spatial_depth,
            temporal_depth=cfg.temporal_depth, num_frames=cfg.stage1_frames,
            weights=str(weights) if weights is not None else None,
        ),
        data=DataConfig(data=str(labels)),
        optim=OptimConfig(epochs=cfg.stage1_epochs, batch_size=cfg.stage1_batch_size, lr=cfg.stage1_lr,
                          spatial_lr_scale=cfg.stage1_spatial_lr_scale if weights is not None else 1.0),
        run=RunConfig(out=str(out), seed=cfg.seed, device=cfg.device, eval_views=cfg.eval_views),
    )


def extract_config(cfg: DemoConfig, labels: Path, stage1: Path, store: Path) -> ExtractConfig:
    """What `vivitcache extract --checkpoint STAGE1 --workers N` builds (strict: a synthetic video must decode)."""
    return ExtractConfig(
        data=str(labels), store=str(store), checkpoint=str(stage1), workers=cfg.extract_workers,
        videos_per_part=cfg.videos_per_part, device=cfg.device, seed=cfg.seed, strict=True,
    )


def stage2_config(cfg: DemoConfig, store: Path, stage1: Path, out: Path) -> TrainConfig:
    """What `vivitcache train --init STAGE1 --frames T` builds (split: stage 1's annotations and seed)."""
    return TrainConfig(
        store=str(store), frames=cfg.stage2_frames, init=str(stage1),
        optim=OptimConfig(epochs=cfg.stage2_epochs, batch_size=cfg.stage2_batch_size, lr=cfg.stage2_lr),
        run=RunConfig(out=str(out), seed=cfg.seed, device=cfg.device, eval_views=cfg.eval_views),
    )


def run_demo(cfg: DemoConfig, overwrite: bool = False) -> dict:
    """Run every step into `cfg.out` and write report.md + report.json; returns the report (report.json's content
    plus `report_md` / `report_json` paths). `DemoOutputExistsError` before any work when OUT is not empty and
    `overwrite` is false."""
    out = Path(cfg.out)
    prepare_out(out, overwrite)
    root = out.absolute()  # absolute: runs record paths that `eval` and stage 2 read back
    labels, stage1, store, stage2 = root / DATA / "labels.csv", root / STAGE1, root / STORE, root / STAGE2
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    with torch_threads(cfg.threads):
        with _timed(seconds, "synth"):
            make_synth_dataset(root / DATA, classes=cfg.classes, videos_per_class=cfg.videos_per_class,
                               frames=cfg.video_frames, size=cfg.video_size, seed=cfg.seed,
                               val_fraction=cfg.val_fraction)
        image = None
        with _timed(seconds, "image"):
            if cfg.image_steps > 0:
                image = root / IMAGE
                image_record = run_image_pretrain(image_config(cfg, labels, image))
            else:
                image_record = None
        with _timed(seconds, "stage1"):
            run_pretrain(stage1_config(cfg, labels, stage1, image))
        with _timed(seconds, "extract"):
            extracted = run_extract(extract_config(cfg, labels, stage1, store))
        with _timed(seconds, "store"):
            problems = verify_store(store)
            info = store_info(store)
        with _timed(seconds, "stage2"):
            run_train(stage2_config(cfg, store, stage1, stage2))
        with _timed(seconds, "eval"):
            evaluated = run_eval(store, stage2, views=cfg.eval_views, device=cfg.device)
    total = time.perf_counter() - start

    report = build_report(cfg, overwrite, root, seconds, total, extracted, info, problems, evaluated, image_record)
    md, js = write_report(root, report)
    return {**report, "report_md": str(md), "report_json": str(js)}
