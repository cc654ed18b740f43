"""Prototype head (ProtoNet, SimpleShot): each class is the mean of its support embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewshot.heads.base import (
    check_distance,
    check_extension,
    check_query,
    check_support,
    cosine_sim,
    episode_index,
    one_hot,
    pad_classes,
    sq_euclidean,
)
from fewshot.heads.batch import EpisodeBatch
from fewshot.options import finite_positive


@dataclass
class FittedProto:
    """Class sums and counts of every episode (what new shots add to); the prototypes are their
    ratio. Scores are ``-squared euclidean`` or ``cosine`` to the prototypes (times ``scale``)."""

    sums: torch.Tensor    # [E, way, D]
    counts: torch.Tensor  # [E, way] images per class
    distance: str = "euclidean"
    scale: float = 1.0

    @property
    def prototypes(self) -> torch.Tensor:
        """Class means ``[E, way, D]`` (the zero vector for a class without images)."""
        return self.sums / self.counts.clamp_min(1).unsqueeze(-1)

    @property
    def way(self) -> int:
        return self.sums.shape[1]

    def state_dict(self) -> dict:
        return {"sums": self.sums, "counts": self.counts.long(), "distance": self.distance,
                "scale": float(self.scale)}

    @classmethod
    def from_state_dict(cls, d: dict) -> FittedProto:
        return cls(d["sums"], d["counts"], d["distance"], d.get("scale", 1.0))

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        prototypes = self.prototypes
        check_query(query, prototypes.shape[-1], prototypes.shape[0])
        query = query.to(prototypes.dtype)
        if self.distance == "cosine":
            return self.scale * cosine_sim(query, prototypes)
        return -self.scale * sq_euclidean(query, prototypes)


@dataclass
class ProtoHead:
    """Nearest class mean.

    ``distance="euclidean"`` scores by negative squared euclidean distance as ProtoNet does (Snell
    et al. 2017); ``"cosine"`` by cosine similarity (SimpleShot with l2 features is the euclidean
    variant on normalised features). ``scale`` multiplies the logits (a temperature for episodic
    training; it does not change predictions). Differentiable in the support and the query.
    """

    distance: str = "euclidean"
    scale: float = 1.0
    name: str = "proto"

    def __post_init__(self) -> None:
        check_distance(self.distance)
        self.scale = finite_positive(self.scale, "head 'proto' option scale")

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> FittedProto:
        check_support(support, support_labels, way)
        if not support.is_floating_point():
            support = support.float()
        y = one_hot(support_labels, way, support.dtype)            # [E,S,way]
        return FittedProto(y.transpose(1, 2) @ support, y.sum(1), self.distance, self.scale)

    def partial_fit(self, fitted: FittedProto | None, support: torch.Tensor, support_labels: torch.Tensor,
                    way: int) -> FittedProto:
        """Add ``support`` to running class sums (float64, so long streams keep their digits) and
        integer counts: labels below the fitted way add shots to their class, the others are new
        classes. Two chunks give the fit of their union (up to summation order)."""
        check_support(support, support_labels, way)
        e, _, d = support.shape
        if fitted is None:
            sums = torch.zeros(e, way, d, dtype=torch.float64, device=support.device)
            counts = torch.zeros(e, way, dtype=torch.int64, device=support.device)
        else:
            check_extension(tuple(fitted.sums.shape), support, fitted.way, way)
            sums = pad_classes(fitted.sums.double(), way, 1)
            counts = pad_classes(fitted.counts.long(), way, 1)
        idx = episode_index(support_labels, way)
        sums = sums.reshape(e * way, d).index_add(0, idx, support.reshape(-1, d).double())
        counts = counts.reshape(-1).index_add(0, idx, torch.ones_like(idx))
        return FittedProto(sums.view(e, way, d), counts.view(e, way), self.distance, self.scale)

    def score_batch(self, batch: EpisodeBatch, support_labels: torch.Tensor, way: int) -> torch.Tensor:
        """Logits ``[E,Q,way]`` from the shared inner products (no pass over the query features):
        ``q·p_c`` and ``|p_c|²`` are class averages of ``q·s`` and ``s·s'``."""
        batch.check(support_labels, way)
        s = batch.n_support
        y = one_hot(support_labels, way, batch.rows.dtype)
        counts = y.sum(1)                                                  # [E,way]
        yn = y / counts.clamp_min(1).unsqueeze(1)                          # [E,S,way]
        if self.distance == "cosine":
            inner = batch.inner
            qp = inner[:, s:] @ yn                                         # [E,Q,way]
            pp = ((inner[:, :s] @ yn) * yn).sum(1).clamp_min(0)            # [E,way]
            qn = batch.sq_norm[:, s:].sqrt().clamp_min(1e-12)
            return self.scale * qp / (qn.unsqueeze(2) * pp.sqrt().clamp_min(1e-12).unsqueeze(1))
        g = batch.centred_qs @ yn                                          # (q - x̄)·(p - x̄)
        pp = ((batch.centred_ss @ yn) * yn).sum(1)                         # |p - x̄|²
        d2 = batch.centred_sq[:, s:].unsqueeze(2) - 2 * g + pp.unsqueeze(1)
        if bool((counts == 0).any()):  # an empty class's prototype is the zero vector, as in fit()
            d2 = torch.where((counts == 0).unsqueeze(1), batch.sq_norm[:, s:].unsqueeze(2), d2)
        return -self.scale * d2.clamp_min(0)
