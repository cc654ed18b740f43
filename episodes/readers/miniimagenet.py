"""miniImageNet (Vinyals et al. 2016; Ravi and Larochelle's 64/16/20 class split) in its four
common on-disk layouts, auto-detected:

``csv``        Ravi and Larochelle: ``images/`` plus ``train.csv``, ``val.csv``, ``test.csv`` with
               header ``filename,label`` (label is a wnid such as ``n01532829``);
``learn2learn`` ``mini-imagenet-cache-{train,validation,test}.pkl``: a dict with ``image_data``
               (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (wnid -> list of row indices);
``metaoptnet`` MetaOptNet / FEAT: ``miniImageNet_category_split_{train_phase_train,val,test}.pickle``,
               a Python 2 dict with ``data`` (uint8 ``[N, 84, 84, 3]``), ``labels`` and
               ``catname2label`` (read with ``encoding="latin1"``);
``folders``    a class-folder tree ``<root>/{train,val,test}/<wnid>/*.jpg``.

Splits train/val/test map to ``base``/``val``/``novel``. Pickles are untrusted and go through
:mod:`episodes.safe_pickle`. A root that differs from the standard 64/16/20 classes x 600 images
is read anyway; :func:`standard_report` and a warning say how far it is.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..cache import cached, file_signature
from ..decode import decode_array
from ..errors import DatasetError
from ..imageset import ImageSet
from ..safe_pickle import load_pickle
from .folders import read_image_folder, scan_image_folder

SPLITS = ("base", "val", "novel")
ALIASES = {"train": "base", "base": "base", "val": "val", "validation": "val", "novel": "novel",
           "test": "novel"}
STANDARD = {"base": 64, "val": 16, "novel": 20}
IMAGES_PER_CLASS = 600
NATIVE_SIZE = 84

LAYOUTS = {
    "csv": {"base": "train.csv", "val": "val.csv", "novel": "test.csv"},
    "learn2learn": {s: f"mini-imagenet-cache-{f}.pkl" for s, f in
                    (("base", "train"), ("val", "validation"), ("novel", "test"))},
    "metaoptnet": {s: f"miniImageNet_category_split_{f}.pickle" for s, f in
                   (("base", "train_phase_train"), ("val", "val"), ("novel", "test"))},
    "folders": {"base": "train", "val": "val", "novel": "test"},
}


def canonical_split(split: str) -> str:
    """``train``/``val``/``test`` (and ``validation``) as ``base``/``val``/``novel``."""
    try:
        return ALIASES[split.lower()]
    except (KeyError, AttributeError):
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} "
                           "(or train, val, test)") from None


def detect_layout(root: str | os.PathLike) -> str:
    """Which of the four layouts ``root`` holds; ``DatasetError`` listing them when none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError("no such miniImageNet folder", root)
    if (root / "images").is_dir() and any((root / f).is_file() for f in LAYOUTS["csv"].values()):
        return "csv"
    for layout in ("learn2learn", "metaoptnet"):
        if any((root / f).is_file() for f in LAYOUTS[layout].values()):
            return layout
    if any((root / d).is_dir() for d in ("train", "val", "test")):
        return "folders"
    raise DatasetError(
        "unknown miniImageNet layout: expected images/ + train.csv,val.csv,test.csv (Ravi), "
        "mini-imagenet-cache-*.pkl (learn2learn), miniImageNet_category_split_*.pickle (MetaOptNet) "
        "or train/,val/,test/ class folders", root)


def read_miniimagenet(root: str | os.PathLike, split: str | None = None, *,
                      image_size: int | tuple[int, int] | None = NATIVE_SIZE, channels: int | None = 3,
                      cache_dir: str | os.PathLike | None = None, cache: bool = True) -> ImageSet:
    """One split (``base``/``val``/``novel`` or train/val/test) or, with ``split=None``, all splits.

    Images are RGB 84x84 unless asked otherwise. Warns (never refuses) when the split is not the
    standard number of classes and images.
    """
    root = Path(root).expanduser()
    layout = detect_layout(root)
    if split is not None:
        s = canonical_split(split)
        data = _read_split(root, layout, s, image_size, channels, cache_dir, cache)
        _warn_if_not_standard(root, s, data.class_counts())
        return data
    splits = [s for s in SPLITS if (root / LAYOUTS[layout][s]).exists()]

    def build(use_cache: bool) -> ImageSet:
        parts = []
        for s in splits:
            part = _read_split(root, layout, s, image_size, channels, cache_dir, use_cache)
            parts.append(ImageSet(part.images, part.labels, part.class_names, part.ids,
                                  [s] * part.num_classes, part.name))
        return ImageSet.concat(parts, name=f"miniimagenet:{root.name}")

    if layout in ("csv", "folders"):  # decoded layouts: one cache entry, no concatenation on reload
        signature = [str(root.resolve()), layout, [_signature(root, layout, s) for s in splits]]
        data = cached("miniimagenet-all", signature, {"size": image_size, "channels": channels},
                      lambda: build(False), cache_dir=cache_dir, enabled=cache)
    else:
        data = build(cache)
    groups = np.asarray(data.groups)
    for s in splits:
        _warn_if_not_standard(root, s, data.class_counts()[groups == s])
    return data


