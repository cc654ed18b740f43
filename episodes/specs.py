"""Data specs: one string names a data source, as on the command line.

Grammar: ``KIND[:ARGUMENT][?KEY=VALUE[&KEY=VALUE...]]``

==================  ===========================================================================
``glyphs``          the built-in procedural glyph set (splits base/val/novel; options ``seed``,
                    ``per_class``, ``alphabets`` = number of alphabets, default 30)
``omniglot:PATH``   Omniglot zips, set folders or a root holding them; several joined with ``+``
                    (duplicates dropped). Split ``base`` = ``images_background*`` sets, ``novel`` =
                    ``images_evaluation*`` sets; no split = everything named. Option ``set=S[,S]``
                    keeps the sets named ``S`` or ``*_S`` (``small1``, ``small2``, ``background``,
                    ``evaluation``) of a root holding several
``omniglot-runs:P`` the drawings of the one-shot challenge runs (``all_runs``); see :func:`load_runs`
``miniimagenet:R``  miniImageNet in any of its four layouts (splits base/val/novel = train/val/test;
                    no split = all three)
``folder:PATH``     ``<PATH>/<class>/*`` or ``<PATH>/<group>/<class>/*``; a split names a sub-folder
                    (``train``/``val``/``test`` are aliases of ``base``/``val``/``novel``); option
                    ``strict=1`` refuses unreadable files instead of skipping them
``digits``          scikit-learn's 8x8 digits, 10 classes (split ``novel`` or none)
==================  ===========================================================================

Options every kind accepts: ``groups=A,B`` (keep only these groups, e.g. Omniglot alphabets),
``exclude_groups=A,B`` (drop them), ``max_per_class=N`` (the first N images of each class), and
``split=S`` (the same as the ``split`` argument).
Examples: ``omniglot:data/images_background_small2.zip?groups=Japanese_(katakana),Sanskrit``,
``glyphs?seed=3``, ``miniimagenet:~/data/mini-imagenet``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .imageset import ImageSet
from .sampling import Episodes

KINDS = ("glyphs", "omniglot", "omniglot-runs", "miniimagenet", "folder", "digits")
_NEEDS_PATH = {"omniglot", "omniglot-runs", "miniimagenet", "folder"}
COMMON_OPTIONS = ("groups", "exclude_groups", "max_per_class", "split")
KIND_OPTIONS = {"glyphs": ("seed", "per_class", "alphabets"), "folder": ("strict",), "omniglot": ("set",)}
_SPLIT_ALIASES = {"train": "base", "base": "base", "val": "val", "validation": "val", "test": "novel",
                  "novel": "novel"}


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: ``kind``, ``paths`` (one or more, may be empty) and ``options``."""

    kind: str
    paths: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)


def parse_spec(spec: str) -> DataSpec:
    """Parse ``KIND[:ARGUMENT][?KEY=VALUE&...]``; ``DatasetError`` listing valid kinds or keys."""
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"empty data spec; use one of: {', '.join(KINDS)}")
    body, _, query = spec.strip().partition("?")
    kind, sep, arg = body.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DatasetError(f"unknown data kind {kind!r} in {spec!r}; valid kinds: {', '.join(KINDS)} "
                           "(e.g. glyphs, omniglot:PATH, miniimagenet:ROOT, folder:PATH)")
    if kind in _NEEDS_PATH and not arg:
        raise DatasetError(f"data spec {spec!r} needs a path: {kind}:PATH")
    if kind not in _NEEDS_PATH and arg:
        raise DatasetError(f"data kind {kind!r} takes no path (got {arg!r})")
    paths = tuple(p for p in arg.split("+") if p) if kind == "omniglot" else ((arg,) if arg else ())
    options: dict[str, str] = {}
    valid = COMMON_OPTIONS + KIND_OPTIONS.get(kind, ())
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in valid or not eq:
            raise DatasetError(f"unknown or empty option {item!r} in {spec!r}; valid options for "
                               f"{kind}: {', '.join(k + '=...' for k in valid)}")
        options[key] = value.strip()
    return DataSpec(kind, paths, options)


def _int(options: dict[str, str], key: str, default: int | None = None) -> int | None:
    if key not in options:
        return default
    try:
        value = int(options[key])
    except ValueError:
        raise DatasetError(f"option {key}={options[key]!r} must be an integer") from None
    if value < (0 if key == "seed" else 1):
        raise DatasetError(f"option {key}={value} is out of range")
    return value


def _split(split: str | None, kind: str, allowed: tuple[str | None, ...]) -> str | None:
    if split is None:
        return None
    canon = _SPLIT_ALIASES.get(split.lower())
    if canon not in allowed:
        ok = ", ".join(s for s in allowed if s) or "none"
        raise DatasetError(f"{kind} has no split {split!r} (splits: {ok})")
    return canon


