"""`Preprocess`: uint8 images ``[B, C, H, W]`` to the normalised float input of an encoder.

The checkpoint stores it (``to_dict``), so evaluation and prediction feed the encoder exactly
what it was trained on: same size, same channel count, same framing, same mean and std.

Framing (``frame``, for drawings, where ink is high) crops every image to a square around its
ink's bounding box before the resize, so a character fills the same share of the input whatever
its size and place on the page: the network's pixels go to the strokes, and size and position
stop being a nuisance the encoder must learn to ignore. On the Omniglot recipe it adds 4 points
to the plain 20-way 1-shot figure (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fewshot.errors import FewShotError

__all__ = ["Preprocess", "check_frame", "frame_ink"]


def check_frame(frame) -> float:
    """A framing fill as a float in (0, 1], else a one-line error."""
    try:
        value = float(frame)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= 1:
        raise FewShotError(f"frame must be in (0, 1] (the share of the side the ink fills), got {frame!r}")
    return value


def frame_ink(x: torch.Tensor, fill: float, size: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Each image of a float batch ``[B, C, H, W]`` in [0, 1] (ink high) cropped to the square
    centred on its ink's bounding box, the box's longer side filling ``fill`` of the square's side,
    and resampled to ``size``; an image without ink is resized whole.

    Ink is where the channel mean exceeds ``threshold``. The crop is one batched
    :func:`torchvision.ops.roi_align` with adaptive sampling (each output pixel averages the input
    pixels it covers: an antialiased resize); the square may reach past the border, where the
    image is blank (zero).
    """
    b, _, h, w = x.shape
    ink = x.mean(1) > threshold                                            # [B, H, W]
    rows, cols = ink.any(2), ink.any(1)
    ys = torch.arange(h, device=x.device, dtype=x.dtype)
    xs = torch.arange(w, device=x.device, dtype=x.dtype)
    inf = torch.tensor(float("inf"), device=x.device, dtype=x.dtype)
    top, bottom = torch.where(rows, ys, inf).amin(1), torch.where(rows, ys, -inf).amax(1) + 1
    left, right = torch.where(cols, xs, inf).amin(1), torch.where(cols, xs, -inf).amax(1) + 1
    side = torch.maximum(bottom - top, right - left) / fill
    cy, cx = (top + bottom) / 2, (left + right) / 2
    blank = ~rows.any(1)
    side = torch.where(blank, torch.tensor(float(max(h, w)), dtype=x.dtype, device=x.device), side)
    cy = torch.where(blank, torch.full_like(cy, h / 2), cy)
    cx = torch.where(blank, torch.full_like(cx, w / 2), cx)
    boxes = torch.stack([torch.arange(b, device=x.device, dtype=x.dtype),
                         cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
    from torchvision.ops import roi_align
    return roi_align(x, boxes, tuple(size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


class Preprocess:
    """Channel conversion, framing (optional), resize (antialiased), scaling to [0, 1] and
    normalisation.

    ``frame``: None (the image resized whole) or the share of the side the ink's bounding box
    fills after :func:`frame_ink` (drawings only; the ``omniglot`` recipe uses 0.8).
    """

    def __init__(self, image_size: int | Sequence[int], channels: int,
                 mean: Sequence[float] | float = 0.5, std: Sequence[float] | float = 0.5,
                 frame: float | None = None):
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
        frame = None if frame is None else check_frame(frame)
        self.image_size: tuple[int, int] = hw  # type: ignore[assignment]
        self.channels = channels
        self.mean, self.std = mean, std
        self.frame = frame

    @classmethod
    def fit(cls, images: torch.Tensor, image_size: int | Sequence[int] | None = None,
            channels: int | None = None, max_images: int = 10000, frame: float | None = None) -> Preprocess:
        """Mean and std per channel measured on (up to ``max_images`` of) a uint8 training set,
        already framed when ``frame`` is given (:meth:`prepare`): the statistics of what the
        encoder sees."""
        channels = channels or int(images.shape[1])
        size = image_size or tuple(images.shape[-2:])
        probe = cls(size, channels)
        step = max(1, images.shape[0] // max_images)
        x = probe.to_unit(images[::step])
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return cls(size, channels, mean.tolist(), std.tolist(), frame)

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
        if self.frame is not None:
            x = frame_ink(x, self.frame, self.image_size).clamp_(0, 1)
        elif tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True,
                              align_corners=False).clamp_(0, 1)
        return x

    def prepare(self, images: torch.Tensor, batch_size: int = 1024, *, uint8: bool = True) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` -> uint8 at ``image_size`` and ``channels``, framed: a set converted
        once, so its later passes skip the framing (feed it to :meth:`prepared`). ``uint8=False``
        keeps the floats in [0, 1] of :meth:`to_unit`, to the bit what framing on the fly gives."""
        out = [self.to_unit(images[s:s + batch_size]) for s in range(0, images.shape[0], batch_size)]
        if uint8:
            out = [(x * 255).round_().to(torch.uint8) for x in out]
        return torch.cat(out) if out else images.new_empty((0, self.channels, *self.image_size),
                                                           dtype=torch.uint8 if uint8 else torch.float32)

    def prepared(self) -> Preprocess:
        """The same preprocessing for images :meth:`prepare` already framed and sized (framing is
        not idempotent to the pixel: a framed image must not be framed again)."""
        return Preprocess(self.image_size, self.channels, self.mean, self.std)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel, for a float batch in [0, 1]."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.to_unit(images))

    def to_dict(self) -> dict:
        out = {"image_size": list(self.image_size), "channels": self.channels,
               "mean": list(self.mean), "std": list(self.std)}
        if self.frame is not None:  # absent when off: records of unframed encoders stay as they were
            out["frame"] = self.frame
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        try:
            return cls(tuple(d["image_size"]), int(d["channels"]), d["mean"], d["std"], d.get("frame"))
        except (KeyError, TypeError) as exc:
            raise FewShotError(f"bad preprocess record {d!r} ({exc})") from None

    def __repr__(self) -> str:
        return (f"Preprocess(image_size={self.image_size}, channels={self.channels}, "
                f"mean={[round(m, 4) for m in self.mean]}, std={[round(s, 4) for s in self.std]}"
                + (f", frame={self.frame:g})" if self.frame is not None else ")"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocess) and self.to_dict() == other.to_dict()
