"""The `vivitcache` command line. It only parses options and calls the library; all work lives in the modules."""

from __future__ import annotations

import functools
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vivitcache.progress import console

app = typer.Typer(
    name="vivitcache",
    help="Cheap ViViT training: run the frozen spatial ViT once, cache per-frame tokens (Zarr v3), "
    "train the temporal stage on tokens.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


class Tokens(str, Enum):
    cls = "cls"
    cls_mean = "cls+mean"
    all = "all"


class Dtype(str, Enum):
    fp16 = "fp16"
    bf16 = "bf16"


class FrameToken(str, Enum):
    cls = "cls"
    cls_mean = "cls+mean"


class Adapter(str, Enum):
    mlp = "mlp"
    linear = "linear"
    none = "none"


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: printed as one line, exit status 2, no traceback."""
    from vivitcache.data.annotations import AnnotationError
    from vivitcache.data.decode import VideoDecodeError
    from vivitcache.models.spatial import SpatialModelError
    from vivitcache.store import FingerprintMismatchError, StoreError
    from vivitcache.training.checkpoint import CheckpointError

    return (
        AnnotationError,
        VideoDecodeError,
        SpatialModelError,
        StoreError,
        FingerprintMismatchError,
        CheckpointError,
        FileNotFoundError,
        ValueError,
    )


def user_errors(fn):
    """Turn a known bad-input exception into `error: <message>` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------------- options
DataOpt = Annotated[str, typer.Option("--data", help="Class-per-folder dir, CSV path,label[,split], Kinetics CSV, or SSv2 JSON.")]
VideoRootOpt = Annotated[Optional[str], typer.Option(help="Video folder for Kinetics CSV / SSv2 JSON annotations.")]
LabelsOpt = Annotated[Optional[str], typer.Option(help="SSv2 labels JSON (class name → index).")]
ModelOpt = Annotated[str, typer.Option("--model", help="Spatial ViT: vit-ti|vit-s|vit-b|vit-l|vit-h|vit-g or a timm ViT name.")]
ImgSizeOpt = Annotated[Optional[int], typer.Option(help="Spatial input size override (default: the model's).")]
PatchOpt = Annotated[Optional[int], typer.Option(help="Patch size override (random-init models).")]
DepthOpt = Annotated[Optional[int], typer.Option(help="Spatial depth override (tiny random-init models).")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Local spatial weights: safetensors or timm/torch .pth.")]
FpsOpt = Annotated[Optional[float], typer.Option(help="Sample source frames at this rate (timestamp based, VFR safe).")]
StrideOpt = Annotated[Optional[int], typer.Option(help="Keep every K-th source frame.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for init, sampling and shuffling.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
EpochsOpt = Annotated[int, typer.Option(help="Training epochs.")]
BatchOpt = Annotated[int, typer.Option(help="Global batch size per optimiser step.")]
LrOpt = Annotated[float, typer.Option(help="Peak learning rate (AdamW, warmup + cosine).")]
WorkersOpt = Annotated[int, typer.Option(help="DataLoader worker processes (spawn).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")]
ViewsOpt = Annotated[int, typer.Option(help="Temporal views per validation video.")]
PrecisionOpt = Annotated[Precision, typer.Option(help="auto = bf16 autocast on CUDA, fp32 on CPU.")]


# ---------------------------------------------------------------------------------------------------- commands
@app.command(epilog="Example: vivitcache synth data/synth --classes 8 --videos-per-class 24 --frames 64 --size 48")
@user_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write videos/ and labels.csv into.")],
    classes: Annotated[int, typer.Option(help="Number of motion classes (at most 10).")] = 8,
    videos_per_class: Annotated[int, typer.Option(help="Videos per class.")] = 24,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 64,
    size: Annotated[int, typer.Option(help="Frame side in pixels.")] = 48,
    seed: SeedOpt = 0,
):
    """Make a deterministic synthetic dataset whose classes depend only on motion."""
    from vivitcache.data.synth import make_synth_dataset

    path = make_synth_dataset(out, classes=classes, videos_per_class=videos_per_class, frames=frames, size=size, seed=seed)
    console.print(f"wrote {classes * videos_per_class} videos and {path / 'labels.csv'}")


@app.command(
    epilog="Example: vivitcache pretrain --data data/synth/labels.csv --model vit-ti --img-size 32 --patch-size 8 "
    "--spatial-depth 2 --frames 8 --epochs 10 --out runs/stage1"
)
@user_errors
def pretrain(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/stage1"),
    model: ModelOpt = "vit-ti",
    img_size: ImgSizeOpt = None,
    patch_size: PatchOpt = None,
    spatial_depth: DepthOpt = None,
    weights: WeightsOpt = None,
    frames: Annotated[int, typer.Option(help="Frames per clip (stage 1: short clips, e.g. 8).")] = 8,
    frame_token: Annotated[FrameToken, typer.Option(help="Per-frame feature: cls or cls+mean.")] = FrameToken.cls,
    adapter: Annotated[Adapter, typer.Option(help="Adapter between spatial and temporal.")] = Adapter.mlp,
    temporal_depth: Annotated[int, typer.Option(help="Temporal transformer blocks.")] = 4,
    temporal_dim: Annotated[Optional[int], typer.Option(help="Temporal width (default: frame feature width).")] = None,
    video_root: VideoRootOpt = None,
    labels: LabelsOpt = None,
    fps: FpsOpt = None,
    stride: StrideOpt = None,
    epochs: EpochsOpt = 10,
    batch_size: BatchOpt = 16,
    lr: LrOpt = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.05,
    warmup_epochs: Annotated[float, typer.Option(help="Warmup epochs.")] = 1.0,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = 0.1,
    accum_steps: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    precision: PrecisionOpt = Precision.auto,
    eval_views: ViewsOpt = 1,
    workers: WorkersOpt = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Also checkpoint every N steps (0: epoch ends).")] = 0,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
):
    """Stage 1: train the whole ViViT end to end on short clips (spatial from --weights, temporal from scratch)."""
    from vivitcache.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig
    from vivitcache.pretrain import run_pretrain

    cfg = PretrainConfig(
        model=ModelConfig(
            spatial=model, img_size=img_size, patch_size=patch_size, spatial_depth=spatial_depth,
            weights=str(weights) if weights else None, frame_token=frame_token.value, adapter=adapter.value,
            temporal_depth=temporal_depth, temporal_dim=temporal_dim, num_frames=frames,
        ),
        data=DataConfig(data=data, video_root=video_root, labels=labels, fps=fps, stride=stride),
        optim=OptimConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing, accum_steps=accum_steps, precision=precision.value,
        ),
        run=RunConfig(
            out=str(out), seed=seed, device=device, workers=workers, eval_views=eval_views,
            checkpoint_every=checkpoint_every, resume=resume,
        ),
    )
    summary = run_pretrain(cfg)
    _print_run_summary(out, summary)


def _print_run_summary(out: Path, summary: dict) -> None:
    top1, top5 = summary.get("val_top1"), summary.get("val_top5")
    acc = f"val top-1 {100 * top1:.1f}%  top-5 {100 * top5:.1f}%" if top1 is not None else "no validation split"
    console.print(
        f"{acc}  {summary['seconds']:.0f} s  peak memory {summary['peak_memory_bytes'] / 2**20:.0f} MiB  → {out}"
    )


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
                   f"{data['layout']['dtype']})"),
        ("videos", data["videos"]),
        ("frames", data["frames"]),
        ("failed", data["failed"]),
        ("classes", len(data["classes"])),
        ("parts", data["parts"]),
        ("size on disk", f"{data['bytes_on_disk'] / 2**20:.1f} MiB"),
        ("bytes per frame", data["bytes_per_frame"]),
    ]:
        table.add_row(key, str(value))
    console.print(table)


@app.command(epilog="Example: vivitcache verify runs/tokens.zarr")
@user_errors
def verify(store: Annotated[Path, typer.Argument(help="Token store (.zarr folder).")]):
    """Check every committed video is complete and readable; exit status 1 on any problem."""
    from vivitcache.store import verify_store

    problems = verify_store(store)
    for p in problems:
        console.print(f"[red]problem:[/] {p}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"{store}: OK")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
