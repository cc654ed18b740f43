"""Disk cache of decoded image sets.

Decoding 60,000 JPEGs takes minutes; reading one raw uint8 array back takes seconds. An entry is
keyed by a hash of the reader, its options and the source files' paths, sizes and modification
times, so any change of the source misses the cache. Entries are two files: ``<key>.npy`` (the
images, raw uint8, memory-mapped with ``allow_pickle=False``) and ``<key>.json`` (labels, names, ids,
groups). Both are written to temporary names, fsynced and renamed, the JSON last, so a crash never
leaves a half entry that looks whole; a damaged entry is rebuilt with a warning, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_open, atomic_write_text
from .errors import DatasetError
from .imageset import ImageSet

FORMAT = "fewshot-imageset-cache/1"


def default_cache_dir() -> Path:
    """``$FEWSHOT_CACHE_DIR`` if set, else ``~/.cache/fewshot``."""
    env = os.environ.get("FEWSHOT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fewshot"


def file_signature(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> list:
    """``[relative path, size, mtime_ns]`` per file: what the cache key hashes."""
    out = []
    prefix = None if root is None else os.path.join(os.fspath(root), "")
    for p in paths:
        p = os.fspath(p)
        try:
            st = os.stat(p)
        except OSError as exc:  # e.g. a symlink to itself: one line naming it, not a traceback
            raise DatasetError(f"cannot read ({exc.strerror or exc})", p) from None
        if prefix is None:
            rel = os.path.abspath(p)
        else:  # plain string slicing: relpath costs more than the stat for 60,000 files
            rel = p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, root)
        out.append([rel, st.st_size, st.st_mtime_ns])
    return out


def cache_key(kind: str, source: object, options: dict) -> str:
    """Hash of the reader name, a JSON-able description of the source and the reader options."""
    doc = json.dumps({"format": FORMAT, "kind": kind, "source": source, "options": options},
                     sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


def save_entry(directory: Path, key: str, data: ImageSet) -> None:
    """Store ``data`` under ``key`` (images first, metadata last, both atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    images = np.ascontiguousarray(data.images.numpy())
    with atomic_open(directory / f"{key}.npy", "wb") as f:
        np.save(f, images, allow_pickle=False)
    meta = {"format": FORMAT, "shape": list(images.shape), "labels": data.labels.tolist(),
            "class_names": data.class_names, "ids": data.ids, "groups": data.groups, "name": data.name,
            "npy_bytes": (directory / f"{key}.npy").stat().st_size}
    atomic_write_text(directory / f"{key}.json", json.dumps(meta))


def load_entry(directory: Path, key: str) -> ImageSet | None:
    """The cached set, or None when absent; raises ValueError/OSError when the entry is damaged."""
    meta_path, npy_path = directory / f"{key}.json", directory / f"{key}.npy"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or npy_path.stat().st_size != meta["npy_bytes"]:
        raise ValueError("cache entry does not match its metadata")
    # memory-mapped copy-on-write: the load costs no copy, pages come in from the OS cache on
    # first touch, and writes to the tensor never reach the file (object arrays cannot be mapped)
    images = np.load(npy_path, mmap_mode="c", allow_pickle=False)
    if images.dtype != np.uint8 or list(images.shape) != meta["shape"]:
        raise ValueError(f"cached array is {images.dtype} {images.shape}, expected uint8 {meta['shape']}")
    return ImageSet(torch.from_numpy(images), torch.tensor(meta["labels"], dtype=torch.int64),
                    list(meta["class_names"]), list(meta["ids"]), meta["groups"], meta["name"])


def cached(kind: str, source: object, options: dict, build: Callable[[], ImageSet], *,
           cache_dir: str | os.PathLike | None = None, enabled: bool = True) -> ImageSet:
    """``build()`` once, then the stored copy while ``source`` and ``options`` stay the same.

    ``source`` is a JSON-able description of the input (use :func:`file_signature`). A damaged
    entry is rebuilt with a warning; a cache folder that cannot be written only warns.
    """
    if not enabled:
        return build()
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = f"{kind}-{cache_key(kind, source, options)}"
    try:
        hit = load_entry(directory, key)
        if hit is not None:
            return hit
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        warnings.warn(f"{directory / key}: damaged cache entry rebuilt ({exc})", stacklevel=2)
    data = build()
    try:
        save_entry(directory, key, data)
    except OSError as exc:
        warnings.warn(f"{directory}: cannot write the image cache ({exc})", stacklevel=2)
    return data
