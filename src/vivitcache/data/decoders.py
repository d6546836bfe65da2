"""Video decoders behind one small interface: `decoder.frames(path, fps, stride, resize_short, interpolation)`
yields the kept frames (`decode.Frame`, uint8 [h, w, 3] with the short side resized) in presentation order.

- `pyav` (default): `decode.iter_frames`, swscale resize with the preprocessing's own filter (bicubic for timm).
- `torchcodec` (the `torchcodec` extra; needs the system's FFmpeg shared libraries): the same kept frames, chosen by
  the same rule on the same demuxed times (`decode.frame_times` + `decode.sample_times`), decoded by torchcodec's
  `VideoDecoder.get_frames_at` with its `Resize` transform, which is always bilinear + antialias. Pixels therefore
  differ from PyAV's bicubic within resize tolerance; frames, timestamps and sampling are the same.

Both raise `VideoDecodeError` for every video they cannot read, and both give frames as displayed (the display
matrix applied, as FFmpeg's players do: `decode.iter_frames` by hand, torchcodec by itself).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Protocol

from vivitcache.data.decode import (
    Frame,
    VideoDecodeError,
    _resized_size,
    frame_times,
    iter_frames,
    sample_times,
)
from vivitcache.errors import ConfigError

DECODERS = ("pyav", "torchcodec")

_CHUNK = 16  # frames asked of torchcodec at once (bounds memory like PyAV's one-frame streaming, amortises calls)


class Decoder(Protocol):
    name: str

    def frames(self, path: str | os.PathLike, fps: float | None, stride: int | None, resize_short: int | None,
               interpolation: str) -> Iterator[Frame]:
        """Kept frames of one video, in presentation order; VideoDecodeError when the video cannot be read."""


class PyAVDecoder:
    """PyAV + swscale (`decode.iter_frames`), FFmpeg's own frame threads (thread_type AUTO)."""

    name = "pyav"

    def frames(self, path, fps, stride, resize_short, interpolation) -> Iterator[Frame]:
        return iter_frames(path, fps=fps, stride=stride, resize_short=resize_short, interpolation=interpolation)


class TorchCodecDecoder:
    """torchcodec on the CPU (`num_ffmpeg_threads=0`: FFmpeg picks the thread count, like PyAV's AUTO)."""

    name = "torchcodec"

    def __init__(self):
        try:
            from torchcodec.decoders import VideoDecoder
            from torchcodec.transforms import Resize
        except (ImportError, RuntimeError, OSError) as e:  # RuntimeError/OSError: FFmpeg libraries not found
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"--decoder torchcodec: torchcodec cannot be loaded ({first}); pip install 'vivitcache[torchcodec]' "
                "and the system's FFmpeg shared libraries (apt-get install ffmpeg)"
            ) from None
        self._video_decoder, self._resize = VideoDecoder, Resize

    def frames(self, path, fps, stride, resize_short, interpolation) -> Iterator[Frame]:
        times = frame_times(path)  # [n] s, demux only; VideoDecodeError for missing/empty/non-video files
        keep = sample_times(times, fps=fps, stride=stride)  # [k] source indices
        try:
            probe = self._video_decoder(str(path), seek_mode="approximate")  # width, height, rotation as displayed
            rotation = int(round(probe.metadata.rotation or 0))  # torchcodec applies it, as FFmpeg's players do
            w, h = _resized_size(probe.metadata.width, probe.metadata.height, resize_short)
            transforms = None if resize_short is None else [self._resize((h, w))]
            decoder = self._video_decoder(str(path), dimension_order="NHWC", num_ffmpeg_threads=0,
                                          transforms=transforms)
        except (RuntimeError, ValueError) as e:
            raise VideoDecodeError(path, f"torchcodec could not open it ({_first_line(e)})") from e
        done = 0
        for start in range(0, len(keep), _CHUNK):
            indices = keep[start:start + _CHUNK].tolist()
            try:
                batch = decoder.get_frames_at(indices)  # data uint8 [n, h, w, 3], pts_seconds [n]
            except (RuntimeError, IndexError, ValueError) as e:
                raise VideoDecodeError(path, f"decoding failed after {done} frames ({_first_line(e)})") from e
            images, pts = batch.data.numpy(), batch.pts_seconds.tolist()
            for j, source_index in enumerate(indices):
                yield Frame(start + j, source_index, float(pts[j]), images[j], rotation)
            done += len(indices)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def get_decoder(name: str) -> Decoder:
    """The decoder called `name` (pyav or torchcodec); ValueError for an unknown or unloadable one."""
    if name == "pyav":
        return PyAVDecoder()
    if name == "torchcodec":
        return TorchCodecDecoder()
    raise ConfigError(f"unknown decoder {name!r}: use one of {', '.join(DECODERS)}")
