"""`vivitcache bench --recipes`: whole training recipes, time to accuracy, on the same data, split, seed and T.

    (a) a_end_to_end         the whole ViViT at T frames end to end, spatial from the image checkpoint (baseline)
    (b) b_frozen_on_the_fly  stage 1 at `stage1_frames` end to end → stage 2 at T, spatial frozen, run on the fly
    (c) c_cached             the same stage 1 → extract once → stage 2 at T on the cached tokens
    (d) d_no_stage1          extract with the image checkpoint → stage 2 at T on cached tokens (`d_tokens`,
                             `d_adapter`: grid tokens, attn adapter), temporal stage from scratch

Every recipe's longest stage trains `epochs` epochs; stage 1 trains `stage1_epochs`. Layout of OUT:

    data/                 synthetic videos (unless `data` names annotations)
    image.safetensors     the image checkpoint stand-in (unless `weights` names one); its time is in no recipe
    stage1/, stage1.json  the stage 1 of (b) and (c): ONE run, its time counted in both (the same computation)
    recipes/<key>/        each recipe's run folders and stores, and result.json once it finished
    recipes.json/.md/.png the report (`recipes_report.py`)

Each step runs in its own spawned process (its peak memory is its own). A re-run keeps every step whose result
was made with the same settings (`key`) and redoes the others from scratch (a half-done recipe's folder is
emptied: a resumed run's wall time would not be one run's).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from vivitcache.bench.modes import process_peak_rss
from vivitcache.bench.recipes_config import RECIPES, RecipesConfig
from vivitcache.bench.run import bench_data
from vivitcache.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig


# ------------------------------------------------------------------------------------------------ settings
def key(cfg: RecipesConfig, letter: str | None = None) -> dict:
    """The settings the result of recipe `letter` (None: the shared stage 1) depends on: a stored result is reused
    only under the same key (so changing the stage-1 budget redoes (b) and (c) only, and (d)'s tokens (d) only)."""
    unused = {"out", "recipes", "quick"}
    if letter in ("a", "d"):
        unused |= {"stage1_frames", "stage1_epochs"}
    if letter is None:
        unused |= {"frames", "epochs"}
    if letter != "d":
        unused |= {"d_tokens", "d_adapter"}
    return {k: v for k, v in cfg.to_dict().items() if k not in unused}


def optim(cfg: RecipesConfig, epochs: int) -> OptimConfig:
    return OptimConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, spatial_lr_scale=cfg.spatial_lr_scale)


def run_cfg(cfg: RecipesConfig, out: Path) -> RunConfig:
    return RunConfig(out=str(out), seed=cfg.seed, device=cfg.device, workers=cfg.workers, eval_views=cfg.eval_views)


def pixel_stage(cfg: RecipesConfig, data: str, weights: str, frames: int, epochs: int, out: Path) -> PretrainConfig:
    """`vivitcache pretrain --weights IMAGE --frames F --epochs E`: (a), and the stage 1 of (b) and (c)."""
    model = ModelConfig(spatial=cfg.model, img_size=cfg.img_size, patch_size=cfg.patch_size,
                        spatial_depth=cfg.spatial_depth, temporal_depth=cfg.temporal_depth, num_frames=frames,
                        weights=weights)
    return PretrainConfig(model=model, data=DataConfig(data=data), optim=optim(cfg, epochs), run=run_cfg(cfg, out))


