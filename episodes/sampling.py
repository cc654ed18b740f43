"""Episodic N-way K-shot sampling, all episodes at once.

``sample_episodes`` returns index tensors into an ``ImageSet`` (or a label vector):
``support [E, way, shot]``, ``query [E, way, query]`` and ``classes [E, way]``. Drawing is
vectorised over episodes (no Python loop per episode) and driven by one seeded
``numpy.random.Generator``, so the same seed always gives the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import DatasetError
from .imageset import ImageSet


@dataclass(frozen=True)
class EpisodeSpec:
    """An N-way K-shot task with ``query`` query images per class."""

    way: int
    shot: int
    query: int = 15

    def __post_init__(self) -> None:
        for name in ("way", "shot", "query"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise DatasetError(f"episode {name} must be a positive integer, got {value!r}")

    @property
    def per_class(self) -> int:
        return self.shot + self.query

    def __str__(self) -> str:
        return f"{self.way}-way {self.shot}-shot {self.query}-query"


@dataclass
class Episodes:
    """A batch of episodes as index tensors into one image set.

    ``support[e, c, k]`` is the index of the k-th support image of class ``classes[e, c]`` in
    episode ``e``; episode-local labels are the positions ``c`` (0..way-1).
    """

    support: torch.Tensor
    query: torch.Tensor
    classes: torch.Tensor
    spec: EpisodeSpec
    seed: int | None = None
    within_group: bool = False

    def __len__(self) -> int:
        return int(self.support.shape[0])

    def __getitem__(self, item: slice | int) -> Episodes:
        if isinstance(item, (int, np.integer)):
            item = range(len(self))[item]  # negative indices too; IndexError when out of range
            sl = slice(item, item + 1)
        else:
            sl = item
        return Episodes(self.support[sl], self.query[sl], self.classes[sl], self.spec, self.seed,
                        self.within_group)

    def labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Episode-local labels ``support_y [E, way*shot]`` and ``query_y [E, way*query]``."""
        e, way, shot = self.support.shape
        q = self.query.shape[2]
        ways = torch.arange(way)
        return (ways.repeat_interleave(shot).expand(e, -1).contiguous(),
                ways.repeat_interleave(q).expand(e, -1).contiguous())

    def gather(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(support [E,S,...], support_y [E,S], query [E,Q,...], query_y [E,Q])`` from per-image rows.

        ``features`` is anything indexable by image (a feature matrix ``[N, D]`` or the uint8
        images ``[N, C, H, W]``).
        """
        e = len(self)
        sy, qy = self.labels()
        s_idx = self.support.reshape(e, -1).to(features.device)
        q_idx = self.query.reshape(e, -1).to(features.device)
        return features[s_idx], sy.to(features.device), features[q_idx], qy.to(features.device)


def _labels_of(
    source: ImageSet | torch.Tensor | np.ndarray,
) -> tuple[np.ndarray, list[str] | None, list[str]]:
    if isinstance(source, ImageSet):
        return source.labels.numpy(), source.groups, source.class_names
    labels = np.asarray(source.cpu() if isinstance(source, torch.Tensor) else source, dtype=np.int64)
    if labels.ndim != 1:
        raise DatasetError(f"labels must be one-dimensional, got shape {labels.shape}")
    n_classes = int(labels.max()) + 1 if labels.size else 0
    return labels, None, [str(i) for i in range(n_classes)]


def sample_episodes(
    source: ImageSet | torch.Tensor | np.ndarray,
    spec: EpisodeSpec,
    count: int,
    seed: int = 0,
    within_group: bool = False,
    drop_small: bool = False,
) -> Episodes:
    """Draw ``count`` episodes at once.

    No class appears twice in an episode, support and query images are disjoint, and with
    ``within_group`` all classes of an episode come from one group (groups drawn uniformly among
    those that hold enough classes). Classes with fewer than ``shot + query`` images make the
    request fail with their names, unless ``drop_small`` leaves them out.
    """
    try:
        return _sample(source, spec, count, seed, within_group, drop_small)
    except DatasetError as exc:
        if exc.path is None and isinstance(source, ImageSet) and source.name:
            raise DatasetError(exc.cause, source.name) from None  # say which data set
        raise


def _sample(source: ImageSet | torch.Tensor | np.ndarray, spec: EpisodeSpec, count: int, seed: int,
            within_group: bool, drop_small: bool) -> Episodes:
    if count < 1:
        raise DatasetError(f"episode count must be positive, got {count}")
    labels, groups, class_names = _labels_of(source)
    n_classes = len(class_names)
    counts = np.bincount(labels, minlength=n_classes)
    eligible = counts >= spec.per_class
    if not eligible.all():
        small = [f"{class_names[c]} ({counts[c]})" for c in np.flatnonzero(~eligible)]
        if not drop_small:
            shown = ", ".join(small[:10]) + (f" and {len(small) - 10} more" if len(small) > 10 else "")
            raise DatasetError(
                f"{len(small)} classes have fewer than shot+query={spec.per_class} images: {shown} "
                "(drop them with drop_small / --drop-small)")
    rng = np.random.default_rng(seed)
    eligible_ids = np.flatnonzero(eligible)

    if within_group:
        if groups is None:
            raise DatasetError("within-group episodes need a data set with groups")
        group_arr = np.asarray(groups)
        names = list(dict.fromkeys(groups))
        pools = [eligible_ids[group_arr[eligible_ids] == g] for g in names]
        usable = [i for i, p in enumerate(pools) if len(p) >= spec.way]
        if not usable:
            biggest = int(np.argmax([len(p) for p in pools])) if pools else -1
            largest = (f"the largest, {names[biggest]}, has {len(pools[biggest])}" if pools
                       else "there are none")
            raise DatasetError(f"{spec.way}-way within-group episodes need a group with {spec.way} "
                               f"classes of >= {spec.per_class} images; {largest}")
        pick = rng.integers(0, len(usable), size=count)
        classes = np.empty((count, spec.way), dtype=np.int64)
        for j, gi in enumerate(usable):
            rows = np.flatnonzero(pick == j)
            if rows.size:
                pool = pools[gi]
                order = rng.random((rows.size, len(pool))).argsort(axis=1)[:, :spec.way]
                classes[rows] = pool[order]
    else:
        if len(eligible_ids) < spec.way:
            raise DatasetError(f"{spec.way}-way episodes need {spec.way} classes with >= "
                               f"{spec.per_class} images; only {len(eligible_ids)} have them")
        order = _sample_without_replacement(rng, np.full(count, len(eligible_ids)), spec.way)
        classes = eligible_ids[order]

    # Positions of shot+query distinct images inside each chosen class, then image indices.
    by_class = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = classes.reshape(-1)
    pos = _sample_without_replacement(rng, counts[flat], spec.per_class)
    idx = by_class[starts[flat][:, None] + pos].reshape(count, spec.way, spec.per_class)
    return Episodes(
        support=torch.from_numpy(np.ascontiguousarray(idx[:, :, :spec.shot])),
        query=torch.from_numpy(np.ascontiguousarray(idx[:, :, spec.shot:])),
        classes=torch.from_numpy(classes),
        spec=spec,
        seed=seed,
        within_group=within_group,
    )


def _sample_without_replacement(rng: np.random.Generator, n: np.ndarray, k: int) -> np.ndarray:
    """For each row i, ``k`` distinct integers from ``[0, n[i])`` in random order: ``[len(n), k]``.

    Rows whose range is large next to k (k*k <= n, miniImageNet's 600 images) draw k integers
    and redraw the rows that hold a repeat; i.i.d. draws conditioned on being distinct are a
    uniformly random ordered sample. Small ranges (Omniglot's 20 images) use Robert Floyd's
    algorithm, vectorised over rows, then a random order.
    """
    n = np.asarray(n, dtype=np.int64)
    out = np.empty((n.shape[0], k), dtype=np.int64)
    wide = k * k <= n
    rows = np.flatnonzero(wide)
    while rows.size:
        draw = (rng.random((rows.size, k)) * n[rows, None]).astype(np.int32)  # floor: values >= 0
        srt = np.sort(draw, axis=1)
        ok = (srt[:, 1:] != srt[:, :-1]).all(axis=1)
        out[rows[ok]] = draw[ok]
        rows = rows[~ok]
    narrow = np.flatnonzero(~wide)
    if narrow.size:
        out[narrow] = _floyd(rng, n[narrow], k)
    return out


def _floyd(rng: np.random.Generator, n: np.ndarray, k: int) -> np.ndarray:
    rows = n.shape[0]
    out = np.empty((rows, k), dtype=np.int64)
    u = rng.random((rows, k))
    for step in range(k):
        j = n - k + step                                 # candidate upper end, per row
        t = np.floor(u[:, step] * (j + 1)).astype(np.int64)
        taken = (out[:, :step] == t[:, None]).any(axis=1) if step else np.zeros(rows, dtype=bool)
        out[:, step] = np.where(taken, j, t)
    # Floyd gives a uniform subset; a random order makes support/query splits uniform too.
    perm = rng.random((rows, k)).argsort(axis=1)
    return np.take_along_axis(out, perm, axis=1)
