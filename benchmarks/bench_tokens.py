"""Richer frozen tokens: can a patch grid and an attentive adapter replace stage 1 (issue 20)?

On the demo's synthetic motion dataset (`--dataset synth`) or on windows of a real video (`--dataset real`,
`data.real_motion`: 8 camera-motion classes, same sizes), with the demo's models (`vivitcache.demo`: ViT-Ti 32 px
patch 8, 2 blocks, image checkpoint 600 steps, made on the dataset's own train frames), three recipes from the same
data, seed and image checkpoint, one run each:

- (i)   image checkpoint → stage 1 (8 frames) → extract `pooled` → stage 2 (32 frames, mlp adapter, `--init` stage 1);
- (ii)  image checkpoint → extract `grid` (4 x 4, ± both blocks) → stage 2 `--adapter attn`, `--init none`;
- (iii) image checkpoint → stage 1 → extract `grid` from it → stage 2 `--adapter attn`, `--init` stage 1.

Wall time of a recipe = the sum of its steps from the decoded dataset on (image checkpoint, stage 1, extraction,
stage 2; the image checkpoint and stage 1 are run once and counted in every recipe that uses them). Val top-1 is
stage 2's own validation at its last epoch (2 views), on the dataset's val split. Prints Markdown, writes JSON.

    .venv/bin/python benchmarks/bench_tokens.py --out benchmarks/results/tokens.json
    .venv/bin/python benchmarks/bench_tokens.py --dataset real --videos-per-class 64 --recipes i,ii,ii_layers,iii \
        --work /tmp/bench_tokens_real --out benchmarks/results/tokens_real.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from vivitcache.config import ModelConfig
from vivitcache.data.real_motion import make_real_motion_dataset
from vivitcache.data.synth import make_synth_dataset
from vivitcache.demo.config import DemoConfig
from vivitcache.demo.run import extract_config, image_config, stage1_config, stage2_config, torch_threads
from vivitcache.extract import run_extract
from vivitcache.pretrain import run_pretrain
from vivitcache.pretrain.image import run_image_pretrain
from vivitcache.store import TokenStore
from vivitcache.train_temporal import run_train


CPU: dict[str, float] = {}
"""CPU seconds of each step (this process, all its threads): less sensitive than wall time to a shared machine."""
LOAD: dict[str, float] = {}
"""1-minute load average at the end of each step (the machine is shared)."""


def timed(seconds: dict, name: str, fn, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    seconds[name] = round(time.perf_counter() - start, 1)
    CPU[name] = round(time.process_time() - cpu, 1)
    LOAD[name] = round(os.getloadavg()[0], 1)
    print(f"{name}: {seconds[name]} s wall, {CPU[name]} s CPU, load {LOAD[name]}", flush=True)
    return result


def extract(cfg: DemoConfig, labels: Path, store: Path, stage1: Path | None, image: Path, **tokens):
    """`vivitcache extract` from the stage-1 run, or from the image checkpoint (`--weights`), with `tokens` settings."""
    base = extract_config(cfg, labels, stage1 or Path("unused"), store)
    if stage1 is None:
        base = dataclasses.replace(base, checkpoint=None, model=cfg.model, img_size=cfg.img_size,
                                   patch_size=cfg.patch_size, spatial_depth=cfg.spatial_depth, weights=str(image))
    return run_extract(dataclasses.replace(base, workers=cfg.extract_workers, **tokens))


def stage2(cfg: DemoConfig, labels: Path, store: Path, stage1: Path | None, out: Path, epochs: int, attn: bool,
           lr: float | None = None, attn_query: str = "pooled"):
    """`vivitcache train` (from stage 1, or `--init none` with the demo's temporal depth), `--adapter attn` or mlp."""
    train = stage2_config(cfg, store, stage1 or Path("unused"), out)
    model = ModelConfig(temporal_depth=cfg.temporal_depth, adapter="attn" if attn else "mlp", attn_query=attn_query)
    # the dataset's own train/val split for every recipe (without --init, train would hash its own split)
    train = dataclasses.replace(train, init=str(stage1) if stage1 else None, model=model, splits=str(labels),
                                optim=dataclasses.replace(train.optim, epochs=epochs, lr=lr or train.optim.lr))
    return run_train(train)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bench_tokens")
    ap.add_argument("--out", default="benchmarks/results/tokens.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: kind to a shared 2-core machine)")
    ap.add_argument("--attn-epochs", type=int, default=None, help="stage-2 epochs of the attn recipes (default: (i)'s)")
    ap.add_argument("--attn-lr", type=float, default=None, help="stage-2 peak lr of the attn recipes (default: (i)'s)")
    ap.add_argument("--attn-query", choices=("pooled", "learned"), default="pooled", help="the attn recipes' query")
    ap.add_argument("--grid", type=int, default=4, help="patch grid N of the grid recipes")
    ap.add_argument("--stage1-spatial-lr-scale", type=float, default=None, help="stage 1's spatial LR multiplier "
                    "(default: the demo's)")
    ap.add_argument("--quick", action="store_true", help="the demo's --quick sizes (a smoke run, not a measurement)")
    ap.add_argument("--dataset", choices=("synth", "real"), default="synth",
                    help="synth: the demo's moving blob; real: windows of a real video (data.real_motion)")
    ap.add_argument("--videos-per-class", type=int, default=None, help="dataset size (default: the demo's)")
    ap.add_argument("--recipes", default="i,ii,ii_layers,iii", help="which recipes (ii_long: ii with 3x the epochs)")
    ap.add_argument("--reuse", default=None, help="JSON of an earlier run in --work: reuse its image checkpoint and "
                    "stage 1 (their seconds taken from it) instead of training them again")
    args = ap.parse_args()
    cfg = DemoConfig.preset(args.quick, out=args.work, threads=args.threads, extract_workers=0,
                            videos_per_class=args.videos_per_class,
                            stage1_spatial_lr_scale=args.stage1_spatial_lr_scale)
    make_data = make_real_motion_dataset if args.dataset == "real" else make_synth_dataset
    attn_epochs = args.attn_epochs or cfg.stage2_epochs
    root = Path(args.work).absolute()
    labels, image, stage1 = root / "data" / "labels.csv", root / "image.safetensors", root / "stage1"
    s: dict[str, float] = {}
    rows = {}
    with torch_threads(cfg.threads):
        if not labels.exists():
            timed(s, "data", make_data, root / "data", classes=cfg.classes, videos_per_class=cfg.videos_per_class,
                  frames=cfg.video_frames, size=cfg.video_size, seed=cfg.seed, val_fraction=cfg.val_fraction)
        if args.reuse:
            prior = json.loads(Path(args.reuse).read_text())
            s.update({k: prior["seconds"][k] for k in ("image", "stage1")})
            CPU.update({k: prior.get("cpu_seconds", {}).get(k, float("nan")) for k in ("image", "stage1")})
        else:
            timed(s, "image", run_image_pretrain, image_config(cfg, labels, image))
            timed(s, "stage1", run_pretrain, stage1_config(cfg, labels, stage1, image))
        recipes = {  # name: (extract from stage 1?, token settings, attn adapter, stage-2 epochs)
            "i": (True, {"tokens": "pooled"}, False, cfg.stage2_epochs),
            "ii": (False, {"tokens": "grid", "grid": args.grid}, True, attn_epochs),
            "ii_layers": (False, {"tokens": "grid", "grid": args.grid, "layers": [-1, -2]}, True, attn_epochs),
            "iii": (True, {"tokens": "grid", "grid": args.grid}, True, attn_epochs),
            "ii_long": (False, {"tokens": "grid", "grid": args.grid}, True, 3 * attn_epochs),
        }
        for name in args.recipes.split(","):
            from_stage1, tokens, attn, epochs = recipes[name]
            store = root / f"{name}.zarr"
            timed(s, f"extract_{name}", extract, cfg, labels, store, stage1 if from_stage1 else None, image, **tokens)
            summary = timed(s, f"stage2_{name}", stage2, cfg, labels, store, stage1 if from_stage1 else None,
                            root / f"stage2_{name}", epochs, attn, args.attn_lr if attn else None, args.attn_query)
            steps = ["image"] + ["stage1"] * from_stage1 + [f"extract_{name}", f"stage2_{name}"]
            layout = TokenStore.open(store).layout
            rows[name] = {"val_top1": summary["val_top1"], "seconds": round(sum(s[k] for k in steps), 1),
                          "cpu_seconds": round(sum(CPU[k] for k in steps), 1),
                          "steps": {k: s[k] for k in steps}, "bytes_per_frame": layout.frame_bytes,
                          "tokens": tokens, "attn": attn, "epochs": epochs,
                          "lr": (attn and args.attn_lr) or cfg.stage2_lr, "attn_query": args.attn_query if attn else None}
    print("| recipe | val top-1 | wall s (steps) | CPU s | bytes / frame |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r['val_top1']:.1f} % | {r['seconds']} ({r['steps']}) | {r['cpu_seconds']} | "
              f"{r['bytes_per_frame']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    Path(args.out).write_text(json.dumps({"dataset": args.dataset, "videos_per_class": cfg.videos_per_class, "rows": rows, "seconds": s, "cpu_seconds": CPU, "load": LOAD, "loadavg_end": load}, indent=1))


if __name__ == "__main__":
    main()