# ------------------------------------------------------------------------------------------------ one phase
class Phases:
    """Times the phases of one recipe process, and puts each run's per-epoch validations on the recipe's clock."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_memory_bytes: dict[str, int] = {}
        self.curve: list[dict] = []
        self.summaries: dict[str, dict] = {}

    def run(self, name: str, fn: Callable[[], dict | None], run_folder: Path | None = None) -> dict | None:
        """Run one phase; with a training run folder, its eval rows join the curve at (phase start + setup before
        `fit` + the row's own seconds), so the last point lands at the phase's end."""
        offset = sum(self.seconds.values())
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = time.perf_counter() - start
        self.peak_memory_bytes[name] = process_peak_rss()
        if run_folder is not None:
            self.summaries[name] = result
            setup = self.seconds[name] - result["seconds"]
            self.curve += [{"seconds": offset + setup + r["seconds"], "val_top1": r["val_top1"], "phase": name,
                            "epoch": r["epoch"]} for r in eval_rows(run_folder)]
        return result

    def add(self, done: dict) -> None:
        """A phase made by another process (the shared stage 1), as its own `result()`."""
        offset = sum(self.seconds.values())
        self.seconds.update(done["phases"])
        self.peak_memory_bytes.update(done["phase_peak_memory_bytes"])
        self.curve += [{**p, "seconds": offset + p["seconds"]} for p in done["curve"]]

    def result(self, final: str) -> dict:
        """The recipe's figures; `final` names the phase whose model is the recipe's result."""
        summary = self.summaries[final]
        return {
            "val_top1": summary["val_top1"],
            "best_val_top1": summary["best_val_top1"],
            "seconds": sum(self.seconds.values()),
            "phases": dict(self.seconds),
            "peak_memory_bytes": max(self.peak_memory_bytes.values()),
            "phase_peak_memory_bytes": dict(self.peak_memory_bytes),
            "final_phase": final,
            "curve": self.curve,
        }


def eval_rows(run_folder: Path) -> list[dict]:
    """The per-epoch validation rows of a run's metrics.jsonl (each with the run's wall time so far)."""
    from vivitcache.training.metrics import MetricsLog

    return [r for r in MetricsLog(Path(run_folder) / "metrics.jsonl").rows() if r.get("kind") == "eval"]


# ------------------------------------------------------------------------------------------------ the steps
def image_step(cfg: RecipesConfig, data: str, out: Path) -> dict:
    """The image checkpoint stand-in (`vivitcache image-pretrain`)."""
    from vivitcache.pretrain.image import ImagePretrainConfig, run_image_pretrain

    return run_image_pretrain(ImagePretrainConfig(
        data=data, out=str(out), model=cfg.model, img_size=cfg.img_size, patch_size=cfg.patch_size,
        spatial_depth=cfg.spatial_depth, steps=cfg.image_steps, seed=cfg.seed))


def stage1_step(cfg: RecipesConfig, data: str, weights: str, out: Path) -> dict:
    """The stage 1 of (b) and (c): the whole ViViT end to end at `stage1_frames` frames."""
    from vivitcache.pretrain import run_pretrain

    phases = Phases()
    phases.run("stage1", lambda: run_pretrain(pixel_stage(cfg, data, weights, cfg.stage1_frames, cfg.stage1_epochs,
                                                          out)), out)
    return phases.result("stage1")


def recipe_a(cfg: RecipesConfig, data: str, weights: str, stage1: dict | None, out: Path) -> dict:
    """(a): the whole ViViT at T frames end to end for the epoch budget."""
    from vivitcache.pretrain import run_pretrain

    phases = Phases()
    phases.run("train", lambda: run_pretrain(pixel_stage(cfg, data, weights, cfg.frames, cfg.epochs, out / "run")),
               out / "run")
    return phases.result("train")


def frozen_stage2(cfg: RecipesConfig, data: str, stage1_dir: str, out: Path) -> dict:
    """(b)'s stage 2: stage 1's ViViT at T frames (position embeddings interpolated, as `train --init` does), its
    spatial ViT frozen but run on every frame of every clip; adapter, temporal and head train."""
    from vivitcache.bench.modes import FrozenSpatialViViT, build_from_stage1
    from vivitcache.data.annotations import load_annotations
    from vivitcache.data.clips import VideoClipDataset
    from vivitcache.data.transforms import Preprocess
    from vivitcache.runs import RunRecord, load_stage1
    from vivitcache.training.loop import Task, call_model, fit
    from vivitcache.training.runtime import seed_everything

    seed_everything(cfg.seed)
    stage1 = load_stage1(stage1_dir)
    model = build_from_stage1(FrozenSpatialViViT, stage1)
    model.spatial.requires_grad_(False)
    model.resize_frames(cfg.frames)
    dataset = load_annotations(data, seed=cfg.seed)
    common = dict(preprocess=Preprocess.from_dict(stage1.preprocess), fps=stage1.fps, stride=stage1.stride,
                  seed=cfg.seed)
    # in store-id order, as (c) lists its videos: (b) and (c) see the same clips
    train, val = (sorted(dataset.split(s), key=lambda r: r.id) for s in ("train", "val"))
    task = Task(
        model=model, forward=call_model,
        train_set=VideoClipDataset(train, cfg.frames, train=True, **common),
        val_set=VideoClipDataset(val, cfg.frames, train=False, views=cfg.eval_views, **common),
        num_classes=len(dataset.classes),
        config=RunRecord(stage="recipe-b", model=model.cfg, classes=dataset.classes,
                         settings={"recipes": key(cfg, "b"), "init": stage1_dir, "data": data}).to_json(),
        title="recipe (b) stage 2, spatial frozen on the fly", frames_per_sample=cfg.frames,
    )
    return fit(task, optim(cfg, cfg.epochs), run_cfg(cfg, out))


def recipe_b(cfg: RecipesConfig, data: str, weights: str, stage1: dict, out: Path) -> dict:
    """(b): stage 1, then stage 2 at T with the spatial ViT frozen and run on the fly."""
    phases = Phases()
    phases.add(stage1)
    phases.run("stage2", lambda: frozen_stage2(cfg, data, stage1["run"], out / "stage2"), out / "stage2")
    return phases.result("stage2")


def cached_stage2(cfg: RecipesConfig, store: Path, out: Path, init: str | None, data: str) -> dict:
    """`vivitcache train --store STORE --frames T` with `--init STAGE1` ((c): its adapter), or without ((d): the
    split of `data`, `d_adapter`)."""
    from vivitcache.train_temporal import TrainConfig, run_train

    model = ModelConfig(temporal_depth=cfg.temporal_depth, **({} if init else {"adapter": cfg.d_adapter}))
    return run_train(TrainConfig(store=str(store), frames=cfg.frames, init=init, model=model,
                                 splits=None if init else data, split_seed=None if init else cfg.seed,
                                 optim=optim(cfg, cfg.epochs), run=run_cfg(cfg, out)))


def extract(cfg: RecipesConfig, data: str, store: Path, **source) -> dict:
    """`vivitcache extract` in this process (no Dask), from a stage-1 run (`checkpoint=`) or image weights."""
    from vivitcache.extract import ExtractConfig, run_extract

    return run_extract(ExtractConfig(data=data, store=str(store), workers=0, device=cfg.device, seed=cfg.seed,
                                     torch_threads=cfg.threads or None, strict=True, **source))


def recipe_c(cfg: RecipesConfig, data: str, weights: str, stage1: dict, out: Path) -> dict:
    """(c): stage 1, extract once with its spatial ViT, stage 2 at T on the cached tokens."""
    phases = Phases()
    phases.add(stage1)
    phases.run("extract", lambda: extract(cfg, data, out / "tokens.zarr", checkpoint=stage1["run"]))
    phases.run("stage2", lambda: cached_stage2(cfg, out / "tokens.zarr", out / "stage2", stage1["run"], data),
               out / "stage2")
    return phases.result("stage2")


def recipe_d(cfg: RecipesConfig, data: str, weights: str, stage1: dict | None, out: Path) -> dict:
    """(d): extract with the image checkpoint, stage 2 at T on the cached tokens from scratch."""
    phases = Phases()
    phases.run("extract", lambda: extract(cfg, data, out / "tokens.zarr", model=cfg.model, img_size=cfg.img_size,
                                          patch_size=cfg.patch_size, spatial_depth=cfg.spatial_depth,
                                          weights=weights, tokens=cfg.d_tokens))
    phases.run("stage2", lambda: cached_stage2(cfg, out / "tokens.zarr", out / "stage2", None, data), out / "stage2")
    return phases.result("stage2")


STEPS = {"a": recipe_a, "b": recipe_b, "c": recipe_c, "d": recipe_d}
"""Recipe letter → the function that runs it in its own process."""


# ------------------------------------------------------------------------------------------------ processes
def _in_child(threads: int, fn: Callable, *args) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return fn(*args)


def in_process(cfg: RecipesConfig, fn: Callable, *args) -> dict:
    """`fn(*args)` in a fresh spawned process with the config's torch threads."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_in_child, cfg.threads, fn, *args).result()


