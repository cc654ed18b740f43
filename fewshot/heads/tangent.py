"""Tangent-distance head: nearest neighbour, each support image with the directions its own views
move it in (one-sided tangent distance, Simard, LeCun & Denker 1993).

With test-time augmentation every image is embedded under ``views`` small deformations
(:class:`fewshot.evaluation.tta.TTA`). Their mean is the image's feature; their spread says in which
directions the feature of *this* drawing moves when it is shifted, scaled, sheared or wobbled. The
tangent distance of a query ``q`` to a support image with feature ``s`` and orthonormal view
directions ``T_s [k, D]`` (the leading principal directions of its centred views) is the distance
from ``q`` to the affine subspace ``s + span(T_s)``::

    d(q, s) = ||q - s||^2 - ||T_s (q - s)||^2

so a query that differs from a support image only by the kind of deformation the views model is
near it. It uses only the support image and its views, never other queries: 1-shot stays 1-shot.
Features that concatenate TTA symmetries (``blocks``) carry one subspace per block, and the
distance sums over the blocks. Each class scores minus the distance to its nearest support image.

The tangents come from the evaluation (:func:`fewshot.evaluation.tangents.embed_with_tangents`,
computed from the same views as the features); ``fit`` without them is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewshot.errors import FewShotError
from fewshot.heads.base import check_query, check_support, sq_euclidean
from fewshot.heads.nn import class_min
from fewshot.options import at_least


@dataclass
class FittedTangent:
    """The support rows ``[E,S,D]`` with their view directions ``tangents [E,S,blocks,k,D/blocks]``."""

    support: torch.Tensor
    tangents: torch.Tensor
    support_labels: torch.Tensor
    way: int

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.support.shape[-1], self.support.shape[0])
        query = query.to(self.support.dtype)
        e, s, blocks, k, d = self.tangents.shape
        t = self.tangents.to(self.support.dtype)
        q_on = torch.einsum("eqbd,esbkd->eqsbk", query.view(e, -1, blocks, d), t)
        s_on = torch.einsum("esbd,esbkd->esbk", self.support.view(e, s, blocks, d), t)
        along = (q_on - s_on.unsqueeze(1)).pow(2).sum((-2, -1))                    # [E,Q,S]
        dist = (sq_euclidean(query, self.support) - along).clamp_min(0)
        return -class_min(dist, self.support_labels, self.way)


@dataclass
class TangentHead:
    """Nearest neighbour under one-sided tangent distance.

    ``k``: view directions kept per support image (and per symmetry block): the leading principal
    directions of its views, at most ``views - 1``. Needs TTA views (``--tta N``, N >= 2); the
    evaluation computes the directions (``tangents``) with the features and hands them to ``fit``.
    """

    k: int = 16
    name: str = "tangent"

    def __post_init__(self) -> None:
        self.k = at_least(self.k, 1, "head 'tangent' option k")

    @property
    def tangents(self) -> int:
        """View directions the evaluation must keep per image for this head."""
        return self.k

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int,
            tangents: torch.Tensor | None = None) -> FittedTangent:
        check_support(support, support_labels, way)
        if tangents is None:
            raise FewShotError("head 'tangent' needs the view directions of every support image, which "
                               "evaluation computes from TTA views (--tta N with N >= 2)")
        if tangents.dim() != 5 or tangents.shape[:2] != support.shape[:2] or (
                tangents.shape[2] * tangents.shape[4] != support.shape[-1]):
            raise FewShotError(f"tangents must be [episodes, shots, blocks, k, dim / blocks] for support "
                               f"{tuple(support.shape)}, got {tuple(tangents.shape)}")
        if not support.is_floating_point():
            support = support.float()
        return FittedTangent(support, tangents[:, :, :, :self.k], support_labels, way)
