"""Streaming video decode with PyAV: one frame at a time, never a whole video in memory.

Frame timing comes from demuxed packets (pts × time_base), which is cheap (no decoding) and exact for variable
frame rate video. Which source frames are kept is one rule (`_KeepRule`) used by both the index math
(`sample_times`, on demuxed times) and the decoder (`iter_frames`, on decoded frames), so both always agree:

- `stride=K`: every K-th source frame (0, K, 2K, ...);
- `fps=R`: for each target time k/R after the first frame (k = 0, 1, ...), the first frame whose presentation time is
  at or after that target; a frame is kept once even when several targets land on it (no duplicates), targets after
  the last frame pick nothing;
- neither: every frame.

Every failure to read a video (missing, empty, not a video, audio only, truncated, corrupt) raises one exception,
`VideoDecodeError`, whose message is `"<path>: <cause>"`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

# Times closer than this are equal: float rounding of pts × time_base must not push a frame past its target.
# Far below any real time base resolution (1/90000 s).
_TIME_EPS = 1e-6


class VideoDecodeError(Exception):
    """A video that cannot be read; message `"<path>: <cause>"`."""

    def __init__(self, path: str | os.PathLike, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):  # picklable across DataLoader workers and Dask processes
        return (type(self), (self.path, self.cause))


@dataclass
class VideoInfo:
    """What demuxing a video tells (no decoding)."""

    path: str
    """The video file."""
    width: int
    """Frame width in pixels (coded size of the video stream)."""
    height: int
    """Frame height in pixels."""
    fps: float
    """Average frame rate (frames per second)."""
    duration: float
    """Duration of the video stream in seconds."""
    num_frames: int
    """Number of frames, counted from the demuxed packets that carry a timestamp."""


@dataclass
class Frame:
    """One decoded (kept) frame."""

    index: int
    """Index among the sampled (kept) frames: 0, 1, 2, ..."""
    source_index: int
    """Index among all frames of the video in presentation order."""
    time: float
    """Presentation time in seconds (pts × time_base)."""
    image: np.ndarray
    """RGB pixels, uint8 [H, W, 3]."""


# ------------------------------------------------------------------------------------------------ opening
@contextmanager
def _open_video(path: str | os.PathLike):
    """Open `path` and yield (container, video stream); every failure becomes a VideoDecodeError."""
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(path, "file not found")
    if not p.is_file():
        raise VideoDecodeError(path, "not a file")
    if p.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(p), mode="r")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise VideoDecodeError(path, f"not a readable video ({_reason(e)})") from e
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise VideoDecodeError(path, f"no video stream (has: {', '.join(kinds)})")
        yield container, container.streams.video[0]
    finally:
        container.close()


def _reason(e: BaseException) -> str:
    """A short one-line cause from an av/OS error."""
    text = getattr(e, "strerror", None) or str(e)
    return " ".join(str(text).split()) or type(e).__name__


_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


@contextmanager
def _wrap_av_errors(path, what: str):
    """Turn av errors raised while demuxing/decoding into VideoDecodeError."""
    try:
        yield
    except VideoDecodeError:
        raise
    except _AV_ERRORS as e:
        raise VideoDecodeError(path, f"{what} failed ({_reason(e)})") from e


def _average_fps(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


# ------------------------------------------------------------------------------------------------ timing
def _demux_times(path, container, stream) -> np.ndarray:
    """Sorted presentation times (s) of every frame from packet timestamps: [n] float64."""
    pts: list[int | None] = []
    with _wrap_av_errors(path, "demuxing"):
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:  # flush packets; frames cut by an edit list
                continue
            pts.append(packet.pts if packet.pts is not None else packet.dts)
    if not pts:
        raise VideoDecodeError(path, "no video frames (empty or truncated stream)")
    if any(t is None for t in pts):  # no timestamps at all (rare raw streams): assume constant rate
        fps = _average_fps(stream) or 25.0
        return np.arange(len(pts), dtype=np.float64) / fps
    return np.sort(np.asarray(pts, dtype=np.float64)) * float(stream.time_base)


def frame_times(path: str | os.PathLike) -> np.ndarray:
    """Presentation times in seconds of every frame, sorted: [num_frames] float64. Demux only, no decode."""
    with _open_video(path) as (container, stream):
        return _demux_times(path, container, stream)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, average fps, duration and frame count of a video, from demuxing only (no decode)."""
    with _open_video(path) as (container, stream):
        times = _demux_times(path, container, stream)
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            raise VideoDecodeError(path, "video stream has no frame size")
        fps = _average_fps(stream)
        if not fps:
            span = times[-1] - times[0]
            fps = (len(times) - 1) / span if span > 0 else 1.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = float(times[-1] - times[0]) + 1.0 / fps
        return VideoInfo(str(path), ctx.width, ctx.height, float(fps), duration, len(times))


