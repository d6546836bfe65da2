"""The synthetic dataset (determinism, layout, motion-only classes, the designed aliasing) and the stage-1
`VideoClipDataset` that reads it.

The class-signal tests use one classifier, ridge regression on standardised features (closed form, deterministic),
trained on half of the videos and scored on the other half; chance bounds come from the number of test videos.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vivitcache import __version__
from vivitcache.data.annotations import VideoRecord, load_annotations
from vivitcache.data.clips import VideoClipDataset
from vivitcache.data.decode import probe_video, read_frames
from vivitcache.data.sampling import view_indices
from vivitcache.data.synth import CLASS_NAMES, make_synth_dataset, render_clip
from vivitcache.data.transforms import Preprocess


# ------------------------------------------------------------------------------------------------ helpers
def ridge_predict(x_train, y_train, x_test, classes: int, lam: float = 1.0) -> np.ndarray:
    """One-vs-rest ridge regression on standardised features; predicted class per test row."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = np.concatenate([(x_train - mu) / sd, np.ones((len(x_train), 1))], 1)  # [N, F+1]
    b = np.concatenate([(x_test - mu) / sd, np.ones((len(x_test), 1))], 1)
    targets = 2 * np.eye(classes)[y_train] - 1  # [N, C]
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ targets)
    return np.argmax(b @ w, 1)


def chance_bound(classes: int, n_test: int, sigmas: float = 3.5) -> float:
    """Accuracy a chance-level classifier stays under: p + sigmas · sqrt(p(1-p)/n)."""
    p = 1 / classes
    return p + sigmas * np.sqrt(p * (1 - p) / n_test)


