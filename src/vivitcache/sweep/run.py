"""`run_sweep`: train many stage-2 configs in one process, every batch read, gathered and moved to the device once.

Configs are grouped by what decides their batches: store, split, clip length, frame feature, batch size and
accumulation, precision, seed, read settings, augmentation, workers and eval views. One group is one `fit_many`:
its configs (model, init, frozen parts, optimiser, schedule, epochs) share each batch. Groups (e.g. `--frames
32,64`) run one after another, each with its own read of the store: a clip of T frames is not a sub-sample of a
longer one under the clip rule, so sharing would change what each config sees.

Every config is built as `vivitcache train` builds it (seeded, its own RNG stream captured right after its model
is built), so it trains exactly as that `train` command would alone: same batches, same dropout, same result.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vivitcache.errors import ConfigError
from vivitcache.progress import console
from vivitcache.runs import load_stage1
from vivitcache.store import TokenStore
from vivitcache.sweep.config import SweepConfig
from vivitcache.sweep.grid import ConfigArgs
from vivitcache.sweep.halving import halving
from vivitcache.sweep.memory import check_fits
from vivitcache.sweep.report import write_report
from vivitcache.train_temporal.config import TrainConfig
from vivitcache.train_temporal.build import build_stage2_model
from vivitcache.train_temporal.run import build_task, prepare_data, split_source
from vivitcache.training.checkpoint import write_json
from vivitcache.training.loop import Spec, fit_many
from vivitcache.models.tokens import frame_feature_dim
from vivitcache.device import resolve_device
from vivitcache.training.runtime import is_main_process, seed_everything, world_size

MANIFEST = "sweep_configs.json"
"""The sweep's configs as `train` arguments, written first: `--resume` reads them back."""

MEMBER_FIELDS = ("init", "init_parts", "no_adapter", "freeze_temporal", "model", "frame_token")
"""TrainConfig fields a config may vary inside one group (they do not change its batches)."""
MEMBER_OPTIM = ("epochs", "lr", "weight_decay", "warmup_epochs", "min_lr", "spatial_lr_scale", "label_smoothing",
                "grad_clip")


@dataclass
class Built:
    """One config, its model built as `train` builds it, and the RNG state its stream starts from."""

    args: ConfigArgs
    cfg: TrainConfig
    store: TokenStore
    model: torch.nn.Module
    made: dict
    rng: torch.Tensor


def data_key(cfg: TrainConfig, frame_token: str) -> str:
    """What decides a config's batches, as one string: configs with equal keys share them."""
    d = cfg.to_dict()
    for name in MEMBER_FIELDS:
        d.pop(name)
    d["optim"] = {k: v for k, v in d["optim"].items() if k not in MEMBER_OPTIM}
    d["run"] = {k: v for k, v in d["run"].items() if k != "out"}
    # the split as resolved: a stage-1 run given with --init brings its own annotations and seed
    d["resolved"] = {"frame_token": frame_token, "split": None if cfg.val_store else split_source(cfg)}
    return json.dumps(d, sort_keys=True, default=str)


def _manifest(sweep: SweepConfig, configs: list[ConfigArgs]) -> dict:
    return {"configs": [{"name": c.name, "args": list(c.args), "varying": [list(v) for v in c.varying]}
                        for c in configs], "prune": sweep.prune}


def load_manifest(out: str | Path) -> tuple[list[ConfigArgs], str]:
    """The configs and pruning of the sweep in `out` (for `--resume` without the grid)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no sweep ({MANIFEST} missing); give the grid to start one")
    manifest = json.loads(path.read_text())
    return [ConfigArgs(c["name"], tuple(c["args"]), tuple(tuple(v) for v in c["varying"]))
            for c in manifest["configs"]], manifest["prune"]


def _start_manifest(sweep: SweepConfig, configs: list[ConfigArgs]) -> None:
    """Write the manifest (the configs as `train` arguments, and the pruning), or check it is the one `--resume` continues; a used folder needs --resume or --overwrite."""
    path = Path(sweep.out) / MANIFEST
    manifest = _manifest(sweep, configs)
    if path.is_file() and sweep.resume:
        if json.loads(path.read_text()) != manifest:
            raise ConfigError(f"--resume: {sweep.out} holds another sweep (other configs or --prune); resume it "
                              "with no train options, or start this one in a new --out")
        return
    if path.is_file() and not sweep.overwrite:
        raise ConfigError(f"{sweep.out} holds a sweep: --resume continues it, --overwrite replaces it")
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, manifest)


def _build(configs: list[tuple[ConfigArgs, TrainConfig]]) -> list[Built]:
    built, stores, runs = [], {}, {}
    for args, cfg in configs:
        if cfg.store not in stores:  # each store opened once
            stores[cfg.store] = TokenStore.open(cfg.store)
        if cfg.init is not None and cfg.init not in runs:  # each stage-1 run loaded (and its weights hashed) once
            runs[cfg.init] = load_stage1(cfg.init)
        seed_everything(cfg.run.seed)  # as `train` does: the model draws its init under the seed
        model, made = build_stage2_model(cfg, stores[cfg.store], runs.get(cfg.init))
        built.append(Built(args, cfg, stores[cfg.store], model, made, torch.get_rng_state()))
    return built


def _train_group(group: list[Built], sweep: SweepConfig, title: str) -> list[dict]:
    """One `fit_many` over configs that share their batches."""
    first, frame_token = group[0].cfg, group[0].model.cfg.frame_token
    data = prepare_data(first, group[0].store, frame_token)
    try:
        micro = max(1, first.optim.batch_size // (world_size() * first.optim.accum_steps))
        layout = group[0].store.layout
        frame_values = frame_feature_dim(layout.dim, frame_token, layout.tokens_per_frame)
        check_fits([b.model for b in group], micro, frame_values, resolve_device(first.run.device))
        specs = [Spec(build_task(b.cfg, data, b.model, b.made), b.cfg.optim, Path(b.cfg.run.out), b.rng)
                 for b in group]
        prune = halving(max(b.cfg.optim.epochs for b in group)) if sweep.prune == "halving" else None
        return fit_many(specs, first.run, prune, title)
    finally:
        data.stop()


def run_sweep(sweep: SweepConfig, configs: list[tuple[ConfigArgs, TrainConfig]]) -> dict:
    """Train every config (its `TrainConfig` has its run folder, resume and overwrite set) and write the sweep's
    leaderboard; returns sweep.json's content."""
    _start_manifest(sweep, [a for a, _ in configs])
    built = _build(configs)
    groups: dict[str, list[Built]] = {}
    for b in built:
        groups.setdefault(data_key(b.cfg, b.model.cfg.frame_token), []).append(b)
    if len(groups) > 1:
        console.print(f"note: {len(groups)} groups of configs with other batches (clip length, batch size, seed, "
                      "…) run one after another, each reading the store once", highlight=False, soft_wrap=True)
    t0, summaries = time.perf_counter(), {}
    for g, group in enumerate(groups.values()):
        title = f"sweep group {g + 1}/{len(groups)}" if len(groups) > 1 else "sweep"
        for b, summary in zip(group, _train_group(group, sweep, title)):
            summaries[b.args.name] = summary
    results = [(b.args, b.cfg, summaries[b.args.name]) for b in built]
    report = {"groups": len(groups), "seconds": time.perf_counter() - t0, "sweep": sweep.to_dict()}
    return write_report(Path(sweep.out), results, report,
                        lambda a, cfg: "vivitcache train " + shlex.join([*a.args, "--out", cfg.run.out]))
