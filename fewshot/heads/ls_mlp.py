"""LS-MLP head: a one-hidden-layer network whose output layer is solved by least squares.

The hidden layer is either explicit and fixed (seeded random features followed by a
nonlinearity: an extreme-learning-machine / random-features network) or implicit (a cosine or
RBF kernel: kernel ridge regression, the infinitely wide limit). Either way the output layer is
the ridge solution of the ``ls`` head, with lambda fixed or chosen by exact leave-one-out; no
gradient descent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import FewShotError
from .base import check_query, check_support, one_hot, sq_euclidean
from .ls import CRITERIA, DEFAULT_GRID, FittedLinear, LSHead, _centre_gram, _spd_solve, _work_dtype

KINDS = ("random", "cosine", "rbf")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "cos": torch.cos}


def _kernel(a: torch.Tensor, b: torch.Tensor, kind: str, gamma: torch.Tensor | None) -> torch.Tensor:
    if kind == "cosine":
        an, bn = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
        return an @ bn.transpose(1, 2)
    return torch.exp(-gamma.view(-1, 1, 1) * sq_euclidean(a, b))


@dataclass
class FittedRandomFeatures:
    """Fixed random hidden layer ``act(scale * x @ R + c)`` then a least-squares linear output."""

    R: torch.Tensor        # [D, width]
    c: torch.Tensor        # [width]
    scale: torch.Tensor    # [E]
    activation: str
    output: FittedLinear

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scale.view(-1, 1, 1).to(x.dtype) * (x @ self.R.to(x.dtype)) + self.c.to(x.dtype)
        return ACTIVATIONS[self.activation](z)

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.R.shape[0], self.scale.shape[0])
        return self.output(self.hidden(query))


@dataclass
class FittedKernelRidge:
    """Kernel ridge with an unpenalised bias: ``logits = centred k(query, support) @ alpha + ȳ``."""

    support: torch.Tensor   # [E,S,D]
    alpha: torch.Tensor     # [E,S,way]
    y_mean: torch.Tensor    # [E,way]
    k_col_mean: torch.Tensor  # [E,S]  mean over support of k(x_j, x_i)
    k_mean: torch.Tensor    # [E]
    kind: str
    gamma: torch.Tensor | None
    lam: torch.Tensor

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.support.shape[-1], self.support.shape[0])
        kq = _kernel(query.to(self.support.dtype), self.support, self.kind, self.gamma)  # [E,Q,S]
        kq = kq - kq.mean(-1, keepdim=True) - self.k_col_mean.unsqueeze(1) + self.k_mean.view(-1, 1, 1)
        out = kq.to(self.alpha.dtype) @ self.alpha + self.y_mean.unsqueeze(1)
        return out.to(query.dtype if query.is_floating_point() else torch.float32)


@dataclass
class LSMLPHead:
    """Least-squares MLP.

    ``kind="random"``: hidden layer ``act(scale * x R + c)`` with ``R ~ N(0, 1)`` of shape
    ``[D, width]`` drawn from ``seed`` (the same for every episode), ``scale`` = 1 / RMS norm of the
    episode's support (so the pre-activations are O(1) whatever the feature scale), ``c ~ U(-π, π)``
    for ``activation="cos"`` (random Fourier features) else ``N(0, 1)``.
    ``kind="cosine"`` / ``"rbf"``: kernel ridge; RBF ``gamma`` defaults per episode to
    1 / median squared distance between support points (the median heuristic).
    ``lam`` / ``grid`` / ``criterion``: as for :class:`~fewshot.heads.ls.LSHead`.
    """

    kind: str = "random"
    width: int = 1024
    activation: str = "relu"
    gamma: float | None = None
    lam: float | str = "loo"
    grid: tuple[float, ...] = DEFAULT_GRID
    criterion: str = "squared"
    seed: int = 0
    name: str = "ls-mlp"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FewShotError(f"unknown ls-mlp kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise FewShotError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if int(self.width) < 1:
            raise FewShotError(f"ls-mlp width must be positive, got {self.width}")
        if self.criterion not in CRITERIA:
            raise FewShotError(f"unknown LOO criterion {self.criterion!r}; valid: {', '.join(CRITERIA)}")
        self._ls = LSHead(lam=self.lam, grid=self.grid, criterion=self.criterion)

    def _random_layer(self, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(int(self.seed))
        R = torch.randn(d, int(self.width), generator=g)
        if self.activation == "cos":
            c = (torch.rand(int(self.width), generator=g) * 2 - 1) * math.pi
        else:
            c = torch.randn(int(self.width), generator=g)
        return R.to(device), c.to(device)

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int):
        check_support(support, support_labels, way)
        if not support.is_floating_point():
            support = support.float()
        if self.kind == "random":
            R, c = self._random_layer(support.shape[-1], support.device)
            scale = 1.0 / support.detach().pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-12)
            fitted = FittedRandomFeatures(R, c, scale, self.activation, output=None)  # type: ignore[arg-type]
            fitted.output = self._ls.fit(fitted.hidden(support), support_labels, way)
            return fitted
        return self._fit_kernel(support, support_labels, way)

    def _fit_kernel(self, support: torch.Tensor, labels: torch.Tensor, way: int) -> FittedKernelRidge:
        wd = _work_dtype(support, torch.float64)
        X = support.to(wd)
        e, n, _ = X.shape
        gamma = None
        if self.kind == "rbf":
            if self.gamma is not None:
                gamma = torch.full((e,), float(self.gamma), dtype=wd, device=X.device)
            else:
                d2 = sq_euclidean(X, X).detach()
                off = d2[:, ~torch.eye(n, dtype=torch.bool, device=X.device)].reshape(e, -1)
                med = off.median(-1).values if off.shape[1] else torch.ones(e, dtype=wd, device=X.device)
                gamma = 1.0 / torch.where(med > 0, med, torch.ones_like(med))
        K = _kernel(X, X, self.kind, gamma)
        Y = one_hot(labels, way, wd)
        lam = self._ls.choose_lambda(K, Y, precomputed=True).to(wd)
        y_mean = Y.mean(1)
        Kc = _centre_gram(K)
        alpha = _spd_solve(Kc + lam.view(-1, 1, 1) * torch.eye(n, dtype=wd, device=X.device),
                           Y - y_mean.unsqueeze(1))
        return FittedKernelRidge(X, alpha, y_mean, K.mean(1), K.mean((1, 2)), self.kind, gamma, lam)
