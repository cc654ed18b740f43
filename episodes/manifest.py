"""Episode manifests: episodes as JSON, tied to the data set they were drawn from.

A manifest names every episode's classes and images by *name and id*, not by index, and carries
the data set's fingerprint, so a run can be shared and re-scored exactly, and loading it onto
other data is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_text, read_json
from .errors import DatasetError
from .imageset import ImageSet
from .sampling import Episodes, EpisodeSpec

FORMAT = "fewshot-episodes/1"


def save_manifest(path: str | os.PathLike, episodes: Episodes, data: ImageSet) -> Path:
    """Write ``episodes`` (drawn from ``data``) as JSON, atomically."""
    path = Path(path)
    ids = np.asarray(data.ids, dtype=object)
    names = np.asarray(data.class_names, dtype=object)
    doc = {
        "format": FORMAT,
        "spec": {"way": episodes.spec.way, "shot": episodes.spec.shot, "query": episodes.spec.query},
        "seed": episodes.seed,
        "within_group": episodes.within_group,
        "dataset": {"name": data.name, "fingerprint": data.fingerprint, "images": len(data),
                    "classes": data.num_classes},
        "episodes": [
            {"classes": names[c].tolist(), "support": ids[s].tolist(), "query": ids[q].tolist()}
            for c, s, q in zip(episodes.classes.numpy(), episodes.support.numpy(), episodes.query.numpy())
        ],
    }
    return atomic_write_text(path, json.dumps(doc, separators=(",", ":")))


def _refuse_repeats(support: np.ndarray, query: np.ndarray, data: ImageSet, path: Path) -> None:
    """An episode that uses an image twice (a query that is also a support image scores 100% for
    free) is refused, naming the first such episode and image."""
    if not len(support):
        return
    rows = np.concatenate([support.reshape(len(support), -1), query.reshape(len(query), -1)], axis=1)
    rows = np.sort(rows, axis=1)
    repeat = rows[:, 1:] == rows[:, :-1]
    if repeat.any():
        ep, col = np.argwhere(repeat)[0]
        raise DatasetError(f"episode {int(ep)} uses image {data.ids[int(rows[ep, col])]!r} twice (as support "
                           "and query, or twice in one of them); episodes must not repeat images", path)


def load_manifest(path: str | os.PathLike, data: ImageSet) -> Episodes:
    """Episodes from a manifest, as indices into ``data``; refused if ``data`` is another data set."""
    path = Path(path)
    doc = read_json(path, missing="no such manifest file", unreadable="not a readable JSON manifest")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DatasetError(f"not a fewshot episode manifest (expected format {FORMAT!r})", path)
    try:
        want = doc["dataset"]["fingerprint"]
        spec = EpisodeSpec(**doc["spec"])
        eps = list(doc["episodes"])
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"incomplete manifest (missing or malformed {exc})", path) from None
    except DatasetError as exc:
        raise DatasetError(exc.cause, path) from None
    if want != data.fingerprint:
        raise DatasetError(
            f"manifest was drawn from data set {doc['dataset'].get('name')!r} (fingerprint {want}), "
            f"not from {data.name!r} (fingerprint {data.fingerprint})", path)
    id_index = {i: n for n, i in enumerate(data.ids)}
    class_index = {c: n for n, c in enumerate(data.class_names)}
    try:
        classes = np.array([[class_index[c] for c in ep["classes"]] for ep in eps], dtype=np.int64)
        support = np.array([[[id_index[i] for i in row] for row in ep["support"]] for ep in eps],
                           dtype=np.int64)
        query = np.array([[[id_index[i] for i in row] for row in ep["query"]] for ep in eps],
                         dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"manifest names an image or class the data set lacks ({exc})", path) from None
    e = len(eps)
    if support.shape != (e, spec.way, spec.shot) or query.shape != (e, spec.way, spec.query):
        raise DatasetError("manifest episodes do not match its spec", path)
    _refuse_repeats(support, query, data, path)
    return Episodes(torch.from_numpy(support), torch.from_numpy(query), torch.from_numpy(classes),
                    spec, doc.get("seed"), bool(doc.get("within_group", False)))
