"""Image files named one by one: a support folder listed into paths and labels, files and folders
listed with the class their folder names, and a list of files decoded at one size, skipping (or
refusing) the unreadable ones.

What adaptation and prediction read (``fewshot adapt``, ``fewshot predict``); datasets are read by
:mod:`episodes.readers` into an :class:`~episodes.imageset.ImageSet` instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .decode import IMAGE_EXTENSIONS, decode_array, is_image_file
from .errors import DatasetError

__all__ = ["list_class_folders", "list_image_files", "read_image_files"]


def list_class_folders(root: str | os.PathLike, *, strict: bool = False
                       ) -> tuple[list[str], list[str], list[int]]:
    """``(paths, class_names, labels)`` of ``root/<class>/**/*.{png,jpg,jpeg,bmp,webp}``.

    Files without an image extension are skipped with a warning naming them (``strict``: error);
    hidden files are ignored. Raises ``DatasetError`` for a missing folder or a class folder
    without images.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError("no such support folder", root)
    if not root.is_dir():
        raise DatasetError("support must be a folder of class folders", root)
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders (expected <class>/*{{{','.join(IMAGE_EXTENSIONS)}}})", root)
    loose = sorted(f.name for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    if loose:
        warnings.warn(f"{root}: ignored {len(loose)} file(s) outside class folders, e.g. {loose[0]}",
                      stacklevel=2)
    paths, labels, names = [], [], []
    for d in classes:
        files = sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
        images = [f for f in files if is_image_file(f)]
        for f in files:
            if not is_image_file(f):
                if strict:
                    raise DatasetError(f"not an image file (expected {', '.join(IMAGE_EXTENSIONS)})", f)
                warnings.warn(f"skipped {f}: not an image file", stacklevel=2)
        if not images:
            raise DatasetError("class folder holds no images", d)
        names.append(d.name)
        paths += [os.fspath(f) for f in images]
        labels += [len(names) - 1] * len(images)
    return paths, names, labels


def list_image_files(paths: Sequence[str | os.PathLike], *, strict: bool = False
                     ) -> tuple[list[str], list[str | None]]:
    """Image paths and their true class: files as given (class None), folders searched recursively,
    each image's class being its first sub-folder under the given folder (None for an image
    directly in it). Non-image files in folders are skipped with a warning (``strict``: error)."""
    files: list[str] = []
    truth: list[str | None] = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            files.append(os.fspath(path))
            truth.append(None)
            continue
        for f in sorted(x for x in path.rglob("*") if x.is_file() and not x.name.startswith(".")):
            if not is_image_file(f):
                if strict:
                    raise DatasetError("not an image file", f)
                warnings.warn(f"skipped {f}: not an image file", stacklevel=2)
                continue
            rel = f.relative_to(path).parts
            files.append(os.fspath(f))
            truth.append(rel[0] if len(rel) > 1 else None)
    return files, truth


def read_image_files(paths: Sequence[str | os.PathLike], *, channels: int, size: tuple[int, int],
                     strict: bool = False, wrap: Callable[[Sequence], Iterable] | None = None
                     ) -> tuple[torch.Tensor, list[str], list[str]]:
    """Decode image files with ``channels`` at ``size`` (height, width).

    Returns ``(images uint8 [N,C,H,W], kept paths, skipped "path: cause")``. An unreadable file is
    skipped with a warning naming it, or, with ``strict``, raises ``DatasetError``. ``wrap``: a
    progress wrapper around the path list (e.g. a tqdm-like bar).
    """
    arrays, kept, skipped = [], [], []
    for p in (wrap(paths) if wrap is not None else paths):
        try:
            arrays.append(decode_array(p, channels=channels, size=size))
        except DatasetError as exc:
            if strict:
                raise
            warnings.warn(f"skipped {exc}", stacklevel=2)
            skipped.append(str(exc))
            continue
        kept.append(os.fspath(p))
    if not arrays:
        return torch.empty(0, channels, *size, dtype=torch.uint8), kept, skipped
    return torch.from_numpy(np.stack(arrays)), kept, skipped
