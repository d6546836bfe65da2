"""Stage-2 settings: `TrainConfig` (what `vivitcache train` runs) and `AugmentConfig` (token-space augmentation).

Model, optimiser and run settings reuse the shared dataclasses of `vivitcache.config`, so a stage-2 run folder
records its settings in the same shape as stage 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vivitcache.config import DEVICE_HELP, VIDEO_ROOT_HELP, ModelConfig, OptimConfig, RunConfig, Serialisable
from vivitcache.errors import ConfigError
from vivitcache.options import COMMA_LIST, NONE_WORD, check_fields, opt
from vivitcache.store.layout import FRAME_TOKENS

INIT_PARTS = ("adapter", "temporal", "head")
"""The parts of a stage-1 run that stage 2 can start from (the spatial ViT never runs in stage 2)."""

DROPOUT_MODES = ("zero", "neighbour")
READ_MODES = ("auto", "random", "sequential")


@dataclass
class AugmentConfig:
    """Token-space augmentation of training clips; all of it drawn from the clip's seeded generator. Off by default."""

    temporal_crop: float = field(default=1.0, metadata=opt(
        "Augment: sample clips from this fraction of the video.", gt=0, le=1))
    """Sample each clip from a window of this fraction of the video at a random position (1.0: the whole video)."""
    frame_rate_jitter: float = field(default=0.0, metadata=opt(
        "Augment: random slower frame rate, factor in [1-j, 1].", ge=0, lt=1))
    """Shrink that window further by a random factor in [1 - j, 1], i.e. a random, slower frame rate (0: off)."""
    token_dropout: float = field(default=0.0, metadata=opt(
        "Augment: fraction of frame tokens dropped.", ge=0, lt=1))
    """Fraction of the T frame features of a clip replaced (0: off)."""
    token_dropout_mode: str = field(default="zero", metadata=opt(
        "What a dropped frame token becomes.", choices=DROPOUT_MODES))
    """What a dropped frame feature becomes: `zero`, or `neighbour` (the previous frame's; the next for frame 0)."""

    def __post_init__(self):
        check_fields(self)


