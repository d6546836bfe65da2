"""Stage-1 clips: T decoded, preprocessed frames per video, as a torch Dataset.

A video's sampled frames are its source frames kept by `fps`/`stride` (`decode.sample_times`); a clip takes T
of them with `sampling.segment_indices` (training, random per (seed, epoch, index)) or `sampling.view_indices`
(evaluation, fixed). Frames are decoded in one streaming pass that stops after the last wanted frame, resized by
the decoder to the preprocessing's shorter side, then center-cropped and normalised by `Preprocess`.

Safe with DataLoader workers (spawn or fork): no file stays open between items, and the only state is plain data
(records, the per-video sampled-frame counts cached so far, the epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vivitcache.data.annotations import VideoRecord
from vivitcache.data.decode import frame_times, read_frames, sample_times
from vivitcache.data.sampling import segment_indices, view_indices
from vivitcache.data.transforms import Preprocess
from vivitcache.errors import ConfigError


class VideoClipDataset(Dataset):
    """Items: training `(clip float32 [T, 3, S, S], label)`; evaluation `(clips float32 [views, T, 3, S, S], label)`.

    Evaluation items always carry the views axis (also for views=1): the evaluator averages over it.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        num_frames: int,
        preprocess: Preprocess,
        train: bool,
        seed: int = 0,
        fps: float | None = None,
        stride: int | None = None,
        views: int = 1,
    ):
        if fps is not None and stride is not None:
            raise ConfigError("give fps or stride, not both")
        if num_frames < 1 or views < 1:
            raise ConfigError(f"num_frames and views must be >= 1, got {num_frames}, {views}")
        self.records = list(records)
        self.num_frames = num_frames
        self.preprocess = preprocess
        self.train = train
        self.seed = seed
        self.fps, self.stride = fps, stride
        self.views = views
        self.epoch = 0
        self._counts: dict[int, int] = {}  # record index → sampled-frame count (demuxed once per process)

    def set_epoch(self, epoch: int) -> None:
        """Training clips of the next epoch are drawn from (seed, epoch, index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def sampled_frame_count(self, i: int) -> int:
        """Number of frames of video i after fps/stride sampling (from demuxed timestamps, cached)."""
        if i not in self._counts:
            times = frame_times(self.records[i].path)
            self._counts[i] = len(sample_times(times, fps=self.fps, stride=self.stride))
        return self._counts[i]

    def clip_indices(self, i: int) -> np.ndarray:
        """Sampled-frame indices of item i: training [T], evaluation [views, T]."""
        n = self.sampled_frame_count(i)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])  # any worker / resumed run draws the same clip
            return segment_indices(n, self.num_frames, rng)  # [T]
        return view_indices(n, self.num_frames, self.views)  # [views, T]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        record = self.records[i]
        indices = self.clip_indices(i)  # [T] or [views, T]
        frames = read_frames(
            record.path,
            indices.reshape(-1),
            fps=self.fps,
            stride=self.stride,
            resize_short=self.preprocess.resize_short,
            interpolation=self.preprocess.interpolation,
        )  # [N, h, w, 3] uint8
        clip = self.preprocess(frames)  # [N, 3, S, S] float32
        return clip.reshape(*indices.shape, *clip.shape[1:]), record.label  # [T, 3, S, S] or [views, T, 3, S, S]
