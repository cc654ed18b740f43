"""Batched augmentation as tensor ops on the training device.

Images come as a float batch ``[B, C, H, W]`` in ``[0, 1]`` (uint8 gathered from the in-memory
``ImageSet`` and scaled); one ``affine_grid`` + ``grid_sample`` applies a per-image random affine
(rotation, shear, scale, translation) or random resized crop, an optional horizontal flip and an
optional smooth elastic displacement in a single resampling pass; colour jitter acts on RGB
batches. Every random number comes from the ``torch.Generator`` passed in, so a seed fixes the
augmentation exactly. No PIL, no per-image Python loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from fewshot.errors import FewShotError, from_options

__all__ = ["Augment"]


@dataclass
class Augment:
    """Random geometric and photometric augmentation of a whole batch at once.

    Attributes:
        mode: ``"affine"`` (rotation/shear/scale/translate), ``"crop"`` (random resized crop as in
            ImageNet training) or ``"none"``.
        degrees: maximum absolute rotation (affine).
        translate: maximum shift as a fraction of the side (affine).
        scale: (min, max) zoom factor (affine) or (min, max) area fraction (crop).
        shear: maximum absolute shear in degrees (affine).
        ratio: aspect-ratio range of a random resized crop.
        flip: random horizontal flips (natural images; never for characters).
        elastic: strength of a smooth random displacement field (fraction of the side; 0 = off).
        brightness, contrast, saturation: colour-jitter strengths (RGB only; 0 = off).
    """

    mode: str = "affine"
    degrees: float = 10.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 0.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    elastic: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("affine", "crop", "none"):
            raise FewShotError(f"augmentation mode must be affine, crop or none, got {self.mode!r}")
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.ratio = (float(self.ratio[0]), float(self.ratio[1]))
        if not 0 < self.scale[0] <= self.scale[1]:
            raise FewShotError(f"augmentation scale must be 0 < min <= max, got {self.scale}")

    @classmethod
    def from_dict(cls, d: dict | None) -> Augment:
        return from_options(cls, dict(d or {}), "augmentation options")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        return d

    @property
    def geometric(self) -> bool:
        return self.mode != "none" or self.flip or self.elastic > 0

    # ---------------------------------------------------------------- apply
    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a float batch ``[B, C, H, W]`` in ``[0, 1]``; returns the same shape."""
        if self.geometric:
            x = self._geometric(x, generator)
        if x.shape[1] == 3 and (self.brightness or self.contrast or self.saturation):
            x = self._jitter(x, generator)
        return x

    def _rand(self, n: int, x: torch.Tensor, g: torch.Generator | None, lo: float = 0.0,
              hi: float = 1.0) -> torch.Tensor:
        r = torch.rand(n, generator=g, device=x.device, dtype=torch.float32)
        return lo + (hi - lo) * r

    def _geometric(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        one, zero = torch.ones(b, device=x.device), torch.zeros(b, device=x.device)
        if self.mode == "affine":
            angle = self._rand(b, x, g, -self.degrees, self.degrees) * (math.pi / 180)
            shear = self._rand(b, x, g, -self.shear, self.shear) * (math.pi / 180)
            zoom = self._rand(b, x, g, *self.scale)
            tx = self._rand(b, x, g, -self.translate, self.translate) * 2
            ty = self._rand(b, x, g, -self.translate, self.translate) * 2
            cos, sin = torch.cos(angle), torch.sin(angle)
            # grid = A @ out_coords: the inverse of rotate(angle) . shear . zoom.
            a11, a12 = cos / zoom, (-sin + cos * torch.tan(shear)) / zoom
            a21, a22 = sin / zoom, (cos + sin * torch.tan(shear)) / zoom
        elif self.mode == "crop":
            area = self._rand(b, x, g, *self.scale).clamp(max=1.0)
            log_r = self._rand(b, x, g, math.log(self.ratio[0]), math.log(self.ratio[1]))
            r = torch.exp(log_r)
            cw = torch.sqrt(area * r).clamp(max=1.0)
            ch = torch.sqrt(area / r).clamp(max=1.0)
            tx = self._rand(b, x, g, -1, 1) * (1 - cw)
            ty = self._rand(b, x, g, -1, 1) * (1 - ch)
            a11, a12, a21, a22 = cw, zero, zero, ch
        else:
            a11, a12, a21, a22, tx, ty = one, zero, zero, one, zero, zero
        if self.flip:
            sign = torch.where(self._rand(b, x, g) < 0.5, -one, one)
            a11, a21 = a11 * sign, a21 * sign
        theta = torch.stack([torch.stack([a11, a12, tx], 1), torch.stack([a21, a22, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), [b, x.shape[1], h, w], align_corners=False)
        if self.elastic > 0:
            noise = torch.rand(b, 2, 4, 4, generator=g, device=x.device, dtype=torch.float32) * 2 - 1
            field = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
            grid = grid + (2 * self.elastic) * field.permute(0, 2, 3, 1).to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _jitter(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        if self.brightness:
            x = x * self._rand(b, x, g, 1 - self.brightness, 1 + self.brightness).view(b, 1, 1, 1)
        if self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            c = self._rand(b, x, g, 1 - self.contrast, 1 + self.contrast).view(b, 1, 1, 1)
            x = (x - mean) * c + mean
        if self.saturation:
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            s = self._rand(b, x, g, 1 - self.saturation, 1 + self.saturation).view(b, 1, 1, 1)
            x = (x - grey) * s + grey
        return x.clamp(0, 1)
