"""Prototypes calibrated toward the nearest base-class means (the mean step of distribution
calibration, Yang et al. 2021, "Free Lunch for Few-shot Learning").

One or five photos of a novel class say little about where the class lies; the base classes the
encoder was trained on say where classes like it lie. Each support embedding ``x`` brings the mean
of its ``k`` nearest base-class means (euclidean, in the same feature space) as an anchor ``a(x)``,
and the class prototype shrinks toward the anchors of its shots::

    prototype_c = (sum_i x_i + lam * mean_i a(x_i)) / (n_c + lam)

so a 1-shot prototype is mostly anchor (``1 / (1 + lam)`` of it is the shot) and more shots pull
it back to their own mean. Inductive: only the support images and the base-class statistics of the
checkpoint are used, never the queries. It pays where novel classes resemble base classes (photos:
miniImageNet val +7 points at 1 shot, +2 at 5 shots, ``benchmarks/RESULTS.md``) and costs where
they do not (Omniglot characters of other alphabets: -2 to -5 points), so it is a head to compare,
not a default.

The base-class means come from the checkpoint (``base_class_means``, written at the end of
training for the feature transforms ``none`` and ``l2``); :func:`fewshot.evaluation.evaluate`
hands them to the head. The fitted head is a :class:`~fewshot.heads.proto.FittedProto` (class
sums and fractional counts), scored like ``proto``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fewshot.errors import FewShotError
from fewshot.heads.base import check_distance, one_hot
from fewshot.heads.proto import FittedProto, ProtoHead
from fewshot.options import at_least, check


@dataclass
class ProtoDCHead:
    """Prototype head with base-class calibration.

    ``base_means [C, D]``: mean embedding of every base class, in the feature space the head is
    given (set by the evaluation from the checkpoint, or by hand). ``k``: base-class means per
    anchor. ``lam``: weight of the anchor against one shot (0 is ``proto``). ``distance``: of the
    scores, as ``proto``.
    """

    k: int = 6
    lam: float = 4.0
    distance: str = "euclidean"
    base_means: torch.Tensor | None = field(default=None, repr=False)
    name: str = "proto-dc"

    def __post_init__(self) -> None:
        check_distance(self.distance)
        self.k = at_least(self.k, 1, "head 'proto-dc' option k")
        lam = self.lam if isinstance(self.lam, (int, float)) else float("nan")
        check(math.isfinite(lam) and lam >= 0, "head 'proto-dc' option lam", self.lam, "a finite number >= 0")
        self.lam = float(lam)

    def with_base_means(self, means: torch.Tensor) -> ProtoDCHead:
        """This head with the base-class means ``[C, D]`` it calibrates toward."""
        means = torch.as_tensor(means)
        if means.ndim != 2 or means.shape[0] < 1:
            raise FewShotError(f"head 'proto-dc' needs base-class means [C, D], "
                               f"got shape {tuple(means.shape)}")
        self.base_means = means.float()
        return self

    def anchors(self, support: torch.Tensor) -> torch.Tensor:
        """``[E, S, D]``: the mean of the ``k`` base-class means nearest to every support row."""
        means = self.base_means
        if means is None:
            raise FewShotError("head 'proto-dc' has no base-class means: evaluate it on a checkpoint "
                               "that records them (fewshot train writes them), or call with_base_means()")
        if means.shape[1] != support.shape[-1]:
            raise FewShotError(f"head 'proto-dc': base-class means have dim {means.shape[1]}, the features "
                               f"{support.shape[-1]} (another encoder's statistics?)")
        means = means.to(support.device, support.dtype)
        k = min(self.k, means.shape[0])
        # squared distances |x|^2 - 2 x.m + |m|^2; |x|^2 is the same for every m of a row
        d2 = means.square().sum(-1) - 2 * support @ means.T                  # [E, S, C]
        nearest = d2.topk(k, dim=-1, largest=False).indices                  # [E, S, k]
        return means[nearest].mean(-2)

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> FittedProto:
        plain = ProtoHead(self.distance).fit(support, support_labels, way)  # checks; class sums, counts
        if self.lam == 0.0:
            return plain
        if not support.is_floating_point():
            support = support.float()
        y = one_hot(support_labels, way, support.dtype)                       # [E, S, way]
        counts = plain.counts                                                 # [E, way]
        anchor = (y.transpose(1, 2) @ self.anchors(support)) / counts.clamp_min(1).unsqueeze(-1)
        present = (counts > 0).to(support.dtype)                              # an empty class stays empty
        sums = plain.sums + self.lam * anchor * present.unsqueeze(-1)
        return FittedProto(sums, counts + self.lam * present, self.distance)
