"""Frame-index samplers: shapes, bounds, one frame per segment, determinism, short videos."""

from __future__ import annotations

import numpy as np
import pytest

from vivitcache.data.sampling import segment_indices, view_indices


def segment_bounds(n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames that overlap each of the T segments [i·n/T, (i+1)·n/T): lowest and highest, [T] each."""
    edges = np.arange(T + 1) * n / T
    return np.floor(edges[:-1]).astype(int), np.ceil(edges[1:]).astype(int) - 1


@pytest.mark.parametrize("n,T", [(64, 8), (100, 8), (37, 16), (8, 8), (5, 8), (1, 4), (300, 32)])
def test_segment_indices_one_valid_frame_per_segment(n, T):
    rng = np.random.default_rng(0)
    low, high = segment_bounds(n, T)
    for _ in range(50):
        idx = segment_indices(n, T, rng)
        assert idx.shape == (T,) and np.issubdtype(idx.dtype, np.integer)
        assert idx.min() >= 0 and idx.max() < n
        assert np.all(np.diff(idx) >= 0)  # time never runs backwards
        assert np.all((idx >= low) & (idx <= np.minimum(high, n - 1)))


def test_segment_indices_jitter_covers_each_segment():
    n, T = 64, 8
    rng = np.random.default_rng(1)
    draws = np.stack([segment_indices(n, T, rng) for _ in range(400)])  # [400, T]
    for i in range(T):
        assert set(draws[:, i].tolist()) == set(range(i * 8, (i + 1) * 8))  # every frame of the segment occurs


def test_segment_indices_determinism():
    a = segment_indices(90, 8, np.random.default_rng([3, 1, 7]))
    b = segment_indices(90, 8, np.random.default_rng([3, 1, 7]))
    c = segment_indices(90, 8, np.random.default_rng([3, 2, 7]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_view_indices_centres_and_offsets():
    n, T = 64, 8
    centres = view_indices(n, T)
    assert centres.shape == (1, T)
    np.testing.assert_array_equal(centres[0], np.floor((np.arange(T) + 0.5) * n / T))
    views = view_indices(n, T, views=4)
    assert views.shape == (4, T)
    for v in range(4):
        np.testing.assert_array_equal(views[v], np.floor((np.arange(T) + (v + 0.5) / 4) * n / T))
    assert len({tuple(r) for r in views.tolist()}) == 4  # distinct views
    np.testing.assert_array_equal(view_indices(n, T, views=4), views)  # deterministic


@pytest.mark.parametrize("n,T,views", [(3, 8, 1), (5, 16, 3), (1, 8, 2), (7, 7, 2), (200, 8, 5)])
def test_view_indices_bounds_and_order(n, T, views):
    idx = view_indices(n, T, views)
    assert idx.shape == (views, T)
    assert idx.min() >= 0 and idx.max() < n
    assert np.all(np.diff(idx, axis=1) >= 0)


@pytest.mark.parametrize("n,T", [(3, 8), (5, 16), (1, 8), (7, 8)])
def test_short_video_repeats_frames_never_pads(n, T):
    idx = view_indices(n, T)[0]
    assert set(idx.tolist()) == set(range(n))  # every real frame is used, each some times, nothing invented
    counts = np.bincount(idx, minlength=n)
    assert counts.sum() == T and counts.max() - counts.min() <= 1  # repeated evenly
    train = segment_indices(n, T, np.random.default_rng(0))
    assert train.min() >= 0 and train.max() < n and np.all(np.diff(train) >= 0)


def test_invalid_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 1 frame"):
        segment_indices(0, 8, rng)
    with pytest.raises(ValueError, match="T must be"):
        view_indices(10, 0)
    with pytest.raises(ValueError, match="views"):
        view_indices(10, 4, views=0)