@dataclass
class TrainConfig(Serialisable):
    """Stage 2: adapter + temporal transformer + head trained on a token store (`vivitcache train`)."""

    store: str = field(default="", metadata=opt("Token store made by `vivitcache extract`.", path=True, required=True))
    """Token store (.zarr folder) made by `vivitcache extract`."""
    frames: int = field(default=32, metadata=opt(
        "Frames per clip T (temporal position embeddings interpolated to T).", ge=1))
    """Frames per clip T sampled from the cached tokens (the temporal position embeddings are resized to T)."""
    init: str | None = field(default=None, metadata=opt(
        "Stage-1 run to start from, or `none` for random init.", text=NONE_WORD))
    """Stage-1 run folder to start from (None / "none": random init under the seed)."""
    init_parts: list[str] = field(default_factory=lambda: list(INIT_PARTS), metadata=opt(
        "Comma list of parts taken from --init: adapter,temporal,head.", text=COMMA_LIST))
    """Which parts to take from the stage-1 run: any of adapter, temporal, head."""
    no_adapter: bool = field(default=False, metadata=opt("Ablation: no adapter."))
    """Ablation: no adapter between the cached tokens and the temporal transformer (adapter kind `none`; a
    stage-1 adapter is then not taken, whatever `init_parts` says)."""
    freeze_temporal: bool = field(default=False, metadata=opt("Ablation: temporal transformer frozen."))
    """Ablation: keep the temporal transformer fixed; only adapter and head train."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model settings for `--init none` (with a stage-1 run its architecture is used); drop rates always apply."""
    frame_token: str | None = field(default=None, metadata=opt(
        "With --init none: per-frame feature (default: what the store holds).", choices=FRAME_TOKENS))
    """Per-frame feature for `--init none`: None takes what the store holds (`pooled`, `cls`, …; `cls+mean` from `all`)."""
    val_store: str | None = field(default=None, metadata=opt(
        "Validate on another store (same fingerprint).", path=True))
    """Validation tokens from another store (same fingerprint and classes); then all of `store` trains."""
    splits: str | None = field(default=None, metadata=opt("Annotations whose train/val split to use."))
    """Annotations (any format `pretrain --data` reads) whose train/val split decides which store videos train and
    which validate; None: the stage-1 run's annotations if that file is still there, else the hashed split."""
    video_root: str | None = field(default=None, metadata=opt(VIDEO_ROOT_HELP))
    """Video root for `splits` (CSV ids are paths relative to it), as given to `extract`."""
    val_fraction: float = field(default=0.2, metadata=opt("Hashed split: fraction of each class held out.", ge=0, lt=1))
    """Hashed split (no `val_store`, no split in `splits`): fraction of each class held out, as in `pretrain`."""
    split_seed: int | None = None
    """Seed of the hashed split; None: the stage-1 run's seed with `init` (stage 2 then holds out exactly the videos
    stage 1 held out), else `run.seed`."""
    in_memory: bool = field(default=False, metadata=opt("Load the store's frame features into memory once."))
    """Load every video's frame features once into memory instead of streaming chunks from the store."""
    cache_mb: float = field(default=512.0, metadata=opt(
        "Streaming: LRU chunk cache size in MiB.", ge=0, note="0: one chunk"))
    """Streaming: bound of the LRU cache of decoded chunks (frame features), in MiB per process; at least 0 (0: one
    chunk, the least the reader can work with)."""
    read_ahead: int = field(default=32, metadata=opt("Streaming: clips a thread reads ahead (0: off).", ge=0))
    """Streaming without DataLoader workers: a background thread warms the cache this many clips ahead (0: off)."""
    read: str = field(default="auto", metadata=opt(
        "Training reads: random (clips in random order through the chunk cache), sequential (parts read whole in a "
        "seeded order, shuffle buffers; for cluster filesystems), or auto: random when the store's features fit "
        "--cache-mb and --workers is 0, else sequential.", choices=READ_MODES))
    """Training order and I/O: `random` (clips in a seeded random order, chunks through the cache), `sequential`
    (parts in a seeded order, each read whole, clips drawn from shuffle buffers across parts; for cluster
    filesystems; see `train_temporal/sequential.py`), or `auto`: random when the features fit the chunk cache of a
    loader that keeps it, else sequential (`train_temporal.dataset.resolve_read`)."""
    shuffle_buffer: int = field(default=512, metadata=opt(
        "--read sequential: videos in the shuffle buffers of one rank.", ge=1))
    """`--read sequential`: videos waiting in the shuffle buffers of one rank (all its streams); memory per rank is
    about this many clips [T, Din] plus one part's per stream."""
    read_streams: int = field(default=4, metadata=opt(
        "--read sequential: streams per rank (--workers must divide it).", ge=1))
    """`--read sequential`: pieces each rank's share is cut into, each with its own buffer; DataLoader workers split
    them, so --workers must divide it. The order depends on it and on the number of ranks, not on --workers."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Token-space augmentation of training clips."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=20))
    """Optimiser settings (stage 2 defaults to 20 epochs: an epoch on tokens is cheap)."""
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/stage2"))
    """Run folder (default runs/stage2), seed, device, workers, eval views, checkpointing, resume."""

    def __post_init__(self):
        if self.init in ("", "none", "None"):
            self.init = None
        unknown = sorted(set(self.init_parts) - set(INIT_PARTS))
        if unknown:
            raise ConfigError(f"--init-parts: unknown part(s) {unknown}: use any of {', '.join(INIT_PARTS)}")
        self.init_parts = [p for p in INIT_PARTS if p in self.init_parts]  # canonical order
        check_fields(self)
        if self.read == "sequential" and not self.in_memory and self.run.workers > 0 and \
                self.read_streams % self.run.workers:
            raise ConfigError(f"--workers {self.run.workers}: must divide --read-streams {self.read_streams} with "
                              "--read sequential (each worker reads its own streams' parts)")


EVAL_SPLITS = ("auto", "val", "train", "all")


@dataclass
class EvalConfig:
    """`vivitcache eval`: top-1/top-5 of a run over fixed views of a store's videos (`run_eval`)."""

    store: str = field(default="", metadata=opt("Token store.", path=True, required=True))
    checkpoint: str = field(default="", metadata=opt("Stage-2 run folder.", path=True, required=True))
    eval_views: int = field(default=1, metadata=opt("Temporal views per validation video.", ge=1))
    split: str = field(default="auto", metadata=opt("auto (the run's val split), val, train or all.",
                                                    choices=EVAL_SPLITS))
    out: str | None = field(default=None, metadata=opt(
        "Where eval.json and the confusion PNG go (default: the run).", path=True))
    batch_size: int = field(default=16, metadata=opt("Clips per forward pass.", ge=1))
    device: str = field(default="auto", metadata=opt(DEVICE_HELP))

    def __post_init__(self):
        check_fields(self)
