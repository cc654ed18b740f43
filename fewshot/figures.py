"""What every figure of the toolkit shares: short data-set titles, wrapped labels, atomic PNG writes.

A figure is shared and looked at small, so its title names the data set briefly, by kind and
split (``omniglot small2 (novel)``, ``miniimagenet (val)``), never by a local path; the full data
spec stays in ``results.md`` / ``results.json`` / ``config.json``. :func:`short_data_name` turns an
``ImageSet`` name (a data spec, as :func:`episodes.load_data` names its sets, or a reader's own
name) into that short form.
"""

from __future__ import annotations

import io
import os
import re
import textwrap
from pathlib import Path

from episodes.atomic import atomic_write_bytes

__all__ = ["TITLE_MAX", "short_data_name", "shorten", "wrap", "compact_labels", "save_figure", "pyplot"]

TITLE_MAX = 48   # characters: a title that fits a 6-inch figure at the default font size

_OMNIGLOT_SET = re.compile(r"^images_(background|evaluation)_?")
_SPLITS = ("base", "val", "novel", "train", "test")


def shorten(text: str, width: int = TITLE_MAX) -> str:
    """``text`` cut to ``width`` characters with an ellipsis in the middle (both ends stay readable)."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]


def wrap(text: str, width: int = 24, max_lines: int = 2) -> str:
    """``text`` wrapped at ``width`` characters (on ``/``, ``_`` and ``|`` too), at most ``max_lines``."""
    spaced = re.sub(r"([/_|,])", r"\1 ", str(text))
    lines = textwrap.wrap(spaced, width, break_long_words=True) or [""]
    lines = [ln.replace("/ ", "/").replace("_ ", "_").replace(", ", ",").replace("| ", "|") for ln in lines]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [shorten(" ".join(lines[max_lines - 1:]), width)]
    return "\n".join(lines)


def compact_labels(names: list[str], width: int = 24) -> tuple[list[str], str]:
    """Tick labels of at most ``width`` characters that still tell ``names`` apart.

    Names that fit are kept. Otherwise the prefix and suffix that every name shares are dropped
    (``Tagalog/character01`` ... ``Tagalog/character17`` -> ``01`` ... ``17``) and returned as a
    note for the axis label (``Tagalog/character…``); what is still too long is cut in the middle.
    """
    names = [str(n) for n in names]
    if all(len(n) <= width for n in names) or len(names) < 2:
        return [shorten(n, width) for n in names], ""
    prefix = os.path.commonprefix(names)
    suffix = os.path.commonprefix([n[len(prefix):][::-1] for n in names])[::-1]
    prefix = prefix.rstrip("0123456789")   # numbers stay whole: 01 ... 17, not 1 ... 17
    suffix = suffix.lstrip("0123456789")
    core = [n[len(prefix): len(n) - len(suffix)] for n in names]
    if not all(core):   # one name is the shared part itself: keep the names whole
        prefix = suffix = ""
        core = names
    short = [shorten(c, width) for c in core]
    if len(set(short)) < len(short):   # cut in the middle, two names met: number them instead
        short = [f"{i}: {shorten(c, width - 4)}" for i, c in enumerate(core)]
    note = f"{shorten(prefix, 20)}…{shorten(suffix, 20)}" if prefix or suffix else ""
    return short, note.replace("……", "…")


def _is_path(word: str) -> bool:
    return word.startswith(("/", "~", "./", "../")) or word.count("/") >= 2 or "\\" in word


def _source_name(kind: str, paths: tuple[str, ...]) -> str:
    stems = []
    for p in paths:
        stem = Path(p.rstrip("/\\")).name
        for ext in (".zip", ".tar.gz", ".tar", ".pkl", ".pickle"):
            stem = stem.removesuffix(ext)
        if kind == "omniglot":
            stem = _OMNIGLOT_SET.sub("", stem) or stem
        stems.append(stem)
    if kind in ("miniimagenet", "glyphs", "digits", "omniglot-runs"):
        return kind          # the root's own name says nothing more
    return f"{kind} {'+'.join(stems)}".strip()


def short_data_name(name: str | None, width: int = TITLE_MAX) -> str:
    """A data set's name for a figure: kind, source file stem(s) and split, no local path.

    ``omniglot:/data/images_background_small2.zip?groups=A,B (split novel)`` ->
    ``omniglot small2, 2 groups (novel)``; ``miniimagenet:/x/mini (split val)`` -> ``miniimagenet
    (val)``; a name that is not a data spec keeps its text with every path cut to its last part.
    """
    from episodes.errors import DatasetError
    from episodes.specs import parse_spec

    text = " ".join(str(name or "data").split())
    split = None
    m = re.search(r"\s*\(split (\w+)\)$", text)
    if m:
        text, split = text[: m.start()], m.group(1)
    out = None
    if ":" in text or "?" in text or text in ("glyphs", "digits"):
        try:
            spec = parse_spec(text)
        except DatasetError:
            spec = None
        if spec is not None:
            opts = dict(spec.options)
            split = split or opts.pop("split", None)
            last = Path(spec.paths[-1].rstrip("/")).name if spec.paths else ""
            if split is None and spec.kind != "folder" and last in _SPLITS:   # "miniimagenet:root/val"
                split = last
            out = _source_name(spec.kind, spec.paths)
            extras = []
            if "groups" in opts:
                n = len([g for g in opts["groups"].split(",") if g.strip()])
                extras.append(f"{n} group{'s' * (n != 1)}")
            if "exclude_groups" in opts:
                n = len([g for g in opts["exclude_groups"].split(",") if g.strip()])
                extras.append(f"{n} group{'s' * (n != 1)} excluded")
            if "max_per_class" in opts:
                extras.append(f"≤{opts['max_per_class']}/class")
            out = ", ".join([out, *extras])
    if out is None:   # a reader's own name: cut every path-like word to its last part
        out = " ".join(os.path.basename(w.rstrip("/")) if _is_path(w) else w for w in text.split())
    if split:
        out = f"{out} ({split})"
    return shorten(out, width)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed, safe in threads and on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file), then close it."""
    plt = pyplot()
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
