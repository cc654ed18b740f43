"""Omniglot (Lake, Salakhutdinov and Tenenbaum 2015) in its official layouts.

``<set>/<Alphabet>/characterNN/<drawing>.png`` read straight from the official zips
(``images_background.zip``, ``images_evaluation.zip``, ``images_background_small1.zip``,
``images_background_small2.zip``), from their extracted folders, or from a root holding several of
them (torchvision's ``omniglot-py/`` included). Class = ``"Alphabet/characterNN"``, group =
alphabet. Images are inverted so ink is high (the PNGs draw black ink on white). Combining sets
never counts a drawing twice: small1 and small2 share Greek and Latin byte for byte, and
byte-identical files of one class are kept once.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..cache import cached, file_signature
from ..decode import MAX_FILE_BYTES, decode_array, read_zip_member
from ..errors import DatasetError
from ..imageset import ImageSet

NATIVE_SIZE = 105
_CHARACTER = re.compile(r"^character\d+$")


def _is_set_folder(path: Path) -> bool:
    """A set folder holds alphabet folders that hold ``characterNN`` folders."""
    for alphabet in _subdirs(path):
        if any(_CHARACTER.match(c.name) for c in _subdirs(alphabet)):
            return True
    return False


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def find_sets(path: str | os.PathLike) -> list[Path]:
    """The Omniglot sets (zips or set folders) at ``path``, in a stable order.

    ``path`` may be a zip, a set folder, or a root holding sets (folders win over zips of the same
    stem, so an extracted copy is not read twice); torchvision's ``root/omniglot-py`` is entered.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError("no such Omniglot zip or folder", path)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError("not a zip file (expected an official Omniglot zip or a folder)", path)
        return [path]
    if _is_set_folder(path):
        return [path]
    if (path / "omniglot-py").is_dir():
        path = path / "omniglot-py"
    folders = [d for d in _subdirs(path) if _is_set_folder(d)]
    # an extracted zip is often <stem>/<stem>/<Alphabet>/...
    folders += [d / d.name for d in _subdirs(path) if d not in folders and _is_set_folder(d / d.name)]
    stems = {f.name for f in folders}
    zips = sorted(p for p in path.glob("*.zip") if p.stem not in stems and zipfile.is_zipfile(p))
    found = sorted(folders + zips, key=lambda p: (p.stem, p.suffix))
    if not found:
        raise DatasetError("no Omniglot set found (expected images_*.zip files or "
                           "<set>/<Alphabet>/characterNN/*.png folders)", path)
    return found


def _members(source: Path) -> list[tuple[str, str, str, Path | str]]:
    """``(set name, alphabet, character, file)`` for every PNG of one set, sorted."""
    out = []
    if source.is_file():
        try:
            with zipfile.ZipFile(source) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"unreadable zip ({exc})", source) from None
        for name in names:
            parts = name.split("/")
            if len(parts) >= 3 and parts[-1].lower().endswith(".png") and _CHARACTER.match(parts[-2]):
                out.append((source.stem, parts[-3], parts[-2], name))
    else:
        for alphabet in _subdirs(source):
            for character in _subdirs(alphabet):
                if _CHARACTER.match(character.name):
                    for f in sorted(character.glob("*.png")):
                        out.append((source.name, alphabet.name, character.name, f))
    if not out:
        raise DatasetError("holds no Omniglot drawings (<Alphabet>/characterNN/*.png)", source)
    return sorted(out, key=lambda m: (m[1], m[2], str(m[3])))


def _read_file(path: Path, where: str | os.PathLike) -> bytes:
    """A drawing's bytes; a file over ``MAX_FILE_BYTES`` or unreadable is a ``DatasetError``."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DatasetError(f"file is over the {MAX_FILE_BYTES // 2**20} MiB limit", where)
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"unreadable ({exc.strerror or exc})", where) from None


def _read(sources: Sequence[Path], size: tuple[int, int] | None) -> ImageSet:
    arrays, labels, ids = [], [], []
    class_index: dict[str, int] = {}
    groups: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    for source in sources:
        members = _members(source)
        try:
            zf = zipfile.ZipFile(source) if source.is_file() else None
        except (OSError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"unreadable zip ({exc})", source) from None
        try:
            for set_name, alphabet, character, member in members:
                where = f"{source}:{member}" if zf else member
                if zf:
                    raw = read_zip_member(zf, member, where)
                else:
                    raw = _read_file(Path(member), where)
                cname = f"{alphabet}/{character}"
                digest = (cname, hashlib.sha1(raw).digest())
                if digest in seen:  # the same drawing from another set: keep one copy
                    continue
                seen.add(digest)
                arrays.append(decode_array(raw, channels=1, size=size or (NATIVE_SIZE, NATIVE_SIZE),
                                           name=where))
                if cname not in class_index:
                    class_index[cname] = len(class_index)
                    groups.append(alphabet)
                labels.append(class_index[cname])
                rel = member if zf else os.path.relpath(member, source)
                ids.append(f"{set_name}/{rel.split(set_name + '/', 1)[-1] if zf else rel}")
        finally:
            if zf:
                zf.close()
    images = 255 - np.stack(arrays)  # ink high
    names = "+".join(s.stem for s in sources)
    return ImageSet(torch.from_numpy(images), torch.tensor(labels), list(class_index), ids, groups,
                    name=f"omniglot:{names}")


def read_omniglot(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                  image_size: int | tuple[int, int] | None = None, cache_dir: str | os.PathLike | None = None,
                  cache: bool = True) -> ImageSet:
    """Read one or several Omniglot sets (zips, set folders or roots) as one ``ImageSet``.

    ``image_size`` None keeps the native 105x105; otherwise drawings are resized at decode time
    (28 is the field's usual size). The decoded set is cached on disk.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources: list[Path] = []
    for p in paths:
        sources += [s for s in find_sets(p) if s not in sources]
    size = None if image_size is None else (
        (image_size, image_size) if isinstance(image_size, int) else tuple(image_size))
    signature = []
    for s in sources:
        files = [s] if s.is_file() else sorted(s.rglob("*.png"))
        signature.append([str(s.resolve()), file_signature(files, None if s.is_file() else s)])
    return cached("omniglot", signature, {"size": size}, lambda: _read(sources, size),
                  cache_dir=cache_dir, enabled=cache)
