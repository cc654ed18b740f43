"""Nearest-neighbour head: 1-NN, or distance-weighted k-NN votes, euclidean or cosine."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewshot.heads.base import (
    appended_rows,
    check_distance,
    check_query,
    check_support,
    cosine_sim,
    sq_euclidean,
)
from fewshot.heads.batch import EpisodeBatch
from fewshot.options import at_least, check


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

    def state_dict(self) -> dict:
        """Tensors and settings under the names of a model file's ``nn`` record."""
        return {"features": self.support, "labels": self.support_labels, "num_classes": int(self.way),
                "distance": self.distance, "k": int(self.k), "weighted": bool(self.weighted)}

    @classmethod
    def from_state_dict(cls, d: dict) -> FittedNN:
        return cls(d["features"], d["labels"], d["num_classes"], d.get("k", 1), d["distance"],
                   d.get("weighted", True))

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.support.shape[-1], self.support.shape[0])
        query = query.to(self.support.dtype)
        if self.distance == "euclidean" and self.k == 1:   # min of squared distances, one sqrt per class
            return -class_min(sq_euclidean(query, self.support), self.support_labels, self.way).sqrt()
        return vote(pairwise_distance(query, self.support, self.distance), self.support_labels, self.way,
                    self.k, self.weighted, self.eps)


def class_min(d: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """``[E,Q,S]`` distances -> ``[E,Q,way]`` distance to the nearest support row of each class
    (``inf`` for a class with no support row)."""
    e, q, s = d.shape
    out = torch.full((e, q, way), float("inf"), dtype=d.dtype, device=d.device)
    return out.scatter_reduce(-1, labels.long().unsqueeze(1).expand(e, q, s), d, reduce="amin")


def vote(d: torch.Tensor, labels: torch.Tensor, way: int, k: int, weighted: bool, eps: float) -> torch.Tensor:
    """Logits from query-support distances ``d [E,Q,S]``: ``-`` nearest distance per class (``k == 1``,
    a full ranking whose argmax is 1-NN) or the (``1/d``-weighted) votes of the ``k`` nearest."""
    if k == 1:
        return -class_min(d, labels, way)
    e, q, s = d.shape
    dk, idx = d.topk(min(k, s), dim=-1, largest=False)                    # [E,Q,k]
    w = 1.0 / (dk + eps) if weighted else torch.ones_like(dk)
    votes = torch.zeros(e, q, way, dtype=d.dtype, device=d.device)
    return votes.scatter_add(-1, labels.long().unsqueeze(1).expand(e, q, s).gather(-1, idx), w)


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
        self.k = at_least(self.k, 1, "head 'nn' option k")
        check(isinstance(self.weighted, bool), "head 'nn' option weighted", self.weighted, "true or false")

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> FittedNN:
        check_support(support, support_labels, way)
        if not support.is_floating_point():
            support = support.float()
        return FittedNN(support, support_labels, way, int(self.k), self.distance, self.weighted)

    def partial_fit(self, fitted: FittedNN | None, support: torch.Tensor, support_labels: torch.Tensor,
                    way: int) -> FittedNN:
        """Append ``support`` to the fitted support set (the neighbours are the data itself)."""
        if fitted is None:
            return self.fit(support, support_labels, way)
        rows, labels = appended_rows(fitted.support, fitted.support_labels, fitted.way, support,
                                     support_labels, way)
        return FittedNN(rows, labels, way, int(self.k), self.distance, self.weighted)

    def score_batch(self, batch: EpisodeBatch, support_labels: torch.Tensor, way: int) -> torch.Tensor:
        """Logits ``[E,Q,way]`` from the shared inner products (same values as ``fit(...)(query)``)."""
        batch.check(support_labels, way)
        s = batch.n_support
        if self.distance == "cosine":
            norms = batch.sq_norm.sqrt().clamp_min(1e-12)
            d = 1 - batch.inner[:, s:] / (norms[:, s:].unsqueeze(2) * norms[:, :s].unsqueeze(1))
        elif self.k == 1:
            return -class_min(batch.sq_dist[:, s:], support_labels, way).sqrt()
        else:
            d = batch.sq_dist[:, s:].sqrt()
        return vote(d, support_labels, way, int(self.k), self.weighted, 1e-8)
