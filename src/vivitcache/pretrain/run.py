"""Stage 1: the whole ViViT (spatial from an image checkpoint, temporal from scratch) trained end to end on
short clips of decoded pixels. Its checkpoint is the init of stage 2 and the spatial model of `extract`."""

from __future__ import annotations

import dataclasses

from vivitcache.config import PretrainConfig
from vivitcache.data.annotations import load_annotations
from vivitcache.data.clips import VideoClipDataset
from vivitcache.data.transforms import Preprocess
from vivitcache.hashing import state_dict_sha256
from vivitcache.models.vivit import build_vivit
from vivitcache.runs import RunRecord, Stage1Made
from vivitcache.training.loop import Task, call_model, fit
from vivitcache.training.runtime import seed_everything


def run_pretrain(cfg: PretrainConfig) -> dict:
    """Train stage 1 into `cfg.run.out`; returns summary.json's content."""
    dataset = load_annotations(cfg.data.data, cfg.data.video_root, cfg.data.labels, seed=cfg.run.seed)
    # a copy with the classes filled in: the caller's config is never mutated
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(dataset.classes)))
    seed_everything(cfg.run.seed)
    model = build_vivit(cfg.model)
    preprocess = Preprocess.from_timm(model.spatial, cfg.model.img_size)
    # what `extract --checkpoint` and `train --init` need to rebuild the spatial model and check stores
    spatial_sha = state_dict_sha256(model.spatial)
    common = dict(preprocess=preprocess, fps=cfg.data.fps, stride=cfg.data.stride, seed=cfg.run.seed)
    train_set = VideoClipDataset(dataset.split("train"), cfg.model.num_frames, train=True, **common)
    val_records = dataset.split("val")
    val_set = (
        VideoClipDataset(val_records, cfg.model.num_frames, train=False, views=cfg.run.eval_views, **common)
        if val_records
        else None
    )
    record = RunRecord(stage=1, model=cfg.model, classes=dataset.classes, settings=cfg.to_dict(),
                       stage1=Stage1Made(preprocess=preprocess.to_dict(), initial_spatial_sha256=spatial_sha))
    task = Task(
        model=model,
        forward=call_model,
        train_set=train_set,
        val_set=val_set,
        num_classes=len(dataset.classes),
        config=record.to_json(),
        title="stage 1",
        frames_per_sample=cfg.model.num_frames,
        extra_summary={"frames": cfg.model.num_frames, "train_videos": len(train_set)},
    )
    summary = fit(task, cfg.optim, cfg.run)
    return summary
