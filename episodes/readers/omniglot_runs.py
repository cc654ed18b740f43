"""The Omniglot one-shot classification challenge runs (the official ``all_runs`` folder).

Layout: ``runNN/training/classKK.png`` (the 20 support drawings, one per class),
``runNN/test/itemKK.png`` (the 20 queries) and ``runNN/class_labels.txt`` whose lines read
``runNN/test/itemKK.png runNN/training/classJJ.png`` (a query and its correct support drawing).
Each run is one fixed 20-way 1-shot episode; :func:`read_runs` returns every drawing as an
``ImageSet`` (class ``"runNN/classKK"``, group ``"runNN"``) and the runs as fixed ``Episodes``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ..decode import decode_array
from ..errors import DatasetError
from ..imageset import ImageSet
from ..sampling import Episodes, EpisodeSpec

_RUN = re.compile(r"^run\d+$")


def _resolve(root: Path, run_dir: Path, name: str, labels_file: Path, line_no: int) -> Path:
    for base in (root, run_dir, labels_file.parent):
        candidate = base / name
        if candidate.is_file():
            return candidate
    raise DatasetError(f"line {line_no} names {name!r}, which does not exist", labels_file)


def read_runs(path: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None) -> tuple[
        ImageSet, Episodes]:
    """All runs under ``path`` (the ``all_runs`` folder, or one ``runNN`` folder).

    Returns ``(images, episodes)``: ``episodes.support [R, 20, 1]`` and ``episodes.query [R, 20, q]``
    index ``images`` (q is 1 in the official runs: every class has one query).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError("no such folder (expected the Omniglot all_runs folder)", root)
    runs = [root] if _RUN.match(root.name) and (root / "class_labels.txt").exists() else sorted(
        d for d in root.iterdir() if d.is_dir() and _RUN.match(d.name))
    if not runs:
        raise DatasetError("no runNN folders with class_labels.txt found", root)
    base = root.parent if runs == [root] else root
    size = None if image_size is None else (
        (image_size, image_size) if isinstance(image_size, int) else tuple(image_size))

    arrays, labels, ids, class_names = [], [], [], []
    supports, queries, classes = [], [], []
    for run in runs:
        labels_file = run / "class_labels.txt"
        if not labels_file.is_file():
            raise DatasetError("missing class_labels.txt", run)
        pairs = []
        for n, line in enumerate(labels_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"line {n} should read '<test image> <training image>', got {line!r}",
                                   labels_file)
            pairs.append((_resolve(base, run, parts[0], labels_file, n),
                          _resolve(base, run, parts[1], labels_file, n)))
        if not pairs:
            raise DatasetError("class_labels.txt is empty", labels_file)
        train_files = sorted((run / "training").glob("*.png")) or sorted({t for _, t in pairs})
        first_class = len(class_names)
        local = {f.resolve(): i for i, f in enumerate(train_files)}
        support_idx = []
        for i, f in enumerate(train_files):
            support_idx.append(len(arrays))
            arrays.append(decode_array(f, channels=1, size=size))
            labels.append(first_class + i)
            class_names.append(f"{run.name}/{f.stem}")
            ids.append(os.path.relpath(f, base))
        per_class: list[list[int]] = [[] for _ in train_files]
        for test, train in pairs:
            c = local.get(train.resolve())
            if c is None:
                raise DatasetError(f"names training image {train.name}, which is not in "
                                   f"{run.name}/training", labels_file)
            per_class[c].append(len(arrays))
            arrays.append(decode_array(test, channels=1, size=size))
            labels.append(first_class + c)
            ids.append(os.path.relpath(test, base))
        q = {len(p) for p in per_class}
        if len(q) != 1 or 0 in q:
            raise DatasetError("every training class needs the same number (>= 1) of test images; "
                               f"counts are {[len(p) for p in per_class]}", labels_file)
        supports.append([[s] for s in support_idx])
        queries.append(per_class)
        classes.append(list(range(first_class, first_class + len(train_files))))

    ways = {len(s) for s in supports}
    if len(ways) != 1 or len({len(q[0]) for q in queries}) != 1:
        raise DatasetError("runs differ in their number of classes or queries", root)
    shapes = {a.shape for a in arrays}
    stack = np.stack(arrays) if len(shapes) == 1 else np.stack(
        [decode_array(Path(base) / i, channels=1, size=(105, 105)) for i in ids])
    data = ImageSet(torch.from_numpy(255 - stack), torch.tensor(labels), class_names, ids,
                    groups=[n.split("/")[0] for n in class_names], name=f"omniglot-runs:{root.name}")
    spec = EpisodeSpec(way=len(supports[0]), shot=1, query=len(queries[0][0]))
    episodes = Episodes(torch.tensor(supports), torch.tensor(queries), torch.tensor(classes), spec, seed=None)
    return data, episodes
