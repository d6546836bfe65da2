"""`ExtractConfig`: everything `vivitcache extract` needs, one doc line per field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vivitcache.errors import UserError


class ExtractConfigError(UserError, ValueError):
    """Extraction settings that contradict each other or cannot be used (one line: which setting and why)."""


@dataclass
class ExtractConfig:
    """Run the frozen spatial ViT once over every frame of a dataset into a Zarr v3 token store."""

    data: str = ""
    """Annotations: a class-per-folder directory, a CSV (path,label[,split]), a Kinetics CSV or an SSv2 JSON."""
    store: str = ""
    """Output token store (a `.zarr` folder); an existing store with the same fingerprint is resumed."""
    model: str | None = None
    """Spatial ViT: alias (vit-ti … vit-g) or timm ViT name; None = the checkpoint's (required without --checkpoint)."""
    img_size: int | None = None
    """Spatial input size override (None: the checkpoint's, else the model's default)."""
    patch_size: int | None = None
    """Patch size override for random-init / resampled weights (None: the checkpoint's or the model's default)."""
    spatial_depth: int | None = None
    """Number of spatial blocks override, for tiny test models (None: the checkpoint's or the model's default)."""
    weights: str | None = None
    """Image-model weights for the spatial model: a file (safetensors, .pth, .bin) or a model folder; exclusive with `checkpoint`."""
    pretrained: bool = False
    """Load the model tag's weights from the local Hugging Face cache (offline); exclusive with `weights`, `checkpoint`."""
    checkpoint: str | None = None
    """A stage-1 run folder: spatial ViT weights, preprocessing and frame sampling come from it."""
    video_root: str | None = None
    """Root folder of the videos for Kinetics CSV / SSv2 JSON annotations."""
    labels: str | None = None
    """SSv2 labels JSON (class name → index)."""
    fps: float | None = None
    """Keep source frames at this rate (timestamp based, VFR safe); None = the checkpoint's sampling or every frame."""
    stride: int | None = None
    """Keep every K-th source frame (exclusive with `fps`); None = the checkpoint's sampling or every frame."""
    tokens: str | None = None
    """Tokens stored per frame: `pooled` (the model's own image embedding), `cls`, either + mean patch token, or `all`;
    None: the frame token of `checkpoint` (what `train --init` of that run reads), else `pooled`."""
    grid: int | None = None
    """With `tokens` = `grid`: N, the patch tokens are average-pooled to N x N cells (None: 4)."""
    layers: list[int] = dataclasses.field(default_factory=lambda: [-1])
    """Blocks whose tokens are stored, side by side (`-1,-4,-7,-10`; the last block -1 must be one): each normed by
    the model's final norm, as timm's `forward_intermediates(norm=True)`. `[-1]`: the final features, as always."""
    dtype: str = "fp16"
    """Stored dtype: `fp16`, or `bf16` (for models whose tokens overflow fp16)."""
    batch_size: int | None = None
    """Frames per model forward (frames of consecutive videos share a batch); None (`--batch-size auto`): on a GPU
    the largest power of two up to 512 that fits, found once per worker; 32 on a CPU."""
    workers: int | None = None
    """Dask worker processes of a LocalCluster (threads_per_worker=1); None: one per selected GPU on cuda, 1 on the
    CPU; 0 = run in this process without Dask. Never more than there are parts."""
    gpus: str | None = None
    """GPUs to use, as indices among the visible ones (`0,2,3`); None: all. One pinned worker process per GPU."""
    compile: bool = False
    """torch.compile the spatial model in each worker (batches padded to one shape; off by default: BENCHMARKS.md)."""
    decoder: str = "pyav"
    """Video decoder: `pyav` (swscale resize, the timm filter) or `torchcodec` (its bilinear resize; an extra)."""
    scheduler: str | None = None
    """Address of an existing Dask scheduler (tcp://host:port); overrides `workers`."""
    device: str = "auto"
    """`auto` (cuda if available), `cpu` or `cuda`; bf16 autocast on CUDA, fp32 on CPU."""
    seed: int = 0
    """Seed of the random init when neither `weights` nor `checkpoint` is given (tests, demos)."""
    videos_per_part: int = 32
    """Videos per part: the unit of work of one Dask task, of one writer, and of resuming."""
    decode_threads: int | None = None
    """Decode threads per worker; each decodes a whole video ahead while the model runs (PyAV releases the GIL).
    None: on a GPU the worker's cores but one, on a CPU 2 (the cores run the model)."""
    prefetch_frames: int = 256
    """Decoded, preprocessed frames each decode thread may hold ahead of the model (bounds memory)."""
    torch_threads: int | None = None
    """torch intra-op threads per worker (None: in-process torch's default; on Dask, a host's cores / its workers)."""
    shard_frames: int | None = None
    """Frames per shard file of the token arrays; None: an existing store's, else as many whole chunks as fit 32 MiB
    (few large files; a writer always writes whole shards)."""
    chunk_frames: int | None = None
    """Frames per inner chunk (the unit a reader decodes); None: 16 for `all` tokens, 64 for `cls`/`cls+mean`."""
    compression: str = "none"
    """Token compression in the store: `none` or `zstd` (level 1)."""
    strict: bool = False
    """Raise `ExtractFailures` after finishing when any video could not be extracted (default: ledger and go on)."""
    retry_failed: bool = False
    """Extract every video of the annotations that is in the failure ledger again (without it: only those whose
    source file changed since it failed: size, mtime or inode, or it appeared or vanished)."""
    repair: bool = False
    """Read every committed chunk back first (like `verify`), move damaged parts aside and re-extract their videos."""
    claim_timeout_s: float = 120.0
    """A part claimed by a writer whose heartbeat is older than this is taken over (the writer is presumed dead)."""
    progress: bool = True
    """Show the rich progress bar (videos, frames, frames/s, ETA)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """ExtractConfigError for settings that cannot work together; called before anything is loaded."""
        from vivitcache.store.layout import COMPRESSIONS, DTYPES, TOKEN_KINDS

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
        if self.fps is not None and not self.fps > 0:
            bad(f"--fps must be > 0, got {self.fps}")
        if self.stride is not None and self.stride < 1:
            bad(f"--stride must be >= 1, got {self.stride}")
        if self.tokens is not None and self.tokens not in TOKEN_KINDS:
            bad(f"--tokens {self.tokens!r}: use one of {', '.join(TOKEN_KINDS)}")
        if self.grid is not None and (self.tokens != "grid" or self.grid < 1):
            bad(f"--grid {self.grid}: goes with --tokens grid, and must be >= 1")
        if not self.layers or any(isinstance(v, bool) or not isinstance(v, int) for v in self.layers):
            bad(f"--layers {self.layers!r}: give block indices such as -1,-4,-7,-10")
        if self.dtype not in DTYPES:
            bad(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.compression not in COMPRESSIONS:
            bad(f"compression {self.compression!r}: use one of {', '.join(COMPRESSIONS)}")
        if not self.claim_timeout_s > 0:
            bad(f"claim_timeout_s must be > 0, got {self.claim_timeout_s}")
        for name in ("batch_size", "videos_per_part", "decode_threads", "prefetch_frames", "shard_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.decoder not in ("pyav", "torchcodec"):
            bad(f"--decoder {self.decoder!r}: use pyav or torchcodec")
        if self.gpus is not None and self.device == "cpu":
            bad(f"--gpus needs --device cuda (got --device {self.device})")
        if self.workers is not None and self.workers < 0:
            bad(f"--workers must be >= 0, got {self.workers}")
        if self.torch_threads is not None and self.torch_threads < 1:
            bad(f"torch_threads must be >= 1, got {self.torch_threads}")
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
