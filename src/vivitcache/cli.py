"""The `vivitcache` command line. It only parses options and calls the library; all work lives in the modules."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Annotated

import typer

from vivitcache.errors import ConfigError, UserError
from vivitcache.options import Either, Options, Presets
from vivitcache.progress import console
from vivitcache.store.layout import FRAME_TOKENS
from vivitcache.bench.config import BenchConfig
from vivitcache.bench.recipes_config import RecipesConfig
from vivitcache.config import PIXEL_ADAPTERS, PredictConfig, PretrainConfig
from vivitcache.data.synth import SynthConfig
from vivitcache.demo.config import CLI_OPTIONS as DEMO_CLI_OPTIONS, DemoConfig
from vivitcache.extract.config import ExtractConfig
from vivitcache.pretrain.image import ImagePretrainConfig
from vivitcache.sweep.config import SweepConfig
from vivitcache.train_temporal.config import EvalConfig, TrainConfig

# Each option's default, help and range is its config field's (options.py): a command only names the fields it takes
PRETRAIN_OPTIONS = Options(PretrainConfig(), [
    "data.data", "run.out", "model.spatial", "model.img_size", "model.patch_size", "model.spatial_depth",
    "model.weights", "model.pretrained", "model.num_frames", ("model.frame_token", {"choices": FRAME_TOKENS}),
    ("model.adapter", {"choices": PIXEL_ADAPTERS}), "model.temporal_depth", "model.temporal_dim",
    "data.video_root", "data.labels", "data.fps", "data.stride", "optim.epochs", "optim.batch_size", "optim.lr",
    "optim.weight_decay", "optim.warmup_epochs", "optim.label_smoothing", "optim.spatial_lr_scale",
    "optim.accum_steps", "optim.precision", "run.eval_views", "run.workers", "run.checkpoint_every", "run.seed",
    "run.device", "run.resume", "run.overwrite",
])
TRAIN_OPTIONS = Options(TrainConfig(), [
    "store", "init", "frames", "run.out", "init_parts", "no_adapter",
    ("model.adapter", "Adapter: mlp, linear, none, or attn: per frame a query cross-attends over the store's K tokens "
     "(extract --tokens grid / --layers), starting as the pooled-token model; with --init, attn goes before the run's "
     "own adapter and the others are the run's."),
    "model.attn_query",
    ("model.temporal_depth", "With --init none: temporal transformer blocks (with --init: the run's)."),
    "freeze_temporal", "frame_token",
    ("model.temporal_dim", "With --init none: temporal width (default: the frame feature's)."),
    ("model.temporal_heads", "With --init none: temporal heads (default: width // 64)."),
    "model.drop_rate", "model.drop_path_rate", "optim.epochs", "optim.batch_size", "optim.lr", "optim.weight_decay",
    "optim.warmup_epochs", "optim.label_smoothing", "optim.min_lr", "optim.grad_clip", "optim.accum_steps",
    "optim.precision", "augment.temporal_crop", "augment.frame_rate_jitter", "augment.token_dropout", "in_memory",
    "cache_mb", "read", "shuffle_buffer", "read_streams", "val_store", "splits", "video_root", "run.eval_views",
    "run.workers", "run.checkpoint_every", "run.seed", "run.device", "run.resume", "run.overwrite",
])
EXTRACT_OPTIONS = Options(ExtractConfig(), [
    "data", "store", "model", "weights", "pretrained", "checkpoint", "img_size", "patch_size", "spatial_depth",
    "video_root", "labels", "fps", "stride", "tokens", "grid", "layers", "dtype", "batch_size", "workers", "gpus",
    "decode_threads", "compile", "decoder", "scheduler", "videos_per_part", "compression", "device", "seed", "strict",
    "repair", "claim_timeout_s", "retry_failed",
])
DEMO_OPTIONS = Presets(DemoConfig, ["out", "quick", *DEMO_CLI_OPTIONS])
SYNTH_OPTIONS = Options(SynthConfig(), ["classes", "videos_per_class", "frames", "size", "seed", "kind", "source"])
IMAGE_PRETRAIN_OPTIONS = Options(ImagePretrainConfig(), [
    "data", "out", "model", "img_size", "patch_size", "spatial_depth", "steps", "batch_size", "lr", "seed",
])
EVAL_OPTIONS = Options(EvalConfig(), ["store", "checkpoint", "eval_views", "split", "out", "batch_size", "device"])
PREDICT_OPTIONS = Options(PredictConfig(), ["checkpoint", "store", "spatial", "eval_views", "top"])
_BENCH = ["out", "quick", "model", "img_size", "patch_size", "spatial_depth", "temporal_depth", "frames", "epochs",
          "batch_size", "classes", "videos_per_class", "video_frames", "video_size", "data", "seed", "threads",
          "device"]
BENCH_OPTIONS = Either(Presets(BenchConfig, [*_BENCH[:10], "accum_steps", *_BENCH[10:]]), Presets(RecipesConfig, [
    *_BENCH, "recipes", "stage1_epochs", "stage1_frames", "weights", "image_steps", "lr", "eval_views", "workers",
    "d_tokens", "d_adapter"]), "recipes")
SWEEP_OPTIONS = Options(SweepConfig(), ["out", "grid", "prune", "resume", "overwrite"])

app = typer.Typer(
    name="vivitcache",
    help="Cheap ViViT training: run the frozen spatial ViT once, cache per-frame tokens (Zarr v3), "
    "train the temporal stage on tokens.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def user_errors(fn):
    """Turn a known bad-input exception into `error: <message>` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from vivitcache.store import StoreDamageError

        try:
            return fn(*args, **kwargs)
        except StoreDamageError as e:  # damage, not bad input: exit 1, like `verify`
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except UserError as e:  # bad input, or a state to act on; anything else is a bug and keeps its traceback
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # Ctrl-C: what was committed (parts, checkpoints) is kept
            console.print("[bold red]interrupted:[/] committed parts and checkpoints are kept; the same command "
                          "continues (train/pretrain: with --resume)", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------------- commands
@app.command(epilog="Example: vivitcache demo --out demo_out   |   vivitcache demo --quick --out /tmp/demo --overwrite")
@user_errors
@DEMO_OPTIONS.command
def demo(
    cfg: DemoConfig,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier demo's outputs in --out.")] = False,
):
    """The whole method offline: synth → stage 1 (short clips) → extract (Dask) → stage 2 (long clips, cached
    tokens) → eval → OUT/report.md."""
    from vivitcache.demo import run_demo

    report = run_demo(cfg, overwrite=overwrite)
    console.print(f"report: {report['report_md']}", highlight=False)
    for line in report["takeaway"]:
        console.print(line, highlight=False, soft_wrap=True)


@app.command(epilog="Example: vivitcache synth data/synth --classes 8 --videos-per-class 96 --frames 64 --size 32 "
             "(add --kind real for windows of a real video)")
@user_errors
@SYNTH_OPTIONS.command
def synth(cfg: SynthConfig, out: Annotated[Path, typer.Argument(help="Folder to write videos/ and labels.csv into.")]):
    """Make a deterministic dataset whose classes depend only on motion (a synthetic blob, or windows of a real video)."""
    from vivitcache.data.real_motion import make_real_motion_dataset
    from vivitcache.data.synth import make_synth_dataset

    make = make_real_motion_dataset if cfg.kind == "real" else make_synth_dataset
    path = make(out, **dataclasses.asdict(cfg))
    console.print(f"wrote {cfg.classes * cfg.videos_per_class} videos and {path / 'labels.csv'}")


@app.command(
    epilog="Example: vivitcache pretrain --data data/synth/labels.csv --model vit-ti --img-size 32 --patch-size 8 "
    "--spatial-depth 2 --frames 8 --epochs 10 --out runs/stage1   |   HF_HUB_OFFLINE=1 vivitcache pretrain --data "
    "k400.csv --video-root /data/k400 --model vit_base_patch16_clip_224.openai --pretrained --spatial-lr-scale 0.1 "
    "--out runs/stage1"
)
@user_errors
@PRETRAIN_OPTIONS.command
def pretrain(cfg: PretrainConfig):
    """Stage 1: train the whole ViViT end to end on short clips (spatial from --weights, temporal from scratch)."""
    from vivitcache.pretrain import run_pretrain

    _print_run_summary(Path(cfg.run.out), run_pretrain(cfg))


@app.command(
    name="image-pretrain",
    epilog="Example: vivitcache image-pretrain --data data/synth/labels.csv --model vit-ti --img-size 32 "
    "--patch-size 8 --spatial-depth 2 --steps 600 --out runs/image.safetensors",
)
@user_errors
@IMAGE_PRETRAIN_OPTIONS.command
def image_pretrain(cfg: ImagePretrainConfig):
    """Offline stand-in for an image checkpoint: teach the spatial ViT to locate what moves, on single frames."""
    from vivitcache.pretrain.image import run_image_pretrain

    record, out = run_image_pretrain(cfg), cfg.out
    console.print(
        f"localisation loss {record['initial_loss']:.3f} → {record['final_loss']:.3f} "
        f"(predicting the mean: {record['chance_loss']:.3f})  {record['seconds']:.0f} s  → {out}"
    )


def _print_run_summary(out: Path, summary: dict) -> None:
    top1, top5 = summary.get("val_top1"), summary.get("val_top5")
    acc = f"val top-1 {100 * top1:.1f}%  top-5 {100 * top5:.1f}%" if top1 is not None else "no validation split"
    console.print(
        f"{acc}  {summary['seconds']:.0f} s  peak memory {summary['peak_memory_bytes'] / 2**20:.0f} MiB  → {out}"
    )


@app.command(
    epilog="Example: vivitcache extract --data data/synth/labels.csv --checkpoint runs/stage1 "
    "--store runs/tokens.zarr --workers 2   |   vivitcache extract --data k400.csv --video-root /data/k400 "
    "--model vit_giant_patch14_dinov2.lvd142m --weights ~/models/dinov2_vitg14 --store /shared/k400_dinov2g.zarr "
    "--scheduler tcp://head:8786   |   vivitcache extract --data k400.csv --model vit-b --pretrained --store k400.zarr"
)
@user_errors
@EXTRACT_OPTIONS.command
def extract(cfg: ExtractConfig):
    """Run the frozen spatial ViT once over every frame into a shared, resumable Zarr v3 token store."""
    from vivitcache.extract import run_extract

    store = cfg.store
    summary = run_extract(cfg)
    console.print(
        f"done {summary['done']}, skipped {summary['skipped']}, failed {summary['failed']}, "
        f"{summary['frames']} frames at {summary['frames_per_s']:.0f} frames/s → {store}"
    )
    if summary.get("repaired_parts"):
        console.print(f"repaired {len(summary['repaired_parts'])} damaged part(s) (moved aside to {store}/damaged/)")
    if summary.get("retried"):
        console.print(f"retried {summary['retried']} video(s) of the failure ledger (source changed, or --retry-failed)")
    if summary.get("labels_updated"):
        console.print(f"updated the label of {summary['labels_updated']} committed video(s) from the annotations")
    if summary.get("claimed_elsewhere"):
        console.print(f"{summary['claimed_elsewhere']} video(s) are being extracted by another live run "
                      f"({_claims_line(summary['claims'], cfg.claim_timeout_s)}); re-run later to pick up any it leaves",
                      highlight=False, soft_wrap=True)


def _claims_line(claims: list[dict], timeout: float) -> str:
    """Who holds the claims a run skipped: the first one's part, host, pid and heartbeat age, and how many more."""
    first = claims[0]
    age = first.get("age_s")
    when = "?" if age is None else f"{age:.0f} s ago" if age >= 0 else f"{-age:.0f} s in the future: clock skew?"
    more = f", and {len(claims) - 1} more part(s)" if len(claims) > 1 else ""
    return (f"part {first['part_id']} claimed by host {first.get('host')} pid {first.get('pid')}, heartbeat {when}"
            f"{more}; a claim is taken over after --claim-timeout {timeout:g} s without a heartbeat")


@app.command(
    name="train",
    epilog="Example: vivitcache train --store runs/tokens.zarr --init runs/stage1 --frames 32 --epochs 20 "
    "--out runs/stage2   |   vivitcache train --store runs/grid.zarr --init none --adapter attn --out runs/attn   |   "
    "torchrun --nproc-per-node 8 -m vivitcache train --store S.zarr --init RUN1 --frames 128 ..."
)
@user_errors
@TRAIN_OPTIONS.command
def train(cfg: TrainConfig):
    """Stage 2: train adapter + temporal transformer + head on cached tokens (never decodes a pixel)."""
    from vivitcache.train_temporal import run_train

    _print_run_summary(Path(cfg.run.out), run_train(cfg))


def _train_parser():
    """`train`'s options as a click command that returns the TrainConfig (what `sweep` parses each config with)."""
    parser = typer.Typer(add_completion=False)
    parser.command()(TRAIN_OPTIONS.command(lambda cfg: cfg))
    command = typer.main.get_command(parser)

    def parse(name: str, argv: list[str]) -> TrainConfig:
        try:
            return command.main(args=argv, prog_name="vivitcache train", standalone_mode=False)
        except typer.TyperException as e:  # typer's click: usage errors and bad values
            raise ConfigError(f"config {name}: {e.format_message()}") from None
        except ConfigError as e:  # a value out of its range (the config dataclasses' checks)
            raise ConfigError(f"config {name}: {e}") from None

    options = [p for p in command.params if p.param_type_name == "option"]
    return parse, options


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Example: vivitcache sweep --out runs/sweep --store runs/tokens.zarr --frames 32 --epochs 10 "
    "--lr 3e-4,1e-3,3e-3 --weight-decay 0.05,0.1 --temporal-depth 2,4 --prune halving   |   "
    "vivitcache sweep --out runs/sweep --grid sweep.toml --store runs/tokens.zarr   |   "
    "vivitcache sweep --out runs/sweep --resume",
)
@user_errors
@SWEEP_OPTIONS.command
def sweep(cfg: SweepConfig, ctx: typer.Context):
    """Train many stage-2 configs in one pass over the tokens: any `train` option may take a comma list (configs are
    the product), every batch is read once for all of them, each config leaves a normal `train` run folder."""
    from vivitcache.sweep import OptionKinds, expand, load_manifest, run_sweep

    parse, options = _train_parser()
    kinds = OptionKinds(flags=frozenset(o for p in options if p.is_flag for o in [*p.opts, *p.secondary_opts]),
                        valued=frozenset(o for p in options if not p.is_flag for o in p.opts))
    out = Path(cfg.out)
    if cfg.resume and not ctx.args and cfg.grid is None:  # the sweep as it was started
        configs, pruning = load_manifest(out)
        cfg = dataclasses.replace(cfg, prune=pruning)
    else:
        configs = expand(list(ctx.args), None if cfg.grid is None else Path(cfg.grid), kinds)
    own = ["--resume", "auto"] if cfg.resume else ["--overwrite"] if cfg.overwrite else []
    parsed = [(c, parse(c.name, [*c.args, "--out", str(out / "configs" / c.name), *own])) for c in configs]
    content = run_sweep(cfg, parsed)
    best = content["configs"][0]
    console.print(f"best: {best['name']}  val top-1 {100 * (best['val_top1'] or 0):.1f}%  "
                  f"({len(configs)} configs, {content['seconds']:.0f} s)  → {out / 'sweep.md'}", highlight=False)


