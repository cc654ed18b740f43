"""Nearest-neighbour head: 1-NN, or distance-weighted k-NN votes, euclidean or cosine."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FewShotError
from .base import check_distance, check_query, check_support, cosine_sim, one_hot, sq_euclidean


def pairwise_distance(query: torch.Tensor, support: torch.Tensor, distance: str) -> torch.Tensor:
    """``[E,Q,S]`` euclidean distance or cosine distance ``1 - cos``."""
    if distance == "cosine":
        return 1 - cosine_sim(query, support)
    return sq_euclidean(query, support).sqrt()


@dataclass
class FittedNN:
    """The support set itself; ``k == 1`` scores each class by minus its nearest support distance."""

    support: torch.Tensor         # [E,S,D]
    support_labels: torch.Tensor  # [E,S]
    way: int
    k: int = 1
    distance: str = "euclidean"
    weighted: bool = True
    eps: float = 1e-8

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.support.shape[-1], self.support.shape[0])
        query = query.to(self.support.dtype)
        d = pairwise_distance(query, self.support, self.distance)            # [E,Q,S]
        e, q, s = d.shape
        labels = self.support_labels.unsqueeze(1).expand(e, q, s)
        if self.k == 1:
            # -distance to the nearest support example of each class (a full ranking; argmax = 1-NN).
            mask = one_hot(self.support_labels, self.way, torch.bool).unsqueeze(1)   # [E,1,S,way]
            return -d.unsqueeze(-1).masked_fill(~mask, float("inf")).amin(2)
        k = min(self.k, s)
        dk, idx = d.topk(k, dim=-1, largest=False)                            # [E,Q,k]
        w = 1.0 / (dk + self.eps) if self.weighted else torch.ones_like(dk)
        votes = torch.zeros(e, q, self.way, dtype=d.dtype, device=d.device)
        return votes.scatter_add(-1, labels.gather(-1, idx), w)


@dataclass
class NNHead:
    """k-nearest-neighbour classifier over the support set.

    ``k=1`` (default): 1-NN; logits are ``-d(query, nearest support of class c)``. ``k>1``: votes of
    the k nearest support examples, weighted by ``1/d`` (``weighted=True``) or uniform. Distances
    are euclidean or cosine (``1 - cos``).
    """

    k: int = 1
    distance: str = "euclidean"
    weighted: bool = True
    name: str = "nn"

    def __post_init__(self) -> None:
        check_distance(self.distance)
        if int(self.k) < 1:
            raise FewShotError(f"nn head needs k >= 1, got {self.k}")

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> FittedNN:
        check_support(support, support_labels, way)
        if not support.is_floating_point():
            support = support.float()
        return FittedNN(support, support_labels, way, int(self.k), self.distance, self.weighted)
