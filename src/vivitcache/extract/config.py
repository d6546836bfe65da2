"""`ExtractConfig`: everything `vivitcache extract` needs, one doc line per field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vivitcache.config import DATA_HELP, DEVICE_HELP, FPS_HELP, LABELS_HELP, PRETRAINED_HELP, SEED_HELP, \
    STRIDE_HELP, VIDEO_ROOT_HELP, WEIGHTS_HELP
from vivitcache.errors import UserError
from vivitcache.options import AUTO_INT, INT_LIST, check_fields, opt
from vivitcache.store.layout import COMPRESSIONS, DTYPES, TOKEN_KINDS


class ExtractConfigError(UserError, ValueError):
    """Extraction settings that contradict each other or cannot be used (one line: which setting and why)."""


@dataclass
class ExtractConfig:
    """Run the frozen spatial ViT once over every frame of a dataset into a Zarr v3 token store."""

    data: str = field(default="", metadata=opt(DATA_HELP, required=True))
    """Annotations: a class-per-folder directory, a CSV (path,label[,split]), a Kinetics CSV or an SSv2 JSON."""
    store: str = field(default="", metadata=opt(
        "Output token store (.zarr); an existing one with the same fingerprint resumes.", path=True, required=True))
    """Output token store (a `.zarr` folder); an existing store with the same fingerprint is resumed."""
    model: str | None = field(default=None, metadata=opt(
        "Spatial ViT alias or timm name (default: the checkpoint's)."))
    """Spatial ViT: alias (vit-ti … vit-g) or timm ViT name; None = the checkpoint's (required without --checkpoint)."""
    img_size: int | None = field(default=None, metadata=opt(
        "Spatial input size override (default: the model's).", ge=1))
    """Spatial input size override (None: the checkpoint's, else the model's default)."""
    patch_size: int | None = field(default=None, metadata=opt(
        "Patch size override (random-init models).", ge=1))
    """Patch size override for random-init / resampled weights (None: the checkpoint's or the model's default)."""
    spatial_depth: int | None = field(default=None, metadata=opt(
        "Spatial depth override (tiny random-init models).", ge=1))
    """Number of spatial blocks override, for tiny test models (None: the checkpoint's or the model's default)."""
    weights: str | None = field(default=None, metadata=opt(WEIGHTS_HELP, path=True))
    """Image-model weights for the spatial model: a file (safetensors, .pth, .bin) or a model folder; exclusive with `checkpoint`."""
    pretrained: bool = field(default=False, metadata=opt(PRETRAINED_HELP))
    """Load the model tag's weights from the local Hugging Face cache (offline); exclusive with `weights`, `checkpoint`."""
    checkpoint: str | None = field(default=None, metadata=opt(
        "Stage-1 run: its spatial ViT, preprocessing and sampling.", path=True))
    """A stage-1 run folder: spatial ViT weights, preprocessing and frame sampling come from it."""
    video_root: str | None = field(default=None, metadata=opt(VIDEO_ROOT_HELP))
    """Root folder of the videos for Kinetics CSV / SSv2 JSON annotations."""
    labels: str | None = field(default=None, metadata=opt(LABELS_HELP))
    """SSv2 labels JSON (class name → index)."""
    fps: float | None = field(default=None, metadata=opt(FPS_HELP, gt=0))
    """Keep source frames at this rate (timestamp based, VFR safe); None = the checkpoint's sampling or every frame."""
    stride: int | None = field(default=None, metadata=opt(STRIDE_HELP, ge=1))
    """Keep every K-th source frame (exclusive with `fps`); None = the checkpoint's sampling or every frame."""
    tokens: str | None = field(default=None, metadata=opt(
        "Tokens stored per frame: pooled = the model's own image embedding; cls; either + mean patch token; all = "
        "every prefix and patch token; grid = pooled, then the patch tokens average-pooled to --grid x --grid cells. "
        "Default: the --checkpoint's frame token, else pooled.", choices=TOKEN_KINDS))
    """Tokens stored per frame: `pooled` (the model's own image embedding), `cls`, either + mean patch token, or `all`;
    None: the frame token of `checkpoint` (what `train --init` of that run reads), else `pooled`."""
    grid: int | None = field(default=None, metadata=opt(
        "With --tokens grid: N of the N x N cells (default 4; 1 + N² tokens per frame and block).", ge=1))
    """With `tokens` = `grid`: N, the patch tokens are average-pooled to N x N cells (None: 4)."""
    layers: list[int] = field(default_factory=lambda: [-1], metadata=opt(
        "Blocks whose tokens are stored side by side, e.g. -1,-4,-7,-10 (the last, -1, included); each normed as "
        "timm's forward_intermediates(norm=True).", text=INT_LIST))
    """Blocks whose tokens are stored, side by side (`-1,-4,-7,-10`; the last block -1 must be one): each normed by
    the model's final norm, as timm's `forward_intermediates(norm=True)`. `[-1]`: the final features, as always."""
    dtype: str = field(default="fp16", metadata=opt("Stored dtype (bf16 kept as uint16 bits).", choices=DTYPES))
    """Stored dtype: `fp16`, or `bf16` (for models whose tokens overflow fp16)."""
    batch_size: int | None = field(default=None, metadata=opt(
        "Frames per model forward (frames of many videos share a batch), or auto: on a GPU the largest that fits "
        "(found once per worker), 32 on a CPU.", ge=1, text=AUTO_INT))
    """Frames per model forward (frames of consecutive videos share a batch); None (`--batch-size auto`): on a GPU
    the largest power of two up to 512 that fits, found once per worker; 32 on a CPU."""
    workers: int | None = field(default=None, metadata=opt(
        "Dask LocalCluster worker processes (default: one per GPU with --device cuda, else 1; 0: in this process).",
        ge=0))
    """Dask worker processes of a LocalCluster (threads_per_worker=1); None: one per selected GPU on cuda, 1 on the
    CPU; 0 = run in this process without Dask. Never more than there are parts."""
    gpus: str | None = field(default=None, metadata=opt(
        "GPUs to use, e.g. 0,2,3 (default: all visible); one pinned worker per GPU."))
    """GPUs to use, as indices among the visible ones (`0,2,3`); None: all. One pinned worker process per GPU."""
    compile: bool = field(default=False, metadata=opt("torch.compile the spatial model in each worker."))
    """torch.compile the spatial model in each worker (batches padded to one shape; off by default: BENCHMARKS.md)."""
    decoder: str = field(default="pyav", metadata=opt(
        "Video decoder: pyav, or torchcodec (extra; needs FFmpeg shared libs).", choices=("pyav", "torchcodec")))
    """Video decoder: `pyav` (swscale resize, the timm filter) or `torchcodec` (its bilinear resize; an extra)."""
    scheduler: str | None = field(default=None, metadata=opt(
        "Existing Dask scheduler address, e.g. tcp://host:8786."))
    """Address of an existing Dask scheduler (tcp://host:port); overrides `workers`."""
    device: str = field(default="auto", metadata=opt(DEVICE_HELP))
    """`auto` (cuda if available), `cpu` or `cuda`; bf16 autocast on CUDA, fp32 on CPU."""
    seed: int = field(default=0, metadata=opt(SEED_HELP))
    """Seed of the random init when neither `weights` nor `checkpoint` is given (tests, demos)."""
    videos_per_part: int = field(default=32, metadata=opt(
        "Videos per part (unit of work, writing and resuming).", ge=1))
    """Videos per part: the unit of work of one Dask task, of one writer, and of resuming."""
    decode_threads: int | None = field(default=None, metadata=opt(
        "Decode threads per worker (default: on a GPU its cores but one, on a CPU 2).", ge=1))
    """Decode threads per worker; each decodes a whole video ahead while the model runs (PyAV releases the GIL).
    None: on a GPU the worker's cores but one, on a CPU 2 (the cores run the model)."""
    prefetch_frames: int = field(default=256, metadata=opt("Frames each decode thread holds ahead.", ge=1))
    """Decoded, preprocessed frames each decode thread may hold ahead of the model (bounds memory)."""
    torch_threads: int | None = field(default=None, metadata=opt("torch threads per worker.", ge=1))
    """torch intra-op threads per worker (None: in-process torch's default; on Dask, a host's cores / its workers)."""
    shard_frames: int | None = field(default=None, metadata=opt("Frames per shard file.", ge=1))
    """Frames per shard file of the token arrays; None: an existing store's, else as many whole chunks as fit 32 MiB
    (few large files; a writer always writes whole shards)."""
    chunk_frames: int | None = field(default=None, metadata=opt("Frames per inner chunk.", ge=1))
    """Frames per inner chunk (the unit a reader decodes); None: 16 for `all` tokens, 64 for `cls`/`cls+mean`."""
    compression: str = field(default="none", metadata=opt("none or zstd.", choices=COMPRESSIONS))
    """Token compression in the store: `none` or `zstd` (level 1)."""
    strict: bool = field(default=False, metadata=opt("Exit non-zero if any video failed."))
    """Raise `ExtractFailures` after finishing when any video could not be extracted (default: ledger and go on)."""
    retry_failed: bool = field(default=False, metadata=opt(
        "Extract the videos in the failure ledger again (without it: only those whose file changed since it "
        "failed)."))
    """Extract every video of the annotations that is in the failure ledger again (without it: only those whose
    source file changed since it failed: size, mtime or inode, or it appeared or vanished)."""
    repair: bool = field(default=False, metadata=opt(
        "First read every committed chunk back (as verify does), move damaged parts aside and re-extract exactly "
        "their videos."))
    """Read every committed chunk back first (like `verify`), move damaged parts aside and re-extract their videos."""
    claim_timeout_s: float = field(default=120.0, metadata=opt(
        "Seconds without a heartbeat after which another run's claim on a part is taken over (its writer presumed "
        "dead); a heartbeat in the future counts once seen unchanged this long.", flag="claim-timeout", gt=0))
    """A part claimed by a writer whose heartbeat is older than this is taken over (the writer is presumed dead)."""
    progress: bool = True
    """Show the rich progress bar (videos, frames, frames/s, ETA)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """ExtractConfigError for settings that cannot work together; called before anything is loaded."""
        def bad(msg: str):
            raise ExtractConfigError(f"extract: {msg}")

        if not self.data:
            bad("no --data given")
        if not self.store:
            bad("no --store given")
        if self.weights and self.checkpoint:
            bad("--weights and --checkpoint are exclusive (a checkpoint holds its own spatial weights)")
        if self.pretrained and (self.weights or self.checkpoint):
            bad("--pretrained is exclusive with --weights and --checkpoint (each names the weights)")
        if self.model is None and not self.checkpoint:
            bad("--model is required without --checkpoint")
        if self.fps is not None and self.stride is not None:
            bad("--fps and --stride are exclusive")
        check_fields(self, ExtractConfigError)
        if self.grid is not None and self.tokens != "grid":
            bad(f"--grid {self.grid}: goes with --tokens grid")
        if not self.layers or any(isinstance(v, bool) or not isinstance(v, int) for v in self.layers):
            bad(f"--layers {self.layers!r}: give block indices such as -1,-4,-7,-10")
        if self.gpus is not None and self.device == "cpu":
            bad(f"--gpus needs --device cuda (got --device {self.device})")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            bad(f"--device {self.device!r}: use auto, cpu or cuda")

    def chunk_frames_for_layout(self) -> int:
        """Inner chunk length: as set, or 16 frames for `all`, `grid` or several blocks and 64 for one-token kinds,
        capped by shards."""
        if self.chunk_frames is not None:
            return self.chunk_frames
        chunk = 16 if self.tokens in ("all", "grid") or list(self.layers) != [-1] else 64
        while self.shard_frames and self.shard_frames % chunk:  # must divide the shard length
            chunk //= 2
        return max(chunk, 1)