def load_data(spec: str, split: str | None = None, *, image_size: int | tuple[int, int] | None = None,
              channels: int | None = None, cache_dir: str | os.PathLike | None = None,
              cache: bool = True) -> ImageSet:
    """Load the ``ImageSet`` a data spec names (see the module docstring for the grammar).

    ``split`` is ``base``, ``val`` or ``novel`` (train/val/test accepted) where the source has
    splits, ``None`` for the whole source. ``image_size`` (int or ``(h, w)``) and ``channels``
    (1 or 3) convert the images; ``cache_dir`` overrides ``$FEWSHOT_CACHE_DIR``/``~/.cache/fewshot``.
    """
    parsed = parse_spec(spec)
    opts = parsed.options
    if "split" in opts:
        if split is not None and _SPLIT_ALIASES.get(split) != _SPLIT_ALIASES.get(opts["split"]):
            raise DatasetError(f"split {split!r} contradicts split={opts['split']} in {spec!r}")
        split = opts["split"]
    kind = parsed.kind
    size = None if image_size is None else (
        (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size))

    if kind == "glyphs":
        from .readers.glyphs import load_glyphs

        side = size[0] if size and size[0] == size[1] else 28
        data = load_glyphs(_split(split, kind, (None, "base", "val", "novel")), size=side,
                           seed=_int(opts, "seed", 0), per_class=_int(opts, "per_class", 20),
                           num_alphabets=_int(opts, "alphabets", 30))
    elif kind == "digits":
        from .readers.digits import load_digits_set

        _split(split, kind, (None, "novel"))
        data = load_digits_set()
    elif kind == "omniglot":
        from .readers.omniglot import find_sets, read_omniglot

        which = _split(split, kind, (None, "base", "novel"))
        sources = [s for p in parsed.paths for s in find_sets(p)]
        if "set" in opts:
            wanted = [n.strip() for n in opts["set"].split(",") if n.strip()]
            sources = [s for s in sources if any(s.stem == n or s.stem.endswith("_" + n) for n in wanted)]
            if not sources:
                raise DatasetError(f"no Omniglot set named {opts['set']} among {', '.join(parsed.paths)}")
        if which:
            prefix = "images_background" if which == "base" else "images_evaluation"
            sources = [s for s in sources if s.stem.startswith(prefix)]
            if not sources:
                raise DatasetError(f"no {prefix}* set among {', '.join(parsed.paths)} for split {which!r}")
        data = read_omniglot(sources, image_size=size, cache_dir=cache_dir, cache=cache)
    elif kind == "omniglot-runs":
        _split(split, kind, (None, "novel"))
        data = load_runs(parsed.paths[0], image_size=size)[0]
    elif kind == "miniimagenet":
        from .readers.miniimagenet import read_miniimagenet

        data = read_miniimagenet(parsed.paths[0], _split(split, kind, (None, "base", "val", "novel")),
                                 image_size=size or 84, channels=channels or 3, cache_dir=cache_dir,
                                 cache=cache)
    else:  # folder
        from .readers.folders import read_image_folder

        root = Path(parsed.paths[0]).expanduser()
        if split is not None:
            canon = _split(split, kind, (None, "base", "val", "novel"))
            names = [k for k, v in _SPLIT_ALIASES.items() if v == canon]
            found = [root / n for n in names if (root / n).is_dir()]
            if not found:
                raise DatasetError(f"no sub-folder for split {split!r} (looked for {', '.join(names)})", root)
            root = found[0]
        strict = opts.get("strict", "0").lower() in ("1", "true", "yes")
        data = read_image_folder(root, image_size=size, channels=channels, strict=strict,
                                 cache_dir=cache_dir, cache=cache)

    data = _select(data, opts, spec)
    data = data.resized(size)
    data = data.with_channels(channels) if channels else data
    # the spec itself names the set: errors and manifests then say exactly how to load it again
    name = spec.strip() if split is None else f"{spec.strip()} (split {split})"
    return ImageSet(data.images, data.labels, data.class_names, data.ids, data.groups, name)


def _select(data: ImageSet, opts: dict[str, str], spec: str) -> ImageSet:
    def tag(key: str) -> str:
        return f"{data.name}{'&' if '?' in data.name else '?'}{key}={opts[key]}"

    def names(key: str) -> list[str]:
        return [g.strip() for g in opts[key].split(",") if g.strip()]

    if "groups" in opts:
        data = data.select_groups(names("groups"), name=tag("groups"))
    if "exclude_groups" in opts:
        if data.groups is None:
            raise DatasetError(f"{spec!r}: exclude_groups needs a data set with groups")
        drop = set(names("exclude_groups"))
        unknown = sorted(drop - set(data.groups))
        if unknown:
            raise DatasetError(f"{spec!r}: unknown groups {unknown}; known: {data.group_names}")
        keep = [g for g in data.group_names if g not in drop]
        if not keep:
            raise DatasetError(f"{spec!r}: exclude_groups leaves no classes")
        data = data.select_groups(keep, name=tag("exclude_groups"))
    if "max_per_class" in opts:
        cap = _int(opts, "max_per_class")
        labels = data.labels.numpy()
        order = np.argsort(labels, kind="stable")
        rank = np.empty_like(order)
        starts = np.searchsorted(labels[order], labels[order])
        rank[order] = np.arange(len(order)) - starts
        data = data.subset(np.flatnonzero(rank < cap), name=tag("max_per_class"))
    return data


def load_runs(path: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None
              ) -> tuple[ImageSet, Episodes]:
    """The Omniglot one-shot challenge runs: ``(images, fixed 20-way 1-shot episodes)``."""
    from .readers.omniglot_runs import read_runs

    return read_runs(path, image_size=image_size)
