"""Frame preprocessing for the spatial ViT, the timm eval convention: resize the shorter side to size / crop_pct,
center crop to size, scale to [0, 1], normalise with the model's mean and std.

Resize and crop are torchvision's tensor ops (the ones timm's own eval transform uses on PIL images), applied to
a whole clip at once. The decoder usually resizes already (`read_frames(..., resize_short=p.resize_short)`, swscale
inside PyAV), in which case only the crop and the normalisation run here.

Two halves for extraction on an accelerator (`__call__` is both at once, on the CPU):
- `crop_uint8` (CPU): frames stay uint8; the center crop is the one copy the frames need anyway (into the batch
  buffer), so it costs a memcpy of the crop and nothing else;
- `normalizer(device)` (the model's device): uint8 [T, S, S, 3] → float32 [T, 3, S, S], the same float ops in the
  same order as `__call__`, so on a CPU both give bit-identical inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class Preprocess:
    """How decoded RGB frames become the spatial ViT's input."""

    size: int
    """Side of the square crop fed to the ViT (its img_size)."""
    mean: tuple[float, float, float]
    """Per-channel mean (RGB, [0, 1] scale) subtracted after scaling."""
    std: tuple[float, float, float]
    """Per-channel standard deviation (RGB, [0, 1] scale) divided by."""
    interpolation: str = "bicubic"
    """Resize filter: bicubic, bilinear or nearest (timm's name)."""
    crop_pct: float = 0.875
    """Crop side / resized shorter side (timm eval convention; 1.0 = no border cut)."""

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"Preprocess.size must be >= 1, got {self.size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"Preprocess.crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"Preprocess needs 3 means and 3 positive stds, got {self.mean}, {self.std}")
        InterpolationMode(self.interpolation)  # ValueError for an unknown filter name
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def resize_short(self) -> int:
        """Shorter side after the resize, before the crop: int(size / crop_pct) (timm's floor)."""
        return int(self.size / self.crop_pct)

    def to_dict(self) -> dict:
        """JSON-able fields (mean/std as lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        """Inverse of `to_dict`."""
        return cls(
            size=int(data["size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=str(data.get("interpolation", "bicubic")),
            crop_pct=float(data.get("crop_pct", 0.875)),
        )

    @classmethod
    def from_timm(cls, model: torch.nn.Module, img_size: int | None = None) -> Preprocess:
        """From a timm model's pretrained cfg (`timm.data.resolve_data_config`).

        The crop size is `img_size` when given, else the size the model was built with (`patch_embed.img_size`,
        which differs from the pretrained cfg's input_size when overridden at creation), else the cfg's.
        """
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        size = img_size
        built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # int or (H, W)
        if size is None and built:
            size = int(built[-1] if isinstance(built, (tuple, list)) else built)
        if size is None:
            size = int(cfg["input_size"][-1])
        interpolation = cfg.get("interpolation", "bicubic")
        if interpolation not in ("bicubic", "bilinear", "nearest"):  # e.g. "random" (a train-time setting)
            interpolation = "bicubic"
        return cls(
            size=int(size),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            interpolation=interpolation,
            crop_pct=float(cfg.get("crop_pct", 0.875)),
        )

    def crop_box(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the center crop in a [height, width] frame: torchvision's `center_crop` anchor."""
        return int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))

    def crop_uint8(self, frames: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """uint8 RGB frames [H, W, 3] (a list or [T, H, W, 3]) → the center crops, uint8 [T, size, size, 3].

        Frames not at `resize_short` yet are resized first (torchvision, as `__call__` does); frames the decoder
        resized are only sliced and copied once.
        """
        first = frames[0]
        if first.ndim != 3 or first.shape[-1] != 3 or first.dtype != np.uint8:
            raise ValueError(f"crop_uint8 expects uint8 frames [H, W, 3], got {first.dtype} {tuple(first.shape)}")
        h, w = first.shape[:2]
        if min(h, w) != self.resize_short:
            x = torch.as_tensor(np.ascontiguousarray(np.stack(frames))).permute(0, 3, 1, 2)  # [T, 3, H, W]
            x = TF.resize(x, [self.resize_short], interpolation=InterpolationMode(self.interpolation), antialias=True)
            return TF.center_crop(x, [self.size, self.size]).permute(0, 2, 3, 1).contiguous()  # [T, S, S, 3]
        top, left = self.crop_box(h, w)
        out = np.empty((len(frames), self.size, self.size, 3), dtype=np.uint8)  # [T, S, S, 3]
        for t, frame in enumerate(frames):
            out[t] = frame[top:top + self.size, left:left + self.size]
        return torch.from_numpy(out)

    def normalizer(self, device: torch.device | str = "cpu"):
        """`fn(x uint8 [T, S, S, 3] on device) → float32 [T, 3, S, S]`, with mean and std put on `device` once."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)

        def normalize(x: torch.Tensor) -> torch.Tensor:
            # NHWC → NCHW during the uint8 → float cast (one pass; a channels-last float then .contiguous() is 2x)
            x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)  # [T, 3, S, S]
            return x.div_(255.0).sub_(mean).div_(std)

        return normalize

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames [T, H, W, 3] (numpy or torch) → float32 [T, 3, size, size], normalised."""
        x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise ValueError(f"Preprocess expects uint8 frames [T, H, W, 3], got {x.dtype} {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        if min(x.shape[-2:]) != self.resize_short:
            # uint8 in, uint8 out: rounds and clamps like PIL, antialiased when shrinking
            x = TF.resize(x, [self.resize_short], interpolation=InterpolationMode(self.interpolation), antialias=True)
        x = TF.center_crop(x, [self.size, self.size])  # [T, 3, size, size]
        x = x.float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous()  # [T, 3, size, size] float32