def _warn_if_not_standard(root: Path, split: str, counts: np.ndarray) -> None:
    problems = compare_to_standard(split, counts)
    if problems:
        warnings.warn(f"{root}: not the standard miniImageNet {split} split: {'; '.join(problems)}",
                      stacklevel=3)


def _signature(root: Path, layout: str, split: str) -> list:
    """What a decoded split depends on: its listing files and every image's size and mtime."""
    target = root / LAYOUTS[layout][split]
    if layout == "folders":
        return file_signature([f for _, _, files in scan_image_folder(target) for f in files], root)
    files, _ = _csv_rows(root, target)
    return [file_signature([target], root), file_signature(files, root)]


def compare_to_standard(split: str, class_counts: np.ndarray) -> list[str]:
    """How a split differs from the standard (64/16/20 classes of 600 images); empty if it does not."""
    problems = []
    want = STANDARD[split]
    if len(class_counts) != want:
        problems.append(f"{len(class_counts)} classes instead of {want}")
    off = int((np.asarray(class_counts) != IMAGES_PER_CLASS).sum())
    if off:
        problems.append(f"{off} classes without {IMAGES_PER_CLASS} images "
                        f"({int(np.min(class_counts))}-{int(np.max(class_counts))})")
    return problems


def standard_report(root: str | os.PathLike, **kwargs) -> str:
    """A few lines saying which layout ``root`` holds and how far each split is from the standard.

    Returns the text and issues one warning when anything deviates; never refuses the data.
    """
    root = Path(root).expanduser()
    layout = detect_layout(root)
    lines, deviations = [f"{root}: miniImageNet, {layout} layout"], []
    for s in SPLITS:
        if not (root / LAYOUTS[layout][s]).exists():
            lines.append(f"  {s:5s}: missing ({LAYOUTS[layout][s]})")
            deviations.append(f"{s} missing")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts = read_miniimagenet(root, s, **kwargs).class_counts()
        problems = compare_to_standard(s, counts)
        status = "standard" if not problems else "; ".join(problems)
        lines.append(f"  {s:5s}: {len(counts)} classes, {int(counts.sum())} images "
                     f"(standard {STANDARD[s]} x {IMAGES_PER_CLASS}): {status}")
        deviations += [f"{s}: {p}" for p in problems]
    if deviations:
        warnings.warn(f"{root}: differs from the standard miniImageNet: {'; '.join(deviations)}",
                      stacklevel=2)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- per layout
def _read_split(root: Path, layout: str, split: str, image_size, channels, cache_dir, cache) -> ImageSet:
    target = root / LAYOUTS[layout][split]
    if not target.exists():
        raise DatasetError(f"missing the {split} split of a {layout} miniImageNet root", target)
    name = f"miniimagenet:{root.name}/{split}"
    if layout == "folders":
        data = read_image_folder(target, image_size=image_size, channels=channels, strict=True,
                                 cache_dir=cache_dir, cache=cache, name=name)
        return ImageSet(data.images, data.labels, data.class_names,
                        [f"{target.name}/{i}" for i in data.ids], None, name)
    if layout == "csv":
        return _read_csv(root, target, image_size, channels, cache_dir, cache, name)
    data = _read_l2l(target, name) if layout == "learn2learn" else _read_metaoptnet(target, name)
    data = data.resized(image_size)
    return data.with_channels(channels) if channels else data


def _csv_rows(root: Path, csv_path: Path) -> tuple[list[Path], list[str]]:
    """Image files and wnids of a Ravi CSV; every named file must exist."""
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"unreadable CSV ({exc})", csv_path) from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
        raise DatasetError("CSV must start with the header 'filename,label'", csv_path)
    files, wnids = [], []
    for line, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) < 2:
            raise DatasetError(f"line {line} should read 'filename,label', got {','.join(row)!r}", csv_path)
        image = root / "images" / row[0].strip()
        if not image.is_file():
            raise DatasetError(f"line {line} names images/{row[0].strip()}, which does not exist", csv_path)
        files.append(image)
        wnids.append(row[1].strip())
    if not files:
        raise DatasetError("CSV lists no images", csv_path)
    return files, wnids


