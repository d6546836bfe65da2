"""Stage 2 on cached tokens: `run_train` (`vivitcache train`) and `run_eval` (`vivitcache eval`).

The spatial ViT never runs here and no pixel is decoded: clips are frame features read from the token store.
Training goes through the shared loop (`training.loop.fit`): AdamW + warmup-cosine, label smoothing, clipping,
accumulation, autocast, DDP under torchrun (only rank 0 writes), checkpoints and exact `--resume`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vivitcache.errors import ConfigError
from vivitcache.splits import hashed_val_ids
from vivitcache.runs import RunRecord, Stage2Made
from vivitcache.store import FingerprintMismatchError, StoreError, TokenStore
from vivitcache.store.fingerprint import fingerprint_diff
from vivitcache.train_temporal.config import EvalConfig, TrainConfig
from vivitcache.train_temporal.dataset import TokenClipDataset, VideoEntry, resolve_read, videos_sha256
from vivitcache.train_temporal.batches import MemoryBatches, StoreBatches
from vivitcache.train_temporal.build import build_stage2_model, build_token_model, check_stores_agree
from vivitcache.training.checkpoint import checkpoint_path, load_model_state, write_json
from vivitcache.training.loop import Task, call_model, evaluate, fit
from vivitcache.device import autocast_dtype, resolve_device
from vivitcache.training.runtime import seed_everything, world_size


def labelled_videos(store: TokenStore, ids: list[str] | None = None) -> list[VideoEntry]:
    """The store's videos that have a label (unlabelled ones, label -1, cannot be trained or scored)."""
    entries = [VideoEntry(v, store.num_frames(v), store.label(v)) for v in (store.ids() if ids is None else ids)]
    return [e for e in entries if e.label >= 0]


def hashed_split(videos: list[VideoEntry], val_fraction: float, seed: int) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """(train, val) by the hashed split of annotations without a split column (`vivitcache.splits`): given stage 1's
    seed and fraction, stage 2 holds out exactly the videos stage 1 held out."""
    val_ids = hashed_val_ids(((v.id, v.label) for v in videos), val_fraction, seed)
    return [v for v in videos if v.id not in val_ids], [v for v in videos if v.id in val_ids]


def split_source(cfg: TrainConfig) -> tuple[str | None, str | None, int]:
    """(annotations, video root, seed) that decide the train/val split of `cfg.store`.

    As set; else, with a stage-1 run, that run's annotations and seed when its annotations file is still there
    (stage 2 then holds out exactly the videos stage 1 held out, split column or hashed split alike); else the
    hashed split under `split_seed`, the stage-1 run's seed, or `run.seed`.
    """
    stage1 = RunRecord.load(cfg.init, 1).settings if cfg.init is not None else {}
    seed = cfg.split_seed
    if seed is None:
        seed = int(stage1.get("run", {}).get("seed", cfg.run.seed))
    if cfg.splits is not None:
        return cfg.splits, cfg.video_root, seed
    data = stage1.get("data", {})
    if data.get("data") and Path(data["data"]).exists():
        return data["data"], data.get("video_root"), seed
    return None, None, seed


def split_videos(store: TokenStore, splits: str | None, video_root: str | None, val_fraction: float, seed: int
                 ) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """(train, val) videos of a store: from the split of annotations `splits`, else the hashed split.

    With annotations, store videos they do not list (and test-split ones) are left out; annotated videos without
    a split column fall back to the hashed split inside `load_annotations`, with the same fraction and seed.
    """
    videos = labelled_videos(store)
    if splits is None:
        return hashed_split(videos, val_fraction, seed)
    from vivitcache.data.annotations import load_annotations  # parses a file; never decodes

    root = os.path.abspath(video_root) if video_root else None
    dataset = load_annotations(os.path.abspath(splits), root, None, val_fraction, seed)
    split_of = {r.id: r.split for r in dataset.records}
    if not any(v.id in split_of for v in videos):
        raise ConfigError(f"{splits}: none of its video ids is in store {store.path} (wrong file or --video-root? "
                         "without --splits, the annotations of the stage-1 run are used)")
    return [v for v in videos if split_of.get(v.id) == "train"], [v for v in videos if split_of.get(v.id) == "val"]


def _features(store_path, frame_token: str, in_memory: bool, cache_mb: float):
    """The batch reader: everything in memory, or streamed from the store (`train_temporal/batches.py`)."""
    if in_memory:
        return MemoryBatches(store_path, frame_token)
    return StoreBatches(store_path, frame_token, int(cache_mb * 2**20))


@dataclass
class Stage2Data:
    """What every stage-2 model trained on the same clips shares: the videos of each split, their readers and the
    clip datasets (one `train` run, or one group of a sweep)."""

    store: TokenStore
    val_store: TokenStore
    train_videos: list[VideoEntry]
    val_videos: list[VideoEntry]
    split: tuple[str | None, str | None, int | None]
    """(annotations, video root, seed) the split came from; all None with a validation store."""
    read: str
    """The read mode `auto` resolved to."""
    train_set: TokenClipDataset
    val_set: TokenClipDataset | None

    def stop(self) -> None:
        """Stop the datasets' read-ahead threads."""
        self.train_set.stop_read_ahead()
        if self.val_set is not None:
            self.val_set.stop_read_ahead()


