"""`Preprocess`: uint8 images ``[B, C, H, W]`` to the normalised float input of an encoder.

The checkpoint stores it (``to_dict``), so evaluation and prediction feed the encoder exactly
what it was trained on: same size, same channel count, same mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fewshot.errors import FewShotError

__all__ = ["Preprocess"]


class Preprocess:
    """Channel conversion, resize (antialiased bilinear), scaling to [0, 1] and normalisation."""

    def __init__(self, image_size: int | Sequence[int], channels: int,
                 mean: Sequence[float] | float = 0.5, std: Sequence[float] | float = 0.5):
        hw = (int(image_size), int(image_size)) if isinstance(image_size, (int, float)) else tuple(
            int(v) for v in image_size)
        if len(hw) != 2 or min(hw) < 1:
            raise FewShotError(f"image_size must be a positive int or (h, w), got {image_size!r}")
        if channels not in (1, 3):
            raise FewShotError(f"channels must be 1 or 3, got {channels}")
        mean = [float(mean)] * channels if isinstance(mean, (int, float)) else [float(v) for v in mean]
        std = [float(std)] * channels if isinstance(std, (int, float)) else [float(v) for v in std]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise FewShotError(f"mean/std need {channels} values with std > 0, got {mean} / {std}")
        self.image_size: tuple[int, int] = hw  # type: ignore[assignment]
        self.channels = channels
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, images: torch.Tensor, image_size: int | Sequence[int] | None = None,
            channels: int | None = None, max_images: int = 10000) -> Preprocess:
        """Mean and std per channel measured on (up to ``max_images`` of) a uint8 training set."""
        channels = channels or int(images.shape[1])
        size = image_size or tuple(images.shape[-2:])
        probe = cls(size, channels)
        step = max(1, images.shape[0] // max_images)
        x = probe.to_unit(images[::step])
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return cls(size, channels, mean.tolist(), std.tolist())

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float in [0, 1], converted to ``channels`` and ``image_size``."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise FewShotError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        c = x.shape[1]
        if c != self.channels:
            if c == 1 and self.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            elif c == 3 and self.channels == 1:
                w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
                x = (x * w).sum(1, keepdim=True)
            else:
                raise FewShotError(f"cannot convert {c}-channel images to {self.channels} channels")
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True,
                              align_corners=False).clamp_(0, 1)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel, for a float batch in [0, 1]."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.to_unit(images))

    def to_dict(self) -> dict:
        return {"image_size": list(self.image_size), "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        try:
            return cls(tuple(d["image_size"]), int(d["channels"]), d["mean"], d["std"])
        except (KeyError, TypeError) as exc:
            raise FewShotError(f"bad preprocess record {d!r} ({exc})") from None

    def __repr__(self) -> str:
        return (f"Preprocess(image_size={self.image_size}, channels={self.channels}, "
                f"mean={[round(m, 4) for m in self.mean]}, std={[round(s, 4) for s in self.std]})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocess) and self.to_dict() == other.to_dict()