def _read_csv(root: Path, csv_path: Path, image_size, channels, cache_dir, cache, name: str) -> ImageSet:
    files, wnids = _csv_rows(root, csv_path)
    class_names = sorted(set(wnids))
    index = {w: i for i, w in enumerate(class_names)}
    labels = [index[w] for w in wnids]

    def build() -> ImageSet:
        size = image_size or NATIVE_SIZE
        arrays = np.stack([decode_array(f, channels=channels or 3, size=size) for f in files])
        return ImageSet(torch.from_numpy(arrays), torch.tensor(labels), class_names,
                        [f"images/{f.name}" for f in files], None, name)

    signature = [str(root.resolve()), file_signature([csv_path], root), file_signature(files, root)]
    return cached("miniimagenet-csv", signature, {"size": image_size, "channels": channels}, build,
                  cache_dir=cache_dir, enabled=cache)


def _images_nhwc(array: object, path: Path, key: str) -> torch.Tensor:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3:
        desc = (f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__)
        raise DatasetError(f"{key!r} must be a uint8 [N, H, W, 3] array, got {desc}", path)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def _dict_pickle(path: Path, keys: tuple[str, ...]) -> dict:
    obj = load_pickle(path)
    if isinstance(obj, dict):
        obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if not isinstance(obj, dict) or not all(k in obj for k in keys):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DatasetError(f"expected a dict with keys {list(keys)}, found {found}", path)
    return obj


def _integers(value: object, what: str, path: Path) -> np.ndarray:
    """``value`` (a list or array of integers) as int64 ``[N]``; anything else (floats, strings,
    booleans, nested or ragged lists) is a ``DatasetError`` naming the file, never a traceback."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        arr = np.asarray([], dtype=object)
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        found = type(value).__name__ if arr.dtype == object else f"{arr.dtype} values"
        raise DatasetError(f"{what} must be integers, got {found}", path)
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise DatasetError(f"{what} holds integers too large to be row indices", path)
    return arr.astype(np.int64).reshape(-1)


def _name(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _read_l2l(path: Path, name: str) -> ImageSet:
    obj = _dict_pickle(path, ("image_data", "class_dict"))
    images = _images_nhwc(obj["image_data"], path, "image_data")
    n = images.shape[0]
    if not isinstance(obj["class_dict"], dict) or not obj["class_dict"]:
        raise DatasetError("'class_dict' must be a non-empty dict wnid -> row indices", path)
    labels = np.full(n, -1, dtype=np.int64)
    class_names = sorted(_name(k) for k in obj["class_dict"])
    index = {c: i for i, c in enumerate(class_names)}
    for wnid, rows in obj["class_dict"].items():
        rows = _integers(rows, f"'class_dict' rows of class {_name(wnid)}", path)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise DatasetError(f"class {_name(wnid)} names rows outside 0..{n - 1}", path)
        if (labels[rows] >= 0).any():
            raise DatasetError(f"class {_name(wnid)} shares rows with another class", path)
        labels[rows] = index[_name(wnid)]
    keep = np.flatnonzero(labels >= 0)
    if keep.size < n:
        images = images[torch.from_numpy(keep)]
    return ImageSet(images, torch.from_numpy(labels[keep]), class_names,
                    [f"{path.name}#{r}" for r in keep.tolist()], None, name)


def _read_metaoptnet(path: Path, name: str) -> ImageSet:
    obj = _dict_pickle(path, ("data", "labels", "catname2label"))
    images = _images_nhwc(obj["data"], path, "data")
    raw = _integers(obj["labels"], "'labels'", path)
    if raw.shape[0] != images.shape[0]:
        raise DatasetError(f"{images.shape[0]} images but {raw.shape[0]} labels", path)
    if not isinstance(obj["catname2label"], dict):
        raise DatasetError("'catname2label' must be a dict wnid -> label", path)
    values = list(obj["catname2label"].values())
    by_label = dict(zip(_integers(values, "'catname2label' values", path).tolist(),
                        map(_name, obj["catname2label"])))
    unknown = sorted(set(raw.tolist()) - set(by_label))
    if unknown:
        raise DatasetError(f"labels {unknown[:5]} are not in catname2label", path)
    used = sorted(set(raw.tolist()))
    class_names = [by_label[v] for v in used]
    remap = {v: i for i, v in enumerate(used)}
    labels = torch.tensor([remap[v] for v in raw.tolist()], dtype=torch.int64)
    return ImageSet(images, labels, class_names, [f"{path.name}#{r}" for r in range(len(raw))], None, name)
