"""Which frames a stage-2 clip takes, and the token-space augmentation applied to it. Pure index math, no I/O.

Training: T frames from T uniform segments with random jitter (`data.sampling.segment_indices`), optionally
inside a random window (temporal crop, frame-rate jitter). Evaluation: fixed views (`data.sampling.view_indices`).
A video shorter than T repeats frames (indices stay sorted, so time never runs backwards); nothing is padded
and no mask is needed, because every clip has exactly T real frame features.
"""

from __future__ import annotations

import numpy as np

from vivitcache.data.sampling import segment_indices, view_indices
from vivitcache.train_temporal.config import AugmentConfig


def clip_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training clip: a function of (seed, epoch, index) only, so any process, worker or
    resumed run draws the same clip."""
    return np.random.default_rng([seed, epoch, index])


def train_indices(num_frames: int, T: int, rng: np.random.Generator, augment: AugmentConfig) -> np.ndarray:
    """T frame indices of a training clip: [T] int64, sorted.

    The window is the whole video, or `temporal_crop` of it, shrunk by a factor drawn in [1 - frame_rate_jitter, 1]
    (a slower, random frame rate); it starts at a random frame. Segments with jitter are taken inside it.
    """
    span = num_frames
    if augment.temporal_crop < 1.0:
        span = max(1, round(span * augment.temporal_crop))
    if augment.frame_rate_jitter > 0.0:
        span = max(1, round(span * rng.uniform(1.0 - augment.frame_rate_jitter, 1.0)))
    start = int(rng.integers(0, num_frames - span + 1)) if span < num_frames else 0
    return start + np.asarray(segment_indices(span, T, rng), dtype=np.int64)  # [T]


def eval_indices(num_frames: int, T: int, views: int) -> np.ndarray:
    """Fixed frame indices of `views` evaluation clips: [views, T] int64."""
    return np.asarray(view_indices(num_frames, T, views), dtype=np.int64).reshape(views, T)


def drop_tokens(feats: np.ndarray, rng: np.random.Generator, fraction: float, mode: str) -> np.ndarray:
    """Replace round(fraction·T) frame features of a clip [T, D] by zeros or by their neighbour: [T, D].

    `neighbour` copies the previous frame's original feature (the next one's for frame 0), like a dropped frame
    in a video stream.
    """
    T = feats.shape[0]
    k = int(round(fraction * T))
    if k == 0 or T < 2:
        return feats
    dropped = np.sort(rng.choice(T, size=k, replace=False))  # [k]
    out = feats.copy()
    if mode == "zero":
        out[dropped] = 0
    else:
        source = np.where(dropped == 0, 1, dropped - 1)  # [k]
        out[dropped] = feats[source]
    return out  # [T, D]
