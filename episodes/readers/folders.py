"""User image folders: ``<root>/<class>/*.{png,jpg,jpeg,bmp,webp}`` or ``<root>/<group>/<class>/*``.

A top-level folder that holds images is a class; one that holds only folders is a group whose
sub-folders are classes (class name ``"<group>/<class>"``). Mixed modes become grey (all grey
images) or RGB; mixed sizes are resized to the most common size unless ``image_size`` is given.
Files with other extensions are ignored; image files that cannot be decoded are skipped with a
warning naming them, or raise ``DatasetError`` with ``strict=True``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..cache import cached, file_signature
from ..decode import decode_array, is_image_file, stack_common
from ..errors import DatasetError
from ..imageset import ImageSet


def _entries(path: Path) -> list[os.DirEntry]:
    """The visible entries of ``path``, sorted; an entry whose type cannot be read (a symlink
    loop, a dangling mount) is a ``DatasetError`` naming it rather than an OSError traceback."""
    try:
        with os.scandir(path) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"cannot list folder ({exc.strerror})", path) from None
    for e in entries:
        try:
            e.is_dir()
            e.is_file()
        except OSError as exc:
            raise DatasetError(f"cannot read ({exc.strerror})", e.path) from None
    return entries


def scan_image_folder(root: str | os.PathLike) -> list[tuple[str, str | None, list[str]]]:
    """``(class name, group or None, image file paths)`` per class folder, sorted by name."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError("no such folder", root)
    if not root.is_dir():
        raise DatasetError("not a folder (expected <root>/<class>/<images>)", root)
    classes: list[tuple[str, str | None, list[str]]] = []
    for top in _entries(root):
        if not top.is_dir():
            continue
        inner = _entries(Path(top.path))
        images = [e.path for e in inner if e.is_file() and is_image_file(e.name)]
        subdirs = [e for e in inner if e.is_dir()]
        if images or not subdirs:
            if not images:
                raise DatasetError("empty class folder (no *.png, *.jpg, *.jpeg, *.bmp or *.webp files)",
                                   top.path)
            classes.append((top.name, None, images))
            continue
        for sub in subdirs:
            files = [e.path for e in _entries(Path(sub.path)) if e.is_file() and is_image_file(e.name)]
            if not files:
                raise DatasetError("empty class folder (no *.png, *.jpg, *.jpeg, *.bmp or *.webp files)",
                                   sub.path)
            classes.append((f"{top.name}/{sub.name}", top.name, files))
    if not classes:
        raise DatasetError("no class folders found (expected <root>/<class>/<images>)", root)
    return classes


def read_image_folder(root: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None,
                      channels: int | None = None, strict: bool = False,
                      cache_dir: str | os.PathLike | None = None, cache: bool = True,
                      name: str | None = None) -> ImageSet:
    """Every image under ``root`` as an ``ImageSet``; groups when the tree has a group level."""
    root = Path(root).expanduser()
    classes = scan_image_folder(root)
    files = [f for _, _, fs in classes for f in fs]
    options = {"size": image_size, "channels": channels, "strict": strict}
    signature = file_signature(files, root)
    return cached("folder", [str(root.resolve()), signature], options,
                  lambda: _decode(root, classes, image_size, channels, strict, name),
                  cache_dir=cache_dir, enabled=cache)


def _decode(root: Path, classes, image_size, channels, strict: bool, name: str | None) -> ImageSet:
    arrays, labels, ids, class_names, groups = [], [], [], [], []
    has_groups = any(g is not None for _, g, _ in classes)
    prefix = os.path.join(str(root), "")
    for cname, group, files in classes:
        label = len(class_names)
        kept = 0
        for f in files:
            try:
                arrays.append(decode_array(f, channels=channels, size=image_size))
            except DatasetError as exc:
                if strict:
                    raise
                warnings.warn(f"skipped unreadable image {exc}", stacklevel=3)
                continue
            labels.append(label)
            ids.append(f[len(prefix):].replace(os.sep, "/"))
            kept += 1
        if not kept:
            raise DatasetError("no readable images in class folder", root / cname)
        class_names.append(cname)
        groups.append(group if group is not None else "")
    images = stack_common(arrays, channels=channels, size=image_size)
    return ImageSet(torch.from_numpy(images), torch.tensor(labels), class_names, ids,
                    groups if has_groups else None, name=name or f"folder:{root.name}")
