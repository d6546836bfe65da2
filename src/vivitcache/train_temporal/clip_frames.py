"""Which frames a stage-2 clip takes, and the token-space augmentation applied to it. Pure index math, no I/O.

Training: T frames from T uniform segments with random jitter (the rule of `data.sampling.segment_indices`),
optionally inside a random window (temporal crop, frame-rate jitter). Evaluation: fixed views (the rule of
`data.sampling.view_indices`). A video shorter than T repeats frames (indices stay sorted, so time never runs
backwards); nothing is padded and no mask is needed, because every clip has exactly T real frame features.

Everything here works on a whole batch at once: `[B]` arrays of videos in, `[B, T]` indices out.

The random numbers are counter-based: uniform number j of stream s of a clip is a hash of (seed, epoch, index, s,
j) (splitmix64, `_mix`). So a clip depends only on (seed, epoch, index), as any DataLoader worker, DDP rank or
resumed run needs, and a batch of clips is drawn in a few numpy operations. Hand-written because numpy's
generators are sequential: one `default_rng([seed, epoch, index])` per clip costs ~7 us to create and ~15 us with
its draws (measured), more than gathering the clip's 128 x 768 features from memory (~11 us).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vivitcache.train_temporal.config import AugmentConfig

_GOLDEN_INT, _M1_INT, _M2_INT = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_GOLDEN = np.uint64(_GOLDEN_INT)
_M1, _M2 = np.uint64(_M1_INT), np.uint64(_M2_INT)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_U64 = 2**64

# streams of uniform numbers of one clip (each clip has its own key; streams never overlap)
_SPAN, _START, _SEGMENTS, _DROPOUT = 0, 1, 2, 3


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 with full avalanche (arrays only: numpy wraps them silently).
    In place on one new array (two temporaries instead of nine: this runs on every batch's [B, T] counters)."""
    y = x >> _S30
    y ^= x
    y *= _M1
    t = y >> _S27
    y ^= t
    y *= _M2
    y ^= np.right_shift(y, _S31, out=t)
    return y


def _mix_int(x: int) -> int:
    """`_mix` of one Python int (mod 2**64), for the per-(seed, epoch) key: no numpy call per batch for it."""
    x ^= x >> 30
    x = (x * _M1_INT) % _U64
    x ^= x >> 27
    x = (x * _M2_INT) % _U64
    return x ^ (x >> 31)


