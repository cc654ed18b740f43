"""LS-MLP head: a one-hidden-layer network whose output layer is solved by least squares.

The hidden layer is either implicit (a kernel: kernel ridge regression, the infinitely wide
limit) or explicit and fixed (seeded random features followed by a nonlinearity: an
extreme-learning-machine / random-features network). Either way the output layer is the ridge
solution of the ``ls`` head, with lambda fixed or chosen by exact leave-one-out; no gradient
descent.

The default, ``kind="arccos"``, is the random ReLU layer of ``kind="random"`` taken infinitely
wide: with hidden units ``relu(w·x̃)``, ``x̃ = [scale·x, 1]`` and ``w ~ N(0, I)``, the inner product
of two hidden representations per unit tends to the degree-1 arc-cosine kernel (Cho and Saul
2009) ``k(x, y) = |x̃||ỹ| (sin θ + (π - θ) cos θ) / 2π`` with ``cos θ = x̃·ỹ / (|x̃||ỹ|)``. It needs
only inner products and norms, so a batch costs ``O(S(S+Q)D)`` (shared with the other heads,
:class:`~fewshot.heads.batch.EpisodeBatch`) instead of the ``O((S+Q)·D·width)`` of explicit random
features (``width / S`` times more: the hidden layer is much wider than a support set), and it
has no sampling noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from fewshot.errors import FewShotError
from fewshot.heads.base import appended_rows, check_extension, check_query, check_support, one_hot
from fewshot.heads.batch import EpisodeBatch
from fewshot.heads.ls import FittedLinear, LSHead, check_lam_grid
from fewshot.heads.ridge import CRITERIA, DEFAULT_GRID, dual_solve
from fewshot.options import at_least, finite_positive

KINDS = ("arccos", "random", "cosine", "rbf")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "cos": torch.cos}


def _kernel_rows(batch: EpisodeBatch, kind: str, param: torch.Tensor | None) -> torch.Tensor:
    """``[E, S+Q, S]`` kernel of every row of the batch with every support row, in the rows' dtype
    (the ``S x S`` block is solved in float64 by :func:`~fewshot.heads.ls.dual_solve`).

    ``param``: per-episode ``gamma`` (rbf) or input ``scale`` (arccos), see :meth:`LSMLPHead.params`.
    """
    s, dt = batch.n_support, batch.rows.dtype
    if kind == "rbf":
        return torch.exp(-param.to(dt).view(-1, 1, 1) * batch.sq_dist)
    inner, sq = batch.inner, batch.sq_norm
    if kind == "cosine":
        norm = sq.sqrt().clamp_min(1e-12)
        return inner / (norm.unsqueeze(2) * norm[:, :s].unsqueeze(1))
    scale2 = param.to(dt).square().view(-1, 1)
    norm = (scale2 * sq + 1).sqrt()                                          # |x̃|
    a = scale2.unsqueeze(2) * inner + 1                                       # x̃·ỹ
    nn_ = norm.unsqueeze(2) * norm[:, :s].unsqueeze(1)
    # keep acos / sqrt off their singular end point: finite gradients, the exact value at cos = 1
    c = (a / nn_).clamp(-1.0, 1.0 - torch.finfo(dt).eps)
    return nn_ * (torch.sqrt(1 - c * c) + (math.pi - torch.acos(c)) * c) / (2 * math.pi)


@dataclass
class FittedRandomFeatures:
    """Fixed random hidden layer ``act(scale * x @ R + c)`` then a least-squares linear output."""

    R: torch.Tensor        # [D, width]
    c: torch.Tensor        # [width]
    scale: torch.Tensor    # [E]
    activation: str
    output: FittedLinear | None   # None until the output layer is solved

    @property
    def way(self) -> int:
        return self.output.way

    def state_dict(self) -> dict:
        out = {"R": self.R, "c": self.c, "scale": self.scale, "activation": self.activation}
        return {**out, **{f"output.{k}": v for k, v in self.output.state_dict().items()}}

    @classmethod
    def from_state_dict(cls, d: dict) -> FittedRandomFeatures:
        output = FittedLinear.from_state_dict({k[7:]: v for k, v in d.items() if k.startswith("output.")})
        return cls(d["R"], d["c"], d["scale"], d["activation"], output)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scale.view(-1, 1, 1).to(x.dtype) * (x @ self.R.to(x.dtype)) + self.c.to(x.dtype)
        return ACTIVATIONS[self.activation](z)

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.R.shape[0], self.scale.shape[0])
        return self.output(self.hidden(query))


@dataclass
class FittedKernelRidge:
    """Kernel ridge with an unpenalised bias: ``logits = centred k(query, support) @ alpha + ȳ``."""

    support: torch.Tensor     # [E,S,D]
    alpha: torch.Tensor       # [E,S,way]
    y_mean: torch.Tensor      # [E,way]
    k_col_mean: torch.Tensor  # [E,S]  mean over support of k(x_j, x_i)
    k_mean: torch.Tensor      # [E]
    kind: str
    param: torch.Tensor | None  # per-episode gamma (rbf) or scale (arccos)
    lam: torch.Tensor
    support_labels: torch.Tensor  # [E,S] (what partial_fit refits on)

    @property
    def way(self) -> int:
        return self.alpha.shape[2]

    def state_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_state_dict(cls, d: dict) -> FittedKernelRidge:
        return cls(**d)

    @property
    def gamma(self) -> torch.Tensor | None:
        return self.param if self.kind == "rbf" else None

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.support.shape[-1], self.support.shape[0])
        batch = EpisodeBatch.from_parts(self.support, query)
        kq = _kernel_rows(batch, self.kind, self.param)[:, batch.n_support:]
        out = _centred_scores(kq, self.alpha, self.y_mean, self.k_col_mean, self.k_mean)
        return out.to(query.dtype if query.is_floating_point() else torch.float32)


def _centred_scores(kq: torch.Tensor, alpha: torch.Tensor, y_mean: torch.Tensor, k_col_mean: torch.Tensor,
                    k_mean: torch.Tensor) -> torch.Tensor:
    """``kc(query, support) @ alpha + ȳ`` in ``kq``'s dtype (``kc``: the kernel centred in feature space)."""
    dt = kq.dtype
    kq = kq - kq.mean(-1, keepdim=True) - k_col_mean.to(dt).unsqueeze(1) + k_mean.to(dt).view(-1, 1, 1)
    return kq @ alpha.to(dt) + y_mean.to(dt).unsqueeze(1)