# ------------------------------------------------------------------------------------------------ sampling
class _KeepRule:
    """Which source frames are kept, decided frame by frame in presentation order (see the module docstring)."""

    def __init__(self, fps: float | None, stride: int | None):
        if fps is not None and stride is not None:
            raise ValueError("give fps or stride, not both")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps}")
        if stride is not None and (int(stride) != stride or stride < 1):
            raise ValueError(f"stride must be a positive integer, got {stride}")
        self.fps, self.stride = fps, stride
        self.start: float | None = None  # time of the first frame
        self.next_target = 0  # k of the next target time k / fps

    def __call__(self, source_index: int, time: float) -> bool:
        if self.stride is not None:
            return source_index % self.stride == 0
        if self.fps is None:
            return True
        if self.start is None:
            self.start = time
        t = time - self.start  # seconds since the first frame
        if t < self.next_target / self.fps - _TIME_EPS:
            return False
        # this frame serves every target up to its own time; the next target is the first one after it
        self.next_target = math.floor((t + _TIME_EPS) * self.fps) + 1
        return True


def sample_times(
    times: Sequence[float] | np.ndarray, fps: float | None = None, stride: int | None = None
) -> np.ndarray:
    """Indices of the kept source frames given every frame's time (sorted, seconds): [n_kept] int64.

    Same rule as `iter_frames` (module docstring): stride K keeps every K-th frame; fps R keeps, for each target
    time k/R since the first frame, the first frame at or after it, without duplicates (VFR safe); neither keeps all.
    Both → ValueError.
    """
    rule = _KeepRule(fps, stride)
    times = np.asarray(times, dtype=np.float64)
    if fps is None:  # index math only
        return np.arange(0, len(times), stride or 1, dtype=np.int64)
    return np.asarray([i for i, t in enumerate(times.tolist()) if rule(i, t)], dtype=np.int64)


# ------------------------------------------------------------------------------------------------ decoding
def _resized_size(width: int, height: int, resize_short: int | None) -> tuple[int, int]:
    """(width, height) with the shorter side = resize_short, aspect kept; the longer side is truncated like
    torchvision's Resize(int) (the timm eval pipeline), so `Preprocess` finds frames already at its size."""
    if resize_short is None:
        return width, height
    if resize_short < 1:
        raise ValueError(f"resize_short must be >= 1, got {resize_short}")
    if width <= height:
        return resize_short, max(1, int(resize_short * height / width))
    return max(1, int(resize_short * width / height)), resize_short


def _swscale_interpolation(name: str) -> str:
    """timm/torchvision filter name → PyAV's swscale name (bicubic → BICUBIC, nearest → POINT)."""
    swscale = {"nearest": "POINT"}.get(name.lower(), name.upper())
    if swscale not in av.video.reformatter.Interpolation.__members__:
        raise ValueError(f"unknown interpolation {name!r}")
    return swscale