def prepare_data(cfg: TrainConfig, store: TokenStore, frame_token: str) -> Stage2Data:
    """The split, readers and clip datasets of `cfg` on `store` for models that take `frame_token`."""
    if cfg.val_store:
        val_store = TokenStore.open(cfg.val_store)
        check_stores_agree(store, val_store)
        train_videos, val_videos = labelled_videos(store), labelled_videos(val_store)
        split = (None, None, None)
    else:
        val_store = store
        split = split_source(cfg)
        train_videos, val_videos = split_videos(store, split[0], split[1], cfg.val_fraction, split[2])
    if not train_videos:
        raise StoreError(f"{store.path}: no labelled videos to train on")
    longest = max(v.num_frames for v in train_videos)
    if cfg.frames > longest:  # such clips only repeat frames, while attention costs grow as frames²
        raise ConfigError(f"--frames {cfg.frames}: more than the longest training video of {store.path} "
                          f"({longest} frames); clips that long only repeat frames")

    features = _features(store.path, frame_token, cfg.in_memory, cfg.cache_mb)
    val_features = features if val_store is store else _features(val_store.path, frame_token, cfg.in_memory, cfg.cache_mb)
    micro = max(1, cfg.optim.batch_size // (world_size() * cfg.optim.accum_steps))  # fit's micro-batch
    cached = train_videos + (val_videos if val_store is store else [])  # what the chunk cache would have to hold
    feature_bytes = sum(v.num_frames for v in cached) * features.rule.dim * np.dtype(features.rule.dtype).itemsize
    read = resolve_read(cfg.read, cfg.in_memory, cfg.run.workers, cfg.read_streams, feature_bytes,
                        int(cfg.cache_mb * 2**20))
    train_set = TokenClipDataset(
        train_videos, features, cfg.frames, train=True, seed=cfg.run.seed, augment=cfg.augment, read_ahead=cfg.read_ahead,
        read=read, batch=micro, streams=cfg.read_streams, shuffle_buffer=cfg.shuffle_buffer,
    )
    val_set = (
        TokenClipDataset(val_videos, val_features, cfg.frames, train=False, views=cfg.run.eval_views,
                         read_ahead=cfg.read_ahead, batch=micro)
        if val_videos else None
    )
    return Stage2Data(store, val_store, train_videos, val_videos, split, read, train_set, val_set)


def build_task(cfg: TrainConfig, data: Stage2Data, model, made: dict) -> Task:
    """The `fit` task of a stage-2 model on `data`; its run record is what `eval` and `predict` rebuild from."""
    store, (splits, video_root, seed) = data.store, data.split
    made2 = Stage2Made(
        store=str(store.path), store_fingerprint=store.fingerprint, store_layout=store.layout.to_dict(),
        spatial_sha256=made["spatial_sha256"], val_store=str(data.val_store.path) if cfg.val_store else None,
        init=os.path.abspath(cfg.init) if cfg.init else None, init_parts=made["init_parts"],
        init_frames=made.get("init_frames"),
        # the split as resolved (given, or the stage-1 run's annotations): what `eval` needs to find it again
        splits=os.path.abspath(splits) if splits else None,
        video_root=os.path.abspath(video_root) if video_root else None, split_seed=seed,
        data_sha256=videos_sha256(data.train_videos, data.val_videos),
    )
    # the model as built (what `predict` and `eval` rebuild)
    record = RunRecord(stage=2, model=model.cfg, classes=list(store.classes), settings=cfg.to_dict(), stage2=made2)
    return Task(
        model=model,
        forward=call_model,
        train_set=data.train_set,
        val_set=data.val_set,
        num_classes=len(store.classes),
        config=record.to_json(),
        title=f"stage 2 ({cfg.frames} frames)",
        frames_per_sample=cfg.frames,
        extra_summary={
            "frames": cfg.frames,
            "train_videos": len(data.train_videos),
            "val_videos": len(data.val_videos),
            "init": made["init"],
            "split_from": "val_store" if cfg.val_store else (made2.splits or f"hashed split, seed {seed}"),
            "in_memory": cfg.in_memory,
            "read": data.read,
        },
    )


def run_train(cfg: TrainConfig) -> dict:
    """Train stage 2 into `cfg.run.out`; returns summary.json's content."""
    store = TokenStore.open(cfg.store)
    seed_everything(cfg.run.seed)
    model, made = build_stage2_model(cfg, store)
    data = prepare_data(cfg, store, model.cfg.frame_token)
    try:
        return fit(build_task(cfg, data, model, made), cfg.optim, cfg.run)
    finally:
        data.stop()


# ---------------------------------------------------------------------------------------------------- evaluation
def _eval_model(record: RunRecord, run) -> tuple[dict, dict, int | None]:
    """(model tensors, expected store fingerprint, token width) of a stage-1 or stage-2 checkpoint."""
    state = load_model_state(run)
    if record.stage == 2:
        return state, record.stage2.store_fingerprint, record.stage2.store_layout["dim"]
    # a stage-1 model scored on tokens at its own clip length
    from vivitcache.runs import load_stage1

    expected = {"weights_sha256": load_stage1(run).spatial_sha256}
    return {k: v for k, v in state.items() if not k.startswith("spatial.")}, expected, None


def _eval_videos(store: TokenStore, record: RunRecord, split: str) -> tuple[list[VideoEntry], str]:
    """Which videos `run_eval` scores: `auto` is the run's own validation split on its training store, else all."""
    made = record.stage2
    known = made is not None and os.path.abspath(made.store) == str(store.path) and not made.val_store
    if split == "auto":
        split = "val" if known else "all"
    if split == "all":
        return labelled_videos(store), split
    if split not in ("train", "val"):
        raise ConfigError(f"split {split!r}: use auto, all, train or val")
    if not known:
        trained_on = made.store if made is not None else None
        raise ConfigError(f"split {split!r} is only known for the store a stage-2 run split itself ({trained_on})")
    train, val = split_videos(store, made.splits, made.video_root, record.settings["val_fraction"], made.split_seed)
    return (train if split == "train" else val), split


def plot_confusion(matrix: list[list[int]], classes: list[str], png: Path, title: str = "") -> Path:
    """A confusion-matrix heat map (rows: true class, columns: predicted), row-normalised colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)  # [C, C]
    rows = m / np.maximum(1.0, m.sum(1, keepdims=True))
    n = len(classes)
    side = min(12.0, 2.5 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def run_eval(
    store: str | Path,
    checkpoint: str | Path,
    views: int = EvalConfig.eval_views,
    out: str | Path | None = None,
    batch_size: int = EvalConfig.batch_size,
    split: str = EvalConfig.split,
    device: str = EvalConfig.device,
    workers: int = 0,
    in_memory: bool = False,
    frames: int | None = None,
) -> dict:
    """Top-1/top-5 of a stage-2 (or stage-1) checkpoint on a store's videos over `views` fixed views per video.

    Writes eval.json (metrics, classes, confusion matrix) and eval_confusion.png into `out` (default: the run
    folder of the checkpoint). `split`: auto (the run's validation split when `store` is its training store,
    else every labelled video), val, train, all. `frames`: clip length (default: the model's).
    """
    ckpt = checkpoint_path(checkpoint)
    record = RunRecord.load(checkpoint, 1, 2)
    model_cfg = record.model
    state, expected, dim = _eval_model(record, checkpoint)
    token_store = TokenStore.open(store)
    diff = fingerprint_diff({k: expected[k] for k in ("model", "weights_sha256") if k in expected},
                            {k: token_store.fingerprint.get(k) for k in ("model", "weights_sha256") if k in expected})
    if diff:
        raise FingerprintMismatchError(diff, f"store {token_store.path} was not extracted with the spatial model "
                                       f"of {checkpoint}", "checkpoint has", "store has")
    if list(record.classes) != list(token_store.classes):
        raise ConfigError(f"store {token_store.path} has other classes than {checkpoint} "
                         f"({len(token_store.classes)} vs {len(record.classes)})")
    model = build_token_model(model_cfg, dim or token_store.layout.dim)
    model.load_state_dict(state)
    T = frames or model_cfg.num_frames
    if T != model_cfg.num_frames:
        model.resize_frames(T)
    videos, used_split = _eval_videos(token_store, record, split)
    if not videos:
        raise StoreError(f"{token_store.path}: no labelled videos to evaluate (split {used_split})")
    features = _features(token_store.path, model_cfg.frame_token, in_memory, 512.0)
    dataset = TokenClipDataset(videos, features, T, train=False, views=views, read_ahead=32 if workers == 0 else 0)
    dev = resolve_device(device)
    model.to(dev)
    result = evaluate(model, call_model, dataset, len(record.classes), dev, batch_size,
                      autocast_dtype("auto", dev), None, workers)
    dataset.stop_read_ahead()
    out_dir = Path(out) if out is not None else ckpt.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        **{k: result[k] for k in ("val_top1", "val_top5", "val_loss", "val_videos")},
        "views": views,
        "frames": T,
        "split": used_split,
        "store": str(token_store.path),
        "checkpoint": str(ckpt),
        "classes": list(record.classes),
        "confusion": result["confusion"],
    }
    write_json(out_dir / "eval.json", report)
    top1 = 100 * result["val_top1"]
    png = plot_confusion(result["confusion"], list(record.classes), out_dir / "eval_confusion.png",
                         f"{Path(checkpoint).name}: top-1 {top1:.1f}% ({views} view{'s' * (views > 1)})")
    return {**report, "json": str(out_dir / "eval.json"), "png": str(png)}