@dataclass
class LSMLPHead:
    """Least-squares MLP.

    ``kind="arccos"`` (default): the infinitely wide ReLU network of ``"random"`` as a kernel (see
    the module docstring), with the same input ``scale``. ``kind="random"``: explicit hidden layer
    ``act(scale * x R + c)`` with ``R ~ N(0, 1)`` of shape ``[D, width]`` drawn from ``seed`` (the
    same for every episode), ``scale`` = 1 / RMS norm of the episode's support (so the
    pre-activations are O(1) whatever the feature scale), ``c ~ U(-π, π)`` for
    ``activation="cos"`` (random Fourier features) else ``N(0, 1)``; ``width``, ``activation`` and
    ``seed`` apply to this kind only. ``kind="cosine"`` / ``"rbf"``: kernel ridge; RBF ``gamma``
    defaults per episode to 1 / median squared distance between support points (the median
    heuristic). ``lam`` / ``grid`` / ``criterion``: as for :class:`~fewshot.heads.ls.LSHead`.
    """

    kind: str = "arccos"
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
        self.width = at_least(self.width, 1, "head 'ls-mlp' option width")
        self.seed = at_least(self.seed, 0, "head 'ls-mlp' option seed")
        if self.gamma is not None:
            self.gamma = finite_positive(self.gamma, "head 'ls-mlp' option gamma")
        check_lam_grid(self, "ls-mlp")
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

    def params(self, batch: EpisodeBatch) -> torch.Tensor | None:
        """Per-episode kernel parameter from the support rows: rbf ``gamma`` (given, or the median
        heuristic), arccos input ``scale`` (1 / RMS norm of the support), else None."""
        s, e = batch.n_support, batch.episodes
        if self.kind == "rbf":
            if self.gamma is not None:
                return torch.full((e,), float(self.gamma), dtype=torch.float64, device=batch.rows.device)
            d2 = batch.sq_dist[:, :s].detach().double()
            off = d2[:, ~torch.eye(s, dtype=torch.bool, device=d2.device)].reshape(e, -1)
            med = off.median(-1).values if off.shape[1] else torch.ones(e, dtype=d2.dtype, device=d2.device)
            return 1.0 / torch.where(med > 0, med, torch.ones_like(med))
        if self.kind == "arccos":
            return 1.0 / batch.sq_norm[:, :s].detach().double().mean(-1).sqrt().clamp_min(1e-12)
        return None

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int):
        check_support(support, support_labels, way)
        if not support.is_floating_point():
            support = support.float()
        if self.kind == "random":
            fitted = self._random_features(support)
            return replace(fitted, output=self._ls.fit(fitted.hidden(support), support_labels, way))
        batch = EpisodeBatch.from_parts(support)
        param = self.params(batch)
        K = _kernel_rows(batch, self.kind, param)
        alpha, y_mean, lam = self._solve(K, support_labels, way)
        return FittedKernelRidge(support, alpha, y_mean, K.mean(1), K.mean((1, 2)), self.kind, param, lam,
                                 support_labels)

    def _random_features(self, support: torch.Tensor) -> FittedRandomFeatures:
        """The seeded hidden layer, its input scale from ``support``; no output layer yet."""
        R, c = self._random_layer(support.shape[-1], support.device)
        scale = 1.0 / support.detach().pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-12)
        return FittedRandomFeatures(R, c, scale, self.activation, output=None)

    def partial_fit(self, fitted: FittedRandomFeatures | FittedKernelRidge | None, support: torch.Tensor,
                    support_labels: torch.Tensor, way: int) -> FittedRandomFeatures | FittedKernelRidge:
        """``kind="random"``: the hidden layer is fixed (seeded weights, the input scale of the
        first call), so the output layer grows as :meth:`LSHead.partial_fit` does on the hidden
        features, from sufficient statistics. Kernel kinds: a refit on the kept support plus the
        new rows (the dual system grows with the support; the kernel parameter is re-estimated)."""
        check_support(support, support_labels, way)
        if not support.is_floating_point():
            support = support.float()
        if self.kind != "random":
            if fitted is None:
                return self.fit(support, support_labels, way)
            return self.fit(*appended_rows(fitted.support, fitted.support_labels, fitted.way, support,
                                           support_labels, way), way)
        if fitted is None:
            fitted = self._random_features(support)
        else:
            check_extension((fitted.scale.shape[0], fitted.R.shape[0]), support, fitted.way, way)
        output = self._ls.partial_fit(fitted.output, fitted.hidden(support), support_labels, way)
        return replace(fitted, output=output)

    def _solve(self, K: torch.Tensor, labels: torch.Tensor, way: int):
        return dual_solve(K, one_hot(labels, way, torch.float64), self.lam, grid=self.grid,
                          criterion=self.criterion, fit_intercept=True)

    @property
    def batched(self) -> bool:
        """Whether :meth:`score_batch` applies (the kernel kinds; random features need the rows)."""
        return self.kind != "random"

    def score_batch(self, batch: EpisodeBatch, support_labels: torch.Tensor, way: int) -> torch.Tensor:
        """Logits ``[E,Q,way]``; the kernel kinds from the shared inner products."""
        if self.kind == "random":
            return self.fit(batch.support, support_labels, way)(batch.query)
        batch.check(support_labels, way)
        s = batch.n_support
        rows = _kernel_rows(batch, self.kind, self.params(batch))
        K = rows[:, :s]
        alpha, y_mean, _ = self._solve(K, support_labels, way)
        out = _centred_scores(rows[:, s:], alpha, y_mean, K.mean(1), K.mean((1, 2)))
        return out.to(batch.rows.dtype)
