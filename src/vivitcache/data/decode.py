"""Streaming video decode with PyAV: one frame at a time, never a whole video in memory.

Frame timing comes from demuxed packets (pts × time_base), which is cheap (no decoding) and exact for variable
frame rate video. Which source frames are kept is one rule (`_KeepRule`) used by both the index math
(`sample_times`, on demuxed times) and the decoder (`iter_frames`, on decoded frames), so both always agree:

- `stride=K`: every K-th source frame (0, K, 2K, ...);
- `fps=R`: for each target time k/R after the first frame (k = 0, 1, ...), the first frame whose presentation time is
  at or after that target; a frame is kept once even when several targets land on it (no duplicates), targets after
  the last frame pick nothing;
- neither: every frame.

Frames come out as displayed, not as coded: a display matrix (phones record portrait video as landscape plus a
−90° matrix) is applied as FFmpeg's players apply it (`ffmpeg`/`ffplay` autorotate: transpose for ±90°, flips for
180°), and each frame records the rotation (`Frame.rotation`, degrees counter-clockwise as ffprobe reports it).

Every failure to read a video (missing, a broken link or symlink loop, not a regular file, empty, not a video, audio
only, truncated, corrupt) raises one exception, `VideoDecodeError`, whose message is `"<path>: <cause>"`. Files
that are not regular files (a FIFO, a device, a directory) are refused before FFmpeg opens them: opening a FIFO
blocks until something writes into it, i.e. forever.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from vivitcache.errors import ConfigError, UserError

ORIENTATION = "display-matrix"
"""How decoded frames are oriented, a store fingerprint key: the display matrix applied as FFmpeg's players apply it.
Stores made before (no key) hold rotated videos as coded; a resume with this rule refuses them."""

# Times closer than this are equal: float rounding of pts × time_base must not push a frame past its target.
# Far below any real time base resolution (1/90000 s).
_TIME_EPS = 1e-6


class VideoDecodeError(UserError):
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
    rotation: int = 0
    """Display matrix rotation in degrees counter-clockwise (ffprobe's `rotation`); width and height are as coded,
    frames come out rotated (for ±90° their width and height swap)."""


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
    """RGB pixels, uint8 [H, W, 3], as displayed (the display matrix applied)."""
    rotation: int = 0
    """Display matrix rotation that was applied, degrees counter-clockwise (ffprobe's `rotation`; 0: none)."""


# ------------------------------------------------------------------------------------------------ opening
@contextmanager
def _open_video(path: str | os.PathLike):
    """Open `path` and yield (container, video stream); every failure becomes a VideoDecodeError."""
    p = Path(check_video_file(path))
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


_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def check_video_file(path: str | os.PathLike) -> str:
    """`path` if it is a non-empty regular file (through symlinks), else VideoDecodeError saying what it is.

    Never opens the file: call it before anything hands the path to FFmpeg, which blocks forever on a FIFO.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise VideoDecodeError(path, f"broken symlink (to {os.readlink(path)!r}, which does not exist)") from None
        raise VideoDecodeError(path, "file not found") from None
    except OSError as e:
        cause = "symlink loop" if e.errno == errno.ELOOP else f"cannot stat ({_reason(e)})"
        raise VideoDecodeError(path, cause) from None
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise VideoDecodeError(path, f"{kind}, not a file (a video must be a regular file)")
    if st.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return str(path)


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
    """Size (as coded), average fps, duration, frame count and rotation of a video: from demuxing, plus one decoded
    frame for the display matrix (PyAV shows it on frames only)."""
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
        return VideoInfo(str(path), ctx.width, ctx.height, float(fps), duration, len(times),
                         _first_frame_rotation(container, stream))


def _first_frame_rotation(container, stream) -> int:
    """Display matrix rotation of the first frame (0 when none or when nothing decodes: `iter_frames` says why)."""
    try:
        container.seek(0)
        frame = next(container.decode(stream), None)
    except _AV_ERRORS:
        return 0
    return _orientation(frame)[0] if frame is not None else 0


# ------------------------------------------------------------------------------------------------ sampling
class _KeepRule:
    """Which source frames are kept, decided frame by frame in presentation order (see the module docstring)."""

    def __init__(self, fps: float | None, stride: int | None):
        if fps is not None and stride is not None:
            raise ConfigError("--fps and --stride: give one of them, not both")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ConfigError(f"--fps {fps}: must be a positive number")
        if stride is not None and (int(stride) != stride or stride < 1):
            raise ConfigError(f"--stride {stride}: must be a positive integer")
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


def _orientation(frame) -> tuple[int, Callable[[np.ndarray], np.ndarray] | None]:
    """(rotation in degrees counter-clockwise, image [H, W, 3] as coded → as displayed, or None) from a frame's
    display matrix, by the rule of FFmpeg's players (fftools `ffmpeg_filter.c`, autorotate): θ = −rotation;
    θ 90: transpose `clock` (`cclock_flip` when matrix[3] > 0), 270: `cclock` (`clock_flip` when matrix[3] < 0),
    180: hflip if matrix[0] < 0 and vflip if matrix[4] < 0, 0: vflip if matrix[4] < 0. Other angles (which FFmpeg
    rotates with black corners) are left as coded: no camera writes them.
    """
    matrix = next((np.frombuffer(bytes(sd), dtype=np.int32) for sd in frame.side_data
                   if sd.type.name == "DISPLAYMATRIX"), None)  # [9] 16.16 / 2.30 fixed point
    if matrix is None:
        return 0, None
    rotation = int(round(frame.rotation))
    theta = -rotation % 360
    if abs(theta - 90) < 1:
        op = (lambda im: im.transpose(1, 0, 2)) if matrix[3] > 0 else (lambda im: np.rot90(im, -1))
    elif abs(theta - 270) < 1:
        op = (lambda im: np.rot90(im, -1)[::-1]) if matrix[3] < 0 else (lambda im: np.rot90(im, 1))
    elif abs(theta - 180) < 1:
        op = lambda im: im[:: -1 if matrix[4] < 0 else 1, :: -1 if matrix[0] < 0 else 1]  # noqa: E731
    elif theta < 1 or theta > 359:
        op = (lambda im: im[::-1]) if matrix[4] < 0 else None
    else:
        op = None
    return rotation, (lambda im: np.ascontiguousarray(op(im))) if op is not None else None


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
        rotation, orient = 0, None  # the display matrix, read from the first decoded frame (it is the stream's)
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
                if source_index == 0:
                    rotation, orient = _orientation(frame)
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
                        # resized as coded, then oriented: the short side is the same side either way
                        image = frame.to_ndarray(
                            format="rgb24", width=width, height=height, interpolation=swscale_interpolation
                        )  # [h, w, 3]
                    if orient is not None:
                        image = orient(image)  # [w, h, 3] for ±90°
                    yield Frame(kept, source_index, time, image, rotation)
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