def clip_keys(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """One key per training clip, a function of (seed, epoch, index) only: [B] uint64."""
    run = _mix_int((seed % _U64) ^ _mix_int((epoch % _U64 + _GOLDEN_INT) % _U64))
    counter = np.asarray(index, dtype=np.int64).astype(np.uint64)  # [B]
    counter += np.uint64(1)
    counter *= _GOLDEN
    counter += np.uint64(run)
    return _mix(counter)  # [B]


@functools.lru_cache(maxsize=64)
def _counters(draws: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The hashed counters of `draws` ((stream, n) pairs, the first n numbers of each stream), side by side: [sum n]."""
    counter = np.concatenate([(np.uint64(stream) << np.uint64(32)) + np.arange(1, n + 1, dtype=np.uint64)
                              for stream, n in draws]) * _GOLDEN
    counter.flags.writeable = False  # shared by every call with these draws
    return counter


def draws(keys: np.ndarray, *wanted: tuple[int, int]) -> list[np.ndarray]:
    """For each (stream, n) of `wanted`, the first n uniform numbers in [0, 1) of that stream of every clip's key
    (53 random bits each), hashed in one pass for the whole batch: a list of [B, n] float64."""
    bits = _mix(keys[:, None] + _counters(wanted)[None, :])  # [B, sum n]
    bits >>= _S11
    u = bits.astype(np.float64)
    u *= 2.0**-53
    return np.split(u, np.cumsum([n for _, n in wanted])[:-1], axis=1)


def _segments(num_frames: np.ndarray, T: int, offsets: np.ndarray) -> np.ndarray:
    """`data.sampling._pick` for many videos: frame at relative position `offsets` ([B, ..., T] in [0, 1)) inside each
    of T equal segments of each video (`num_frames` [B]): int64 [B, ..., T]."""
    n = np.asarray(num_frames, dtype=np.int64).reshape((-1,) + (1,) * (offsets.ndim - 1))  # [B, 1.., 1]
    segment = n / T  # segment length in frames (may be < 1)
    position = offsets * segment  # [B, ..., T]
    position += np.arange(T) * segment
    index = np.floor(position, out=position).astype(np.int64)  # >= 0: offsets are in [0, 1)
    return np.minimum(index, n - 1, out=index)  # np.minimum, not np.clip: ~10x less call overhead on every batch


@dataclass
class TrainClips:
    """Frame indices of a batch of training clips, and which frame features token dropout zeroes."""

    indices: np.ndarray
    """[B, T] int64 frame indices into each video (neighbour dropout already folded in)."""
    zeroed: np.ndarray | None
    """[B, T] bool, frame features set to zero after the gather (dropout mode `zero`); None: none."""


def train_clips(num_frames: np.ndarray, T: int, keys: np.ndarray, augment: AugmentConfig) -> TrainClips:
    """T frame indices per training clip, for videos of `num_frames` [B] frames with clip keys `keys` [B].

    The window is the whole video, or `temporal_crop` of it, shrunk by a factor drawn in [1 - frame_rate_jitter, 1]
    (a slower, random frame rate); it starts at a random frame. One frame is drawn in each of T equal segments of
    it. Token dropout picks round(token_dropout * T) distinct frames per clip: `zero` zeroes their features,
    `neighbour` gives them the previous frame's (the next one's for frame 0), like a dropped frame in a stream.
    """
    n = np.asarray(num_frames, dtype=np.int64)  # [B]
    if n.size and n.min() < 1:
        raise ValueError(f"a clip needs a video with at least 1 frame, got num_frames={int(n.min())}")
    k = int(round(augment.token_dropout * T)) if T >= 2 else 0
    jitter = augment.frame_rate_jitter > 0.0
    wanted = [(_SPAN, 1)] * jitter + [(_START, 1), (_SEGMENTS, T)] + [(_DROPOUT, T)] * (k > 0)
    u = draws(keys, *wanted)  # every random number of the batch in one pass
    u_span = u.pop(0)[:, 0] if jitter else None  # [B]
    u_start, u_segments = u[0][:, 0], u[1]  # [B], [B, T]
    span = n.copy()
    if augment.temporal_crop < 1.0:
        span = np.maximum(1, np.round(span * augment.temporal_crop)).astype(np.int64)
    if jitter:
        j = augment.frame_rate_jitter
        span = np.maximum(1, np.round(span * (1.0 - j + j * u_span))).astype(np.int64)
    start = np.floor(u_start * (n - span + 1)).astype(np.int64)  # [B], 0 when span == n
    indices = _segments(span, T, u_segments)  # [B, T]
    indices += start[:, None]
    if k == 0:
        return TrainClips(indices, None)
    dropped = np.argsort(u[2], axis=1, kind="stable")[:, :k]  # [B, k] distinct frames
    if augment.token_dropout_mode == "zero":
        zeroed = np.zeros(indices.shape, dtype=bool)
        np.put_along_axis(zeroed, dropped, True, axis=1)
        return TrainClips(indices, zeroed)
    source = np.where(dropped == 0, 1, dropped - 1)  # [B, k] the neighbour's original frame
    folded = indices.copy()
    np.put_along_axis(folded, dropped, np.take_along_axis(indices, source, axis=1), axis=1)
    return TrainClips(folded, None)


def eval_indices(num_frames: np.ndarray, T: int, views: int) -> np.ndarray:
    """Fixed frame indices of `views` evaluation clips per video (`num_frames` [B]): [B, views, T] int64; view v
    takes offset (v + 0.5) / views inside each segment (`data.sampling.view_indices`)."""
    offsets = np.broadcast_to((np.arange(views)[:, None] + 0.5) / views, (views, T))  # [V, T]
    n = np.asarray(num_frames, dtype=np.int64)
    return _segments(n, T, np.broadcast_to(offsets, (len(n), views, T)))  # [B, V, T]
