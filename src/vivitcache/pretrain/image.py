"""An offline stand-in for an image checkpoint: teach the spatial ViT, on single frames, where the moving thing is.

The paper's stage 1 starts the spatial ViT from an ImageNet checkpoint. Machines without a model hub (and our
tests and demo) have none, and a random-init ViT trained end to end on a few hundred clips does not learn to see a
small moving object (measured on the synth dataset: stage-1 val top-1 stays at chance). This step gives the ViT
the one image skill the synth classes need, localisation, without class labels:

    target(frame) = circular centroid (cos, sin of x and y) of the frame's squared difference to its video's
                    per-pixel median (the static background), found from the pixels alone

and regresses it from the ViT's CLS feature (pre-logits) with a linear probe. Only the ViT is kept; the probe is
discarded. The result is a plain safetensors file for `vivitcache pretrain --weights`. With real data, pass real
image weights (ImageNet, CLIP) to `--weights` instead; this target assumes a mostly static background.

Hand-written because no library offers this target; the ViT is timm's, the optimiser torch's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vivitcache.data.annotations import load_annotations
from vivitcache.data.decode import probe_video, read_frames
from vivitcache.data.transforms import Preprocess
from vivitcache.config import DATA_HELP, SEED_HELP, ModelConfig
from vivitcache.errors import ConfigError
from vivitcache.models.spatial import create_spatial
from vivitcache.options import check_fields, opt
from vivitcache.progress import make_progress
from vivitcache.provenance import now_iso, provenance
from vivitcache.training.schedule import warmup_cosine
from vivitcache.training.runtime import seed_everything


def _model_opt(name: str) -> dict:
    """The option of the `ModelConfig` field of the same meaning (help, range)."""
    return {f.name: f for f in dataclasses.fields(ModelConfig)}[name].metadata


@dataclass
class ImagePretrainConfig:
    """Localisation pretraining of the spatial ViT on single frames (the demo's stand-in for ImageNet weights)."""

    data: str = field(default="", metadata=opt(DATA_HELP, required=True))
    """Annotations of the videos (their train split is used; labels are not)."""
    out: str = field(default="runs/image.safetensors", metadata=opt(
        "Output weights (.safetensors) for pretrain --weights.", path=True))
    """Output weights (safetensors) for `pretrain --weights`; a `.json` beside it records what made them."""
    model: str = field(default="vit-ti", metadata=_model_opt("spatial"))
    """Spatial ViT alias or timm name."""
    img_size: int | None = field(default=None, metadata=_model_opt("img_size"))
    """Input size override."""
    patch_size: int | None = field(default=None, metadata=_model_opt("patch_size"))
    """Patch size override."""
    spatial_depth: int | None = field(default=None, metadata=_model_opt("spatial_depth"))
    """Spatial blocks override."""
    steps: int = field(default=600, metadata=opt("Optimiser steps.", ge=1))
    batch_size: int = field(default=64, metadata=opt("Frames per step.", ge=1))
    lr: float = field(default=1e-3, metadata=opt("Peak learning rate (AdamW, warmup + cosine).", gt=0))
    """Peak AdamW learning rate (warmup 10 %, then cosine)."""
    frames_per_video: int = field(default=32, metadata=opt("Frames decoded per training video.", ge=2))
    """Frames decoded per training video (evenly spaced); the median background uses them all."""
    seed: int = field(default=0, metadata=opt(SEED_HELP))
    """Seed of init, frame draws and shuffling."""

    def __post_init__(self):
        check_fields(self)


def localisation_targets(frames: np.ndarray) -> np.ndarray:
    """Per-frame target [n, 4] = (cos x, sin x, cos y, sin y) of the moving thing, from uint8 frames [n, H, W, 3].

    The background is the per-pixel median over the frames; a frame's weight map is its squared difference to it.
    Circular means (the synth frame wraps around); a frame with no difference gets a zero target.
    """
    grey = frames.astype(np.float64).mean(-1) / 255  # [n, H, W]
    n, h, w = grey.shape
    weight = (grey - np.median(grey, axis=0)) ** 2  # [n, H, W]
    cx = (weight.sum(1) * np.exp(2j * np.pi * (np.arange(w) + 0.5) / w)).sum(-1)  # [n] complex
    cy = (weight.sum(2) * np.exp(2j * np.pi * (np.arange(h) + 0.5) / h)).sum(-1)
    unit = lambda z: z / (np.abs(z) + 1e-8)  # noqa: E731
    cx, cy = unit(cx), unit(cy)
    return np.stack([cx.real, cx.imag, cy.real, cy.imag], axis=1).astype(np.float32)  # [n, 4]


def run_image_pretrain(cfg: ImagePretrainConfig) -> dict:
    """Train, write `cfg.out` (safetensors) and its `.json` record; returns the record."""
    started = time.perf_counter()
    seed_everything(cfg.seed)
    spatial = create_spatial(cfg.model, cfg.img_size, cfg.patch_size, cfg.spatial_depth)
    preprocess = Preprocess.from_timm(spatial, cfg.img_size)
    records = load_annotations(cfg.data, seed=cfg.seed).split("train")
    if not records:
        raise ConfigError(f"{cfg.data}: no training videos")

    images, targets = [], []
    with make_progress(True) as progress:
        task = progress.add_task("decode frames", total=len(records), info="")
        for r in records:
            count = probe_video(r.path).num_frames
            picks = np.unique(np.linspace(0, count - 1, min(count, cfg.frames_per_video)).round().astype(int))
            frames = read_frames(r.path, picks, resize_short=preprocess.resize_short)  # [n, H, W, 3]
            targets.append(localisation_targets(frames))
            images.append(preprocess(frames))  # [n, 3, S, S]
            progress.advance(task)
    x = torch.cat(images)  # [N, 3, S, S]
    y = torch.from_numpy(np.concatenate(targets))  # [N, 4]

    probe = nn.Linear(spatial.num_features, 4)
    params = list(spatial.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    schedule = warmup_cosine(cfg.steps, max(1, cfg.steps // 10), cfg.lr, cfg.lr / 100)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    spatial.train()
    with make_progress(True) as progress:
        task = progress.add_task("image pretrain", total=cfg.steps, info="")
        for step in range(cfg.steps):
            batch = torch.randint(0, len(x), (cfg.batch_size,), generator=generator)
            feats = spatial.forward_head(spatial.forward_features(x[batch]), pre_logits=True)  # [B, D]
            loss = ((probe(feats) - y[batch]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            progress.update(task, advance=1, info=f"loss {loss.item():.3f}")

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in spatial.state_dict().items()}, str(out))
    tail = losses[-max(1, len(losses) // 10):]
    record = {
        "kind": "vivitcache image pretrain (localisation)",
        "config": asdict(cfg),
        "final_loss": float(np.mean(tail)),
        "initial_loss": float(losses[0]),
        "chance_loss": float(y.var(0, unbiased=False).mean()),  # predicting the mean target
        "frames": len(x),
        "seconds": time.perf_counter() - started,
        "created": now_iso(),
        "provenance": provenance(),
    }
    if not math.isfinite(record["final_loss"]):
        raise RuntimeError("image pretraining diverged (loss is not finite)")
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record
