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

from fewshot.errors import FewShotError
from fewshot.options import from_options
from fewshot.registry import Registry

__all__ = ["Augment", "AUGMENT_MODES"]

# The geometric modes: (augment, batch, generator) -> the affine matrix entries of every image
# (a11, a12, a21, a22, tx, ty), each [B], mapping output to input coordinates.
AUGMENT_MODES = Registry("augmentation mode", call=False)


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
        erase: probability that an image has one random square of its pixels set to 0 (cutout,
            DeVries & Taylor 2017; for drawings, part of the strokes gone), side 20-40% of the
            image's (0 = off).
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
    erase: float = 0.0

    def __post_init__(self) -> None:
        AUGMENT_MODES.get(self.mode)
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.ratio = (float(self.ratio[0]), float(self.ratio[1]))
        if not 0 < self.scale[0] <= self.scale[1]:
            raise FewShotError(f"augmentation scale must be 0 < min <= max, got {self.scale}")
        if not 0 <= self.erase <= 1:
            raise FewShotError(f"augmentation erase is a probability in [0, 1], got {self.erase}")

    @classmethod
    def from_dict(cls, d: dict | None) -> Augment:
        return from_options(cls, dict(d or {}), "augmentation")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        if not d["erase"]:   # off: the record as before erase existed (configs, TTA records, caches)
            del d["erase"]
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
        if self.erase > 0:
            x = self._erase(x, generator)
        return x

    def _erase(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        side = self._rand(b, x, g, 0.2, 0.4).view(b, 1, 1)
        cy, cx = self._rand(b, x, g).view(b, 1, 1), self._rand(b, x, g).view(b, 1, 1)
        on = (self._rand(b, x, g) < self.erase).view(b, 1, 1)
        ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5).div(h).view(1, h, 1)
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5).div(w).view(1, 1, w)
        hole = ((ys - cy).abs() < side / 2) & ((xs - cx).abs() < side / 2) & on     # [B, H, W]
        return x.masked_fill(hole.unsqueeze(1), 0.0)

    def _rand(self, n: int, x: torch.Tensor, g: torch.Generator | None, lo: float = 0.0,
              hi: float = 1.0) -> torch.Tensor:
        r = torch.rand(n, generator=g, device=x.device, dtype=torch.float32)
        return lo + (hi - lo) * r

    def _geometric(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        one = torch.ones(b, device=x.device)
        a11, a12, a21, a22, tx, ty = AUGMENT_MODES.create(self.mode)(self, x, g)
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


Matrix = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _affine(aug: Augment, x: torch.Tensor, g: torch.Generator | None) -> Matrix:
    b = x.shape[0]
    angle = aug._rand(b, x, g, -aug.degrees, aug.degrees) * (math.pi / 180)
    shear = aug._rand(b, x, g, -aug.shear, aug.shear) * (math.pi / 180)
    zoom = aug._rand(b, x, g, *aug.scale)
    tx = aug._rand(b, x, g, -aug.translate, aug.translate) * 2
    ty = aug._rand(b, x, g, -aug.translate, aug.translate) * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # grid = A @ out_coords: the inverse of rotate(angle) . shear . zoom.
    a11, a12 = cos / zoom, (-sin + cos * torch.tan(shear)) / zoom
    a21, a22 = sin / zoom, (cos + sin * torch.tan(shear)) / zoom
    return a11, a12, a21, a22, tx, ty


def _crop(aug: Augment, x: torch.Tensor, g: torch.Generator | None) -> Matrix:
    b = x.shape[0]
    zero = torch.zeros(b, device=x.device)
    area = aug._rand(b, x, g, *aug.scale).clamp(max=1.0)
    log_r = aug._rand(b, x, g, math.log(aug.ratio[0]), math.log(aug.ratio[1]))
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=1.0)
    ch = torch.sqrt(area / r).clamp(max=1.0)
    tx = aug._rand(b, x, g, -1, 1) * (1 - cw)
    ty = aug._rand(b, x, g, -1, 1) * (1 - ch)
    return cw, zero, zero, ch, tx, ty


def _identity(aug: Augment, x: torch.Tensor, g: torch.Generator | None) -> Matrix:
    one, zero = torch.ones(x.shape[0], device=x.device), torch.zeros(x.shape[0], device=x.device)
    return one, zero, zero, one, zero, zero


AUGMENT_MODES.register("affine", _affine, doc="random rotation, shear, scale and translation.")
AUGMENT_MODES.register("crop", _crop, doc="random resized crop (scale = area fraction, ratio = aspect).")
AUGMENT_MODES.register("none", _identity, doc="no geometric change (flip and elastic still apply).")
