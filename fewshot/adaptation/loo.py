"""How well an adapted head classifies its own support set: exact leave-one-out, no refits, and
the softmax temperature that makes its probabilities honest.

For a fitted head of one task (``E = 1``) and rows ``z [n, D]`` that it was fitted on:

- ``proto``: each image is removed from its own class mean (``(S_c - x_i)/(n_c - 1)``);
- ``nn``: each image is excluded from its own neighbours;
- ``ls``: the hat-matrix identity of penalised least squares, ``ŷ₋ᵢ = (ŷᵢ - hᵢᵢyᵢ)/(1 - hᵢᵢ)``
  with ``hᵢᵢ = xcᵢᵀ(A + λI)⁻¹xcᵢ + 1/n`` (the bias is unpenalised), from the head's statistics.

A class with a single image cannot be left out (nothing of it would remain): its image gets no
estimate, and the estimate covers the classes with two or more images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fewshot.heads.ls import FittedLinear
from fewshot.heads.nn import FittedNN, pairwise_distance
from fewshot.heads.proto import FittedProto

__all__ = ["loo_logits", "estimate", "fit_temperature", "class_counts"]


def class_counts(fitted: FittedProto | FittedNN | FittedLinear) -> torch.Tensor:
    """Support images per class of a one-task fitted head, ``[K]`` int64."""
    if isinstance(fitted, FittedNN):
        return torch.bincount(fitted.support_labels[0].long(), minlength=fitted.way)
    counts = fitted.stats.counts if isinstance(fitted, FittedLinear) else fitted.counts
    return counts[0].long()


def _proto(fitted: FittedProto, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = fitted(z.unsqueeze(0))[0].float()
    n = fitted.counts[0][y]
    own = (fitted.sums[0][y] - z.double()) / (n - 1).clamp_min(1).unsqueeze(1)
    single = FittedProto(own.unsqueeze(1), torch.ones_like(n).unsqueeze(1), fitted.distance, fitted.scale)
    own_logit = single(z.double().unsqueeze(1))[:, 0, 0].float()
    own_logit = torch.where(n > 1, own_logit, torch.full_like(own_logit, -math.inf))
    return logits.scatter(1, y.unsqueeze(1), own_logit.unsqueeze(1))


def _nn(fitted: FittedNN) -> torch.Tensor:
    features, labels = fitted.support[0], fitted.support_labels[0].long()
    n = len(labels)
    d = pairwise_distance(features.unsqueeze(0), features.unsqueeze(0), fitted.distance)[0]
    d = d.masked_fill(torch.eye(n, dtype=torch.bool), math.inf)
    out = torch.full((n, fitted.way), math.inf)
    return -out.scatter_reduce(1, labels.expand(n, -1), d, reduce="amin")


def _ridge(fitted: FittedLinear, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h, fitted_y = fitted.stats.loo(fitted.lam, z)
    target = nn.functional.one_hot(y, fitted_y.shape[1]).double()
    loo = (fitted_y - h.unsqueeze(1) * target) / (1 - h).clamp_min(1e-12).unsqueeze(1)
    return loo.float()


def loo_logits(fitted: FittedProto | FittedNN | FittedLinear, z: torch.Tensor, y: torch.Tensor
               ) -> torch.Tensor:
    """Logits ``[n, K]`` of rows ``z`` with labels ``y``, each left out of the fit it is in
    (``nn``: the rows are the head's whole support set, ``z`` and ``y`` are not read)."""
    if isinstance(fitted, FittedProto):
        return _proto(fitted, z, y)
    if isinstance(fitted, FittedNN):
        return _nn(fitted)
    return _ridge(fitted, z, y)


def estimate(fitted: FittedProto | FittedNN | FittedLinear, z: torch.Tensor, y: torch.Tensor
             ) -> tuple[list[int], list[int], float | None]:
    """Per class, LOO-correct and estimated rows among those whose class holds >= 2 images, and the
    temperature fitted on their LOO logits (None when no row can be estimated)."""
    counts = class_counts(fitted)
    k = int(counts.shape[0])
    with torch.no_grad():
        logits = loo_logits(fitted, z, y)
    eligible = counts[y] > 1
    correct = (logits.argmax(1) == y) & eligible
    loo_correct = torch.bincount(y[correct], minlength=k).tolist()
    loo_total = torch.bincount(y[eligible], minlength=k).tolist()
    temperature = fit_temperature(logits[eligible], y[eligible]) if bool(eligible.any()) else None
    return loo_correct, loo_total, temperature


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Softmax temperature minimising the negative log-likelihood of ``labels`` (scipy, log-scale search)."""
    from scipy.optimize import minimize_scalar

    logits, labels = logits.double(), labels.long()
    finite = torch.isfinite(logits).all(1)
    logits, labels = logits[finite], labels[finite]
    if logits.shape[0] == 0:
        return 1.0
    spread = float((logits.max(1).values - logits.min(1).values).mean())
    if not spread > 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    centre = math.log(spread)
    res = minimize_scalar(nll, bounds=(centre - 12, centre + 6), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))