def single_frame_features(frame: np.ndarray) -> np.ndarray:
    """What one frame shows, translation-invariant: background colour and spread, and the brightest spot (the
    blob): its colour, contrast, size and position (linear and periodic)."""
    f = frame.astype(np.float64) / 255  # [H, W, 3]
    h, w = f.shape[:2]
    bright = f.max(-1)  # [H, W]
    smooth = sum(np.roll(bright, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
    patch = np.roll(f, (3 - y, 3 - x), (0, 1))[:7, :7]  # [7, 7, 3] centred on the brightest spot
    background = np.median(f.reshape(-1, 3), 0)  # [3]
    excess = np.clip(patch.max(-1) - background.max(), 0, None)  # [7, 7]
    r2 = (np.arange(7)[:, None] - 3) ** 2 + (np.arange(7)[None, :] - 3) ** 2
    radius = np.sqrt((excess * r2).sum() / (excess.sum() + 1e-6))
    angles = 2 * np.pi * np.array([x / w, y / h])
    return np.concatenate(
        [background, f.reshape(-1, 3).std(0), patch[3, 3], patch.mean((0, 1)), [excess.sum(), radius, smooth.max()],
         [x / w, y / h, (x / w) ** 2, (y / h) ** 2], np.cos(angles), np.sin(angles)]
    )


def motion_features(frames: np.ndarray) -> np.ndarray:
    """How the blob changes across a few frames [k, H, W, 3]: its track relative to the static background.

    The per-pixel median over the frames is the background; the blob's circular centroid (the frame wraps) and
    its summed brightness per frame give velocities, their change between halves, and phase-free spectra of the
    horizontal track and of the brightness.
    """
    g = frames.astype(np.float64).mean(-1) / 255  # [k, H, W]
    k, h, w = g.shape
    residual = g - np.median(g, axis=0)  # [k, H, W]
    weight = residual**2
    angle_x, angle_y = np.exp(2j * np.pi * np.arange(w) / w), np.exp(2j * np.pi * np.arange(h) / h)
    x = np.angle((weight.sum(1) * angle_x).sum(-1)) * w / (2 * np.pi)  # [k]
    y = np.angle((weight.sum(2) * angle_y).sum(-1)) * h / (2 * np.pi)
    brightness = residual.reshape(k, -1).sum(1)
    dx, dy = (np.diff(x) + w / 2) % w - w / 2, (np.diff(y) + h / 2) % h - h / 2  # [k-1] wrapped steps
    half = (k - 1) // 2

    def spectrum(v):
        return np.abs(np.fft.rfft(v - v.mean()))[1:]

    return np.concatenate(
        [
            [dx.mean(), dy.mean(), dy[:half].mean() - dy[half:].mean(), np.abs(dx).mean(), np.abs(dy).mean()],
            spectrum(np.cumsum(dx)),
            spectrum(brightness) / (np.abs(brightness).mean() + 1e-6),
        ]
    )


def decoded_frames(path) -> np.ndarray:
    return read_frames(path, range(probe_video(path).num_frames))


# ------------------------------------------------------------------------------------------------ layout
def test_synth_layout_and_labels(synth_dataset):
    meta = json.loads((synth_dataset / "synth.json").read_text())
    assert meta["classes"] == 8 and meta["videos_per_class"] == 3 and meta["frames"] == 32 and meta["size"] == 32
    assert meta["seed"] == 0 and meta["vivitcache_version"] == __version__
    assert meta["class_names"] == list(CLASS_NAMES[:8])
    ds = load_annotations(synth_dataset / "labels.csv")
    assert ds.classes == sorted(CLASS_NAMES[:8])
    assert len(ds.records) == 24
    assert len(ds.split("val")) == 8 and len(ds.split("train")) == 16  # round(0.25 · 3) = 1 per class
    for r in ds.records:
        assert r.path.endswith(f"videos/{ds.classes[r.label]}/{r.id.split('/')[-1]}.mp4")
    info = probe_video(ds.records[0].path)
    assert (info.width, info.height, info.num_frames) == (32, 32, 32)


def _synth_in_a_fresh_process(out, seed: int):
    """What a user gets from `vivitcache synth`: a new process each time. (In the test process, earlier tests leave
    process-wide codec state behind that made x264's bytes differ now and then within one process: measured.)"""
    code = (f"from vivitcache.data.synth import make_synth_dataset; "
            f"make_synth_dataset({str(out)!r}, classes=8, videos_per_class=3, frames=32, size=32, seed={seed})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return out


def test_synth_is_deterministic(synth_dataset, tmp_path):
    first_run = _synth_in_a_fresh_process(tmp_path / "first", 0)
    again = _synth_in_a_fresh_process(tmp_path / "again", 0)
    other = _synth_in_a_fresh_process(tmp_path / "other", 1)
    for name in ("move_right/move_right_000", "oscillate_fast/oscillate_fast_002", "blink_slow/blink_slow_001"):
        first, second = first_run / f"videos/{name}.mp4", again / f"videos/{name}.mp4"
        np.testing.assert_array_equal(decoded_frames(first), decoded_frames(second))
        assert first.read_bytes() == second.read_bytes()  # x264 with one thread is bit-exact
        assert not np.array_equal(decoded_frames(first), decoded_frames(other / f"videos/{name}.mp4"))
    assert (again / "labels.csv").read_text() == (synth_dataset / "labels.csv").read_text()


def test_synth_rejects_bad_parameters(tmp_path):
    for bad in ({"classes": 0}, {"classes": len(CLASS_NAMES) + 1}, {"size": 33}, {"frames": 1}):
        with pytest.raises(ValueError):
            make_synth_dataset(tmp_path, **bad)
    with pytest.raises(ValueError, match="unknown synth class"):
        render_clip("teleport", 8, 16, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------ class signal
@pytest.fixture(scope="module")
def rendered():
    """All 10 classes × 30 rendered (not encoded) clips of 32 frames, labels, train mask (even clips)."""
    per_class, frames = 30, 32
    clips = np.stack(
        [
            render_clip(name, frames, 32, np.random.default_rng([7, c, j]))
            for c, name in enumerate(CLASS_NAMES)
            for j in range(per_class)
        ]
    )  # [N, T, H, W, 3]
    labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
    return clips, labels, np.arange(len(labels)) % 2 == 0


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """8 classes × 10 encoded videos of 24 frames (decoded again), labels, train mask (even videos of a class)."""
    root = make_synth_dataset(
        tmp_path_factory.mktemp("signal"), classes=8, videos_per_class=10, frames=24, size=32, seed=3
    )
    ds = load_annotations(root / "labels.csv")
    videos = np.stack([decoded_frames(r.path) for r in ds.records])  # [N, T, H, W, 3]
    labels = np.array([r.label for r in ds.records])
    index_in_class = np.array([int(r.id.rsplit("_", 1)[1]) for r in ds.records])
    return videos, labels, index_in_class % 2 == 0


def single_frame_accuracies(videos, labels, train, classes) -> dict[str, float]:
    """Ridge accuracy on single frames: at the first, middle and last frame, and all frames pooled."""
    frames = videos.shape[1]
    picks = [0, frames // 2, frames - 1]
    x = np.stack([[single_frame_features(v[t]) for t in picks] for v in videos])  # [N, 3, F]
    acc = {}
    for k, t in enumerate(picks):
        predicted = ridge_predict(x[train, k], labels[train], x[~train, k], classes, lam=0.01)
        acc[f"frame {t}"] = float((predicted == labels[~train]).mean())
    pooled = x.reshape(-1, x.shape[-1])  # [N · 3, F]
    pooled_labels, pooled_train = np.repeat(labels, len(picks)), np.repeat(train, len(picks))
    predicted = ridge_predict(pooled[pooled_train], pooled_labels[pooled_train], pooled[~pooled_train], classes, 0.01)
    acc["pooled"] = float((predicted == pooled_labels[~pooled_train]).mean())
    return acc


def test_single_frames_carry_no_class_signal(rendered, encoded):
    for videos, labels, train in (rendered, encoded):
        classes = int(labels.max()) + 1
        # frames of one video are not independent: the sample size is the number of test videos, not frames
        bound = chance_bound(classes, int((~train).sum()))
        accuracy = single_frame_accuracies(videos, labels, train, classes)
        assert max(accuracy.values()) < bound, f"{accuracy} vs chance bound {bound:.3f}"


def test_single_frame_classifier_would_see_a_leak(rendered):
    """The single-frame test has power: tint the blob by class (one channel dimmed by a class-dependent factor)
    and single frames reveal the class."""
    clips, labels, train = rendered
    background = np.median(clips, axis=1, keepdims=True)  # [N, 1, H, W, 3] the static texture
    blob = (clips.astype(np.int16) - background).max(-1) > 20  # [N, T, H, W]
    leaky = clips.copy()
    for c in range(len(CLASS_NAMES)):
        in_class = (labels == c)[:, None, None, None] & blob  # [N, T, H, W]
        leaky[..., c % 3][in_class] = (leaky[..., c % 3][in_class] * (0.5 + 0.05 * c)).astype(np.uint8)
    accuracy = single_frame_accuracies(leaky, labels, train, len(CLASS_NAMES))
    assert min(accuracy.values()) > chance_bound(len(CLASS_NAMES), int((~train).sum())) + 0.1, accuracy


def test_a_few_frames_carry_the_class(encoded):
    videos, labels, train = encoded
    centres = view_indices(videos.shape[1], 8)[0]  # the 8 frames an 8-frame model sees
    x = np.stack([motion_features(v[centres]) for v in videos])
    accuracy = (ridge_predict(x[train], labels[train], x[~train], 8) == labels[~train]).mean()
    # the same classifier, 8 frames instead of 1: far above chance; at most 7/8 (the oscillate pair aliases)
    assert accuracy > chance_bound(8, int((~train).sum())) + 0.3


def test_fast_classes_alias_at_8_frames_and_separate_at_32(rendered):
    """8 uniformly spaced frames confuse exactly the slow/fast pairs; 32 frames separate every class."""
    clips, labels, train = rendered
    per_class_test = int((~train).sum()) // len(CLASS_NAMES)
    accuracy = {}
    for k in (8, 32):
        x = np.stack([motion_features(clip[view_indices(clips.shape[1], k)[0]]) for clip in clips])
        predicted = ridge_predict(x[train], labels[train], x[~train], len(CLASS_NAMES))
        accuracy[k] = {name: (predicted[labels[~train] == c] == c).mean() for c, name in enumerate(CLASS_NAMES)}
    assert min(accuracy[32].values()) >= 0.85, accuracy[32]
    aliased = {"oscillate_slow", "oscillate_fast", "blink_slow", "blink_fast"}
    assert min(v for name, v in accuracy[8].items() if name not in aliased) >= 0.85, accuracy[8]
    for slow, fast in (("oscillate_slow", "oscillate_fast"), ("blink_slow", "blink_fast")):
        pair = (accuracy[8][slow] + accuracy[8][fast]) / 2  # within the pair: a coin flip at best
        assert pair <= 0.5 + 3.5 * np.sqrt(0.25 / (2 * per_class_test)), (slow, fast, pair)


# ------------------------------------------------------------------------------------------------ clips
@pytest.fixture(scope="module")
def preprocess():
    return Preprocess(size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.875)


def test_clip_dataset_train_and_eval_items(synth_dataset, preprocess):
    records = load_annotations(synth_dataset / "labels.csv").records[:4]
    train = VideoClipDataset(records, num_frames=8, preprocess=preprocess, train=True, seed=5)
    clip, label = train[1]
    assert clip.shape == (8, 3, 24, 24) and clip.dtype == torch.float32 and label == records[1].label
    torch.testing.assert_close(train[1][0], clip)  # same (seed, epoch, index) → same clip
    draws = {tuple(train.clip_indices(1).tolist())}
    for epoch in range(1, 6):
        train.set_epoch(epoch)
        draws.add(tuple(train.clip_indices(1).tolist()))
    assert len(draws) > 1  # a new epoch draws new frames
    assert train.sampled_frame_count(1) == 32
    evaluation = VideoClipDataset(records, num_frames=8, preprocess=preprocess, train=False, views=2)
    clips, _ = evaluation[0]
    assert clips.shape == (2, 8, 3, 24, 24)
    torch.testing.assert_close(evaluation[0][0], clips)
    assert VideoClipDataset(records, 8, preprocess, train=False)[0][0].shape == (1, 8, 3, 24, 24)


def test_clip_frames_are_the_sampled_frames(make_video, frame_index, preprocess):
    """Index-coded video, stride 2: the clip's frames are exactly the sampler's picks among the kept frames."""
    path = make_video("clip_source.mp4", frames=40, size=(40, 32))
    record = VideoRecord("clip_source", str(path), 0, "val")
    dataset = VideoClipDataset([record], num_frames=5, preprocess=preprocess, train=False, stride=2, views=2)
    assert dataset.sampled_frame_count(0) == 20
    clips, _ = dataset[0]  # [2, 5, 3, S, S]
    pixels = ((clips * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    shown = [[frame_index(im) for im in view] for view in pixels]
    assert shown == (2 * view_indices(20, 5, views=2)).tolist()  # sampled index i = source frame 2i


def test_clip_dataset_pickles_and_runs_in_a_worker(synth_dataset, preprocess):
    records = load_annotations(synth_dataset / "labels.csv").split("train")[:4]
    dataset = VideoClipDataset(records, num_frames=4, preprocess=preprocess, train=True, seed=1)
    dataset[0]  # fills the frame-count cache
    clone = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(clone[0][0], dataset[0][0])
    loader = DataLoader(dataset, batch_size=2, num_workers=1, multiprocessing_context="spawn")
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(2, 4, 3, 24, 24)] * 2
    torch.testing.assert_close(batches[0][0][0], dataset[0][0])  # a worker draws the same clip