@app.command(name="eval", epilog="Example: vivitcache eval --store runs/tokens.zarr --checkpoint runs/stage2 --eval-views 2")
@user_errors
@EVAL_OPTIONS.command
def eval_(cfg: EvalConfig):
    """Top-1/top-5 over fixed views of a stage-2 run on a store; writes eval.json and a confusion matrix PNG."""
    from vivitcache.train_temporal import run_eval

    r = run_eval(cfg.store, cfg.checkpoint, views=cfg.eval_views, out=cfg.out, batch_size=cfg.batch_size,
                 split=cfg.split, device=cfg.device)
    console.print(
        f"top-1 {100 * r['val_top1']:.1f}%  top-5 {100 * r['val_top5']:.1f}%  on {r['val_videos']} videos "
        f"({r['split']}, {cfg.eval_views} views) → {r['json']}, {r['png']}"
    )


@app.command(
    epilog="Example: vivitcache predict clip.mp4 --checkpoint runs/stage2   |   "
    "vivitcache predict move_left_003 --checkpoint runs/stage2 --store runs/tokens.zarr"
)
@user_errors
@PREDICT_OPTIONS.command
def predict(
    cfg: PredictConfig,
    video: Annotated[str, typer.Argument(help="A video file, or a video id of --store.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Top-5 labels with probabilities for one video (spatial ViT on the fly, or cached tokens from --store)."""
    from vivitcache.predict import predict as run_predict

    video_id = None if Path(video).is_file() or cfg.store is None else video
    p = run_predict(video, cfg.checkpoint, store=cfg.store, video_id=video_id, views=cfg.eval_views, top=cfg.top,
                    spatial=cfg.spatial)
    if as_json:
        _print_json({"video": p.video, "source": p.source, "top": [{"label": c, "prob": q} for c, q in p.top]})
        return
    console.print(f"{p.video}  (frame tokens: {p.source})")
    for label, prob in p.top:
        console.print(f"  {prob:6.1%}  {label}")


@app.command(epilog="Example: vivitcache info runs/tokens.zarr --json")
@user_errors
def info(
    store: Annotated[Path, typer.Argument(help="Token store (.zarr folder).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Describe a token store: model, fingerprint, videos, frames, failures, size on disk."""
    from vivitcache.store import store_info

    data = store_info(store)
    if as_json:
        _print_json(data)
        return
    from rich.table import Table

    table = Table(title=str(store), show_header=False)
    fp = data["fingerprint"]
    for key, value in [
        ("model", fp.get("model")),
        ("weights sha256", str(fp.get("weights_sha256", ""))[:16] + "…"),
        ("tokens", f"{data['layout']['tokens']} (K={data['layout']['tokens_per_frame']}, D={data['layout']['dim']}, "
                   f"{data['layout']['dtype']}" + "".join(f", {key} {data['layout'][key]}" for key in ("grid", "layers")
                                                          if key in data["layout"]) + ")"),
        ("videos", data["videos"]),
        ("frames", data["frames"]),
        ("failed", data["failed"]),
        ("classes", len(data["classes"])),
        ("parts", data["parts"]),
        ("size on disk", f"{data['bytes_on_disk'] / 2**20:.1f} MiB"),
        ("bytes per frame", data["bytes_per_frame"]),
        ("files per million frames", data.get("files_per_million_frames")),
        ("index", data.get("index")),
    ]:
        table.add_row(key, str(value))
    console.print(table)


@app.command(epilog="Example: vivitcache verify runs/tokens.zarr   |   vivitcache verify runs/tokens.zarr --quick")
@user_errors
def verify(
    store: Annotated[Path, typer.Argument(help="Token store (.zarr folder).")],
    quick: Annotated[bool, typer.Option("--quick", help="Metadata only: commit records, index, every file present with its size.")] = False,
):
    """Check every committed video is complete and readable (chunks in parallel); exit status 1 on any problem."""
    from vivitcache.store import verify_store

    problems = verify_store(store, quick=quick)
    for p in problems:  # the last line, if any damage, says how to repair it
        console.print(p if p.startswith("repair:") else f"[red]problem:[/] {p}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"{store}: OK")


@app.command(name="index", epilog="Example: vivitcache index runs/tokens.zarr")
@user_errors
def index_(store: Annotated[Path, typer.Argument(help="Token store (.zarr folder).")]):
    """Rebuild the store's columnar index from the parts' commit records (stores made before it, a damaged index, or
    one listing parts that are gone); a fresh index is left as it is (a read-only store is fine)."""
    from vivitcache.extract.work import disk_errors
    from vivitcache.store import StoreWriter
    from vivitcache.store.index import index_state, open_index

    writer = StoreWriter.open(store)
    if index_state(writer.path) == "fresh":
        console.print(f"{store}: the index is fresh, nothing to write")
        return
    dropped = open_index(writer.path, strict=False).missing
    with disk_errors(writer.path):
        result = writer.consolidate(force=True)
    console.print(f"{store}: indexed {result['videos']} videos in {result['parts']} parts")
    if dropped:
        console.print(f"dropped {len(dropped)} part(s) the old index listed that are not in {store}/parts: "
                      f"{', '.join(dropped)} (`vivitcache verify` still names any that the part plan lists)",
                      highlight=False, soft_wrap=True)


@app.command(epilog="Example: vivitcache bench --out runs/bench   |   vivitcache bench --quick --out /tmp/bench_quick   |   "
             "vivitcache bench --recipes --out runs/recipes")
@user_errors
@BENCH_OPTIONS.command
def bench(
    cfg: BenchConfig | RecipesConfig,
    recipes: Annotated[bool, typer.Option("--recipes", help="Whole recipes, time to accuracy: (a) end to end, (b) stage "
                                          "1 → frozen on the fly, (c) stage 1 → extract → cached, (d) no stage 1.")] = False,
):
    """Stage-2 cost side by side: (a) end to end, (b) spatial frozen on the fly, (c) cached tokens; ratios vs (c).
    With --recipes: whole recipes on the same data, val top-1 against wall time (recipes.json, .md, .png)."""
    if recipes:
        from vivitcache.bench.recipes import run_recipes

        result = run_recipes(cfg)
        print(result["markdown"])
        console.print(f"→ {', '.join(result['files'].values())}")
        return
    from vivitcache.bench import run_bench

    result = run_bench(cfg)
    print(result["markdown"])
    console.print(f"→ {result['files']['md']}, {result['files']['json']}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
