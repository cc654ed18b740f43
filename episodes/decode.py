"""Image decoding with PIL into uint8 ``[C, H, W]`` tensors.

One place decides how files become pixels: modes are normalised to grey (``L``) or RGB,
transparency is composited on white, sizes are normalised with an antialiased resize, and every
failure (missing file, not an image, truncated data) becomes a ``DatasetError`` naming the file.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# Bounds on hostile input (a few bytes can ask for gigabytes): an image file or zip member over
# MAX_FILE_BYTES, or an image over MAX_PIXELS (PIL's own decompression-bomb threshold, 89 MP, where
# PIL only warns), is refused with a one-line error before its pixels are decoded.
MAX_FILE_BYTES = 64 * 2**20
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _size_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise DatasetError(f"image size must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


def native_channels(image: Image.Image) -> int:
    """1 for grey-level modes (also palette images whose palette is grey), else 3."""
    if image.mode in _GREY_MODES:
        return 1
    if image.mode == "P":
        palette = image.getpalette() or []
        rgb = np.asarray(palette[: (len(palette) // 3) * 3]).reshape(-1, 3)
        return 1 if rgb.size and (rgb == rgb[:, :1]).all() else 3
    return 3


def to_array(image: Image.Image, *, channels: int | None = None,
             size: int | Sequence[int] | None = None) -> np.ndarray:
    """A decoded PIL image as uint8 ``[C, H, W]`` with ``channels`` (1 or 3) and ``(h, w)`` size."""
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels!r}")
    c = native_channels(image) if channels is None else channels
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    image = image.convert("L" if c == 1 else "RGB")
    hw = _size_hw(size)
    if hw is not None and (image.height, image.width) != hw:
        image = image.resize((hw[1], hw[0]), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.array(image, dtype=np.uint8)  # a writable copy
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_array(source: str | os.PathLike | bytes, *, channels: int | None = None,
                 size: int | Sequence[int] | None = None,
                 name: str | os.PathLike | None = None) -> np.ndarray:
    """Like :func:`decode_image` but returns a numpy array (the readers stack many of them)."""
    label = name if name is not None else (None if isinstance(source, bytes) else source)
    try:
        nbytes = len(source) if isinstance(source, bytes) else os.stat(source).st_size
        if nbytes > MAX_FILE_BYTES:
            raise DatasetError(f"image file of {nbytes / 2**20:.0f} MiB is over the "
                               f"{MAX_FILE_BYTES // 2**20} MiB limit", label)
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with warnings.catch_warnings():  # PIL's bomb warning becomes the one-line error below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp)
        with image:
            image.load()
            return to_array(image, channels=channels, size=size)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DatasetError(f"image is over the {MAX_PIXELS / 1e6:.0f} megapixel limit (a decompression "
                           "bomb?)", label) from None
    except FileNotFoundError:
        raise DatasetError("no such image file", label) from None
    except IsADirectoryError:
        raise DatasetError("is a directory, not an image file", label) from None
    except UnidentifiedImageError:
        raise DatasetError("not an image file (PIL cannot identify it)", label) from None
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"corrupt or truncated image ({exc})", label) from None


def read_zip_member(zf: zipfile.ZipFile, member: str, where: str | os.PathLike) -> bytes:
    """The bytes of one zip member, refusing (``DatasetError`` naming ``where``) a member that
    declares or inflates to more than ``MAX_FILE_BYTES`` (read in a bounded call, so a zip bomb
    never fills memory) and damaged data (bad deflate stream, CRC mismatch, truncation)."""
    try:
        info = zf.getinfo(member)
        if info.file_size > MAX_FILE_BYTES:
            raise DatasetError(f"zip member of {info.file_size / 2**20:.0f} MiB is over the "
                               f"{MAX_FILE_BYTES // 2**20} MiB limit", where)
        with zf.open(info) as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except DatasetError:
        raise
    except (OSError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, ValueError) as exc:
        raise DatasetError(f"damaged zip member ({type(exc).__name__}: {exc})", where) from None
    if len(data) > MAX_FILE_BYTES:
        raise DatasetError(f"zip member inflates to more than the {MAX_FILE_BYTES // 2**20} MiB limit "
                           f"(declares {info.file_size} bytes)", where)
    return data


def decode_image(source: str | os.PathLike | bytes, *, channels: int | None = None,
                 size: int | Sequence[int] | None = None,
                 name: str | os.PathLike | None = None) -> torch.Tensor:
    """Decode one image file (or its bytes) to a uint8 ``[C, H, W]`` tensor.

    ``channels`` None keeps grey images grey (C=1) and makes everything else RGB (C=3);
    ``size`` (int or ``(h, w)``) resizes with an antialiased bilinear filter. ``name`` labels
    errors when decoding bytes (e.g. a zip member). Raises ``DatasetError`` naming the file.
    """
    return torch.from_numpy(decode_array(source, channels=channels, size=size, name=name))


def is_image_file(name: str | os.PathLike) -> bool:
    """True for the extensions the folder readers pick up (case-insensitive)."""
    return os.fspath(name).lower().endswith(IMAGE_EXTENSIONS)


def stack_common(arrays: Sequence[np.ndarray], *, channels: int | None = None,
                 size: int | Sequence[int] | None = None) -> np.ndarray:
    """Stack ``[C, H, W]`` arrays of mixed modes and sizes into ``[N, C, H, W]``.

    Channels default to 3 if any image is colour, else 1; size defaults to the most common
    ``(h, w)``. Images that differ are converted (grey repeated, RGB to luminance) and resized.
    """
    if not arrays:
        raise DatasetError("no images to stack")
    c = channels or (3 if any(a.shape[0] == 3 for a in arrays) else 1)
    hw = _size_hw(size)
    if hw is None:
        shapes, counts = np.unique(np.array([a.shape[1:] for a in arrays]), axis=0, return_counts=True)
        hw = tuple(int(v) for v in shapes[counts.argmax()])
    out = np.empty((len(arrays), c, *hw), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.shape[0] != c or a.shape[1:] != hw:
            mode = "L" if a.shape[0] == 1 else "RGB"
            image = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), mode)
            a = to_array(image, channels=c, size=hw)
        out[i] = a
    return out
