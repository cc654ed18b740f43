"""Prototype head (ProtoNet, SimpleShot): each class is the mean of its support embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewshot.heads.base import check_distance, check_query, check_support, cosine_sim, one_hot, sq_euclidean
from fewshot.heads.batch import EpisodeBatch
from fewshot.options import finite_positive


@dataclass
class FittedProto:
    """Class means of every episode; scores are ``-squared euclidean`` or ``cosine`` (times ``scale``)."""

    prototypes: torch.Tensor  # [E, way, D]
    distance: str = "euclidean"
    scale: float = 1.0

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.prototypes.shape[-1], self.prototypes.shape[0])
        query = query.to(self.prototypes.dtype)
        if self.distance == "cosine":
            return self.scale * cosine_sim(query, self.prototypes)
        return -self.scale * sq_euclidean(query, self.prototypes)


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
        counts = y.sum(1).clamp_min(1).unsqueeze(-1)               # [E,way,1]
        prototypes = y.transpose(1, 2) @ support / counts          # [E,way,D]
        return FittedProto(prototypes, self.distance, self.scale)

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