def iter_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    stride: int | None = None,
    resize_short: int | None = None,
    interpolation: str = "bicubic",
    only: Collection[int] | None = None,
) -> Iterator[Frame]:
    """Decode a video one frame at a time, yielding the kept frames (`fps` / `stride` rule of the module docstring).

    `resize_short`: scale each kept frame so its shorter side has this many pixels (aspect kept), done by swscale
    inside PyAV while converting to RGB (`interpolation`: bicubic, bilinear, area, ...). Frames that are not kept
    are decoded (codecs need them) but never converted; `only` (indices among the kept frames) narrows the
    converted and yielded frames further (`read_frames` uses it). Raises VideoDecodeError (lazily, as a generator does):
    when nothing decodes, on a decoder error, and after the last good frame of a file whose tail does not decode.
    """
    rule = _KeepRule(fps, stride)  # ValueError for bad arguments, before opening anything
    swscale_interpolation = _swscale_interpolation(interpolation)
    with _open_video(path) as (container, stream):
        stream.thread_type = "AUTO"
        width, height = _resized_size(stream.codec_context.width, stream.codec_context.height, resize_short)
        fallback_fps = _average_fps(stream) or 25.0
        source_index, kept = 0, 0
        packets, last_packet_pts, last_frame_pts = 0, None, None
        demuxed = container.demux(stream)  # ends with an empty packet that flushes the decoder
        while True:
            try:
                packet = next(demuxed, None)
                if packet is None:
                    break
                if packet.size and not packet.is_discard:
                    packets += 1
                    if packet.pts is not None and (last_packet_pts is None or packet.pts > last_packet_pts):
                        last_packet_pts = packet.pts
                decoded = packet.decode()
            except _AV_ERRORS as e:
                raise VideoDecodeError(path, f"decoding failed after {source_index} frames ({_reason(e)})") from e
            for frame in decoded:
                last_frame_pts = frame.pts
                time = float(frame.time) if frame.pts is not None else source_index / fallback_fps
                if rule(source_index, time):
                    if only is not None and kept not in only:  # not wanted: skip the RGB conversion (the cost)
                        kept += 1
                        source_index += 1
                        continue
                    if resize_short is None:
                        image = frame.to_ndarray(format="rgb24")  # [H, W, 3]
                    else:
                        image = frame.to_ndarray(
                            format="rgb24", width=width, height=height, interpolation=swscale_interpolation
                        )  # [h, w, 3]
                    yield Frame(kept, source_index, time, image)
                    kept += 1
                source_index += 1
        if source_index == 0:
            raise VideoDecodeError(path, "no frame could be decoded (truncated or corrupt stream)")
        # A cut-off file: its last packets do not decode (frame-threaded decoders drop them silently). Frames lost
        # at the start only (e.g. undecodable leading frames of an open GOP) are not an error.
        tail_lost = None not in (last_frame_pts, last_packet_pts) and last_frame_pts < last_packet_pts
        if source_index < packets and tail_lost:
            raise VideoDecodeError(
                path, f"stream ends early: decoded {source_index} of {packets} frames (truncated or corrupt)"
            )


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    fps: float | None = None,
    stride: int | None = None,
    resize_short: int | None = None,
    interpolation: str = "bicubic",
) -> np.ndarray:
    """The sampled frames `indices` (indices among the kept frames; may repeat, any order): uint8 [len, H, W, 3].

    One streaming pass that keeps only the wanted frames and stops after the last one. An index past the end of
    the decodable stream raises VideoDecodeError.
    """
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)  # [N]
    if wanted.size and wanted.min() < 0:
        raise ValueError(f"frame indices must be >= 0, got {int(wanted.min())}")
    if wanted.size == 0:
        with _open_video(path) as (_, stream):
            w, h = _resized_size(stream.codec_context.width, stream.codec_context.height, resize_short)
        return np.zeros((0, h, w, 3), dtype=np.uint8)
    last = int(wanted.max())
    needed = set(wanted.tolist())
    images: dict[int, np.ndarray] = {}
    seen = 0  # sampled frames decoded so far
    frames = iter_frames(
        path, fps=fps, stride=stride, resize_short=resize_short, interpolation=interpolation, only=needed
    )
    try:
        for frame in frames:
            seen = frame.index + 1
            images[frame.index] = frame.image
            if frame.index >= last:
                break
    finally:
        frames.close()  # closes the container now, not at garbage collection
    missing = sorted(needed - images.keys())
    if missing:
        raise VideoDecodeError(path, f"stream has only {seen} sampled frames; wanted index {missing[0]}")
    return np.stack([images[i] for i in wanted.tolist()])  # [N, H, W, 3]