def kept_or_run(cfg: RecipesConfig, letter: str | None, folder: Path, result_file: Path,
                make: Callable[[], dict]) -> dict:
    """The stored result when it was made under this step's key; else `folder` emptied and `make()` run and
    stored (written last: a result file means the step finished)."""
    try:
        stored = json.loads(result_file.read_text())
        if stored["key"] == key(cfg, letter):
            return {**stored, "kept": True}
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    result_file.unlink(missing_ok=True)
    folder.mkdir(parents=True)
    result = {**make(), "key": key(cfg, letter)}
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "kept": False}


def image_weights(cfg: RecipesConfig, data: str, out: Path) -> tuple[str, dict | None]:
    """(path, record) of the image checkpoint: `cfg.weights`, else OUT/image.safetensors made or kept."""
    if cfg.weights is not None:
        return str(Path(cfg.weights).absolute()), None
    path = out / "image.safetensors"
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        wanted = {"data": data, "steps": cfg.image_steps, "model": cfg.model, "img_size": cfg.img_size,
                  "patch_size": cfg.patch_size, "spatial_depth": cfg.spatial_depth, "seed": cfg.seed}
        if path.is_file() and {k: record["config"].get(k) for k in wanted} == wanted:
            return str(path), record
    except (OSError, ValueError, KeyError):
        pass
    from vivitcache.demo.run import torch_threads

    with torch_threads(cfg.threads or None):  # in this process: its time and memory are in no recipe
        return str(path), image_step(cfg, data, path)


# ------------------------------------------------------------------------------------------------ entry point
def run_recipes(cfg: RecipesConfig) -> dict:
    """Run (or keep) every asked-for recipe, write OUT/recipes.json, .md and .png; returns the report plus `files`."""
    from vivitcache.bench.recipes_report import write_report

    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    data = str(bench_data(cfg, out))
    weights, image = image_weights(cfg, data, out)
    stage1 = None
    if set(cfg.recipes) & {"b", "c"}:
        stage1 = kept_or_run(cfg, None, out / "stage1", out / "stage1.json",
                             lambda: {**in_process(cfg, stage1_step, cfg, data, weights, out / "stage1"),
                                      "run": str(out / "stage1")})
    results = {}
    for letter in sorted(cfg.recipes):
        folder = out / "recipes" / RECIPES[letter]
        results[letter] = kept_or_run(cfg, letter, folder, folder / "result.json",
                                      lambda: in_process(cfg, STEPS[letter], cfg, data, weights, stage1, folder))
    shared = {"data": data, "weights": weights, "image_checkpoint": image, "stage1": stage1,
              "load_average": {"before": load_before, "after": _load()}}
    return write_report(cfg, results, shared, out)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


__all__ = ["RecipesConfig", "run_recipes"]
