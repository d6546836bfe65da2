"""Which T frames of a video make a clip: pure index math shared by stage 1 (decoded frames) and stage 2 (cached
tokens). No decoding, no torch.

[0, num_frames) is split into T equal segments (boundaries i·n/T, real-valued); a clip takes one frame per segment:
a random one for training (`segment_indices`, TSN-style jitter), a fixed offset for evaluation (`view_indices`).

Videos shorter than T: segments are shorter than one frame, so neighbouring segments fall on the same frame and
frames are repeated, never padded with zeros; every index is valid (0 <= index < num_frames), indices never
decrease (time never runs backwards), and no validity mask is needed.
"""

from __future__ import annotations

import numpy as np


def _check(num_frames: int, T: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a clip needs a video with at least 1 frame, got num_frames={num_frames}")
    if T < 1:
        raise ValueError(f"clip length T must be >= 1, got {T}")


def _pick(num_frames: int, T: int, offsets: np.ndarray) -> np.ndarray:
    """Frame at relative position `offsets` ([..., T] in [0, 1)) inside each of the T segments: int64 [..., T]."""
    segment = num_frames / T  # segment length in frames (may be < 1)
    starts = np.arange(T) * segment  # [T]
    index = np.floor(starts + offsets * segment).astype(np.int64)  # [..., T]
    return np.clip(index, 0, num_frames - 1)


def segment_indices(num_frames: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """Training clip: one uniformly random frame inside each of T equal segments: int64 [T], non-decreasing."""
    _check(num_frames, T)
    return _pick(num_frames, T, rng.random(T))  # [T]


def view_indices(num_frames: int, T: int, views: int = 1) -> np.ndarray:
    """Evaluation clips: deterministic; view v takes offset (v + 0.5) / views inside each segment (views=1 → the
    segment centres): int64 [views, T], each row non-decreasing."""
    _check(num_frames, T)
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    offsets = (np.arange(views)[:, None] + 0.5) / views  # [views, 1]
    return _pick(num_frames, T, np.broadcast_to(offsets, (views, T)))  # [views, T]
