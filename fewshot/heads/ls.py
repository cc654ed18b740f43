"""Least-squares head: closed-form ridge regression of one-hot targets, lambda by exact leave-one-out.

The fit is scikit-learn's ``Ridge(alpha=lam, fit_intercept=True)`` batched over episodes: features
and targets are centred per episode (the intercept is not penalised), then the smaller of the two
normal systems is solved by Cholesky in float64:

- primal ``W = (XcᵀXc + λI)⁻¹ XcᵀYc`` (a ``D x D`` system, used when ``D <= S``),
- dual ``W = Xcᵀ (XcXcᵀ + λI)⁻¹ Yc`` (an ``S x S`` system; the usual few-shot case ``S < D``),

and ``b = ȳ - x̄ W``. Both are differentiable, so the head can serve as a layer in episodic
training (R2-D2, Bertinetto et al. 2019).

Lambda selection (:func:`loo_select`) is exact leave-one-out over a grid with no refits. With an
unpenalised intercept the fit is a linear smoother ``ŷ = H y`` with
``H = 11ᵀ/n + Xc (XcᵀXc + λI)⁻¹ Xcᵀ`` (centring by the full-sample mean is exact because
``Xcᵀ1 = 0``), and the leave-one-out residual of penalised least squares is
``e_i = (y_i - ŷ_i) / (1 - H_ii)``. One eigendecomposition of the centred Gram matrix (or of the
covariance when ``D < S``), ``XcXcᵀ = U diag(s) Uᵀ``, gives ``H`` for every lambda at once:
``H = 11ᵀ/n + U diag(s / (s + λ)) Uᵀ``.

Criterion: by default the mean squared LOO residual (PRESS), i.e. the loss the head actually
minimises. It is continuous in lambda and has a unique minimiser, while LOO *classification* error
is a step function full of ties and is degenerate in 1-shot episodes (leaving out a class's only
example makes that class unpredictable for every lambda). ``criterion="error"`` (LOO
misclassification rate, ties broken by squared error) is available for many-shot episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import FewShotError
from .base import check_query, check_support, one_hot

DEFAULT_GRID: tuple[float, ...] = tuple(float(10.0 ** (k / 2)) for k in range(-8, 9))  # 1e-4 .. 1e4
CRITERIA = ("squared", "error")
SOLVERS = ("auto", "primal", "dual")


def _work_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return x.dtype if x.is_floating_point() else torch.float32
    if dtype == torch.float64 and x.device.type == "mps":  # MPS has no float64
        return torch.float32
    return dtype


def _batched(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    single = X.dim() == 2
    if single:
        X, Y = X.unsqueeze(0), Y.unsqueeze(0)
    if X.dim() != 3 or Y.dim() != 3 or X.shape[:2] != Y.shape[:2]:
        raise FewShotError(f"ridge needs X [E,n,D] and Y [E,n,C], got {tuple(X.shape)} and {tuple(Y.shape)}")
    return X, Y, single


def _lam_tensor(lam: float | torch.Tensor, e: int, like: torch.Tensor) -> torch.Tensor:
    lam_t = torch.as_tensor(lam, dtype=like.dtype, device=like.device).reshape(-1)
    if lam_t.numel() == 1:
        lam_t = lam_t.expand(e)
    if lam_t.shape != (e,):
        raise FewShotError(f"lambda must be a scalar or one value per episode ({e}), "
                           f"got {tuple(lam_t.shape)}")
    if not bool(torch.isfinite(lam_t).all()) or bool((lam_t <= 0).any()):
        raise FewShotError("ridge lambda must be finite and > 0")
    return lam_t


def _spd_solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Solve SPD systems ``A X = B`` by Cholesky; LU for any that lost definiteness to rounding."""
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info == 0).all()):
        return torch.cholesky_solve(B, L)
    return torch.linalg.solve(A, B)


def ridge_fit(X: torch.Tensor, Y: torch.Tensor, lam: float | torch.Tensor, *, fit_intercept: bool = True,
              solver: str = "auto",
              dtype: torch.dtype | None = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression, batched: ``(W [E,D,C], b [E,C])`` minimising
    ``||Y - XW - 1b||² + λ||W||²`` per episode (the intercept ``b`` is not penalised).

    ``X [E,n,D]`` (or ``[n,D]``), ``Y [E,n,C]``, ``lam`` a scalar or ``[E]``. ``solver``: ``"primal"``
    (``D x D`` system), ``"dual"`` (``n x n``) or ``"auto"`` (the smaller). Computed in ``dtype``
    (float64 by default, for 1-shot and duplicate-row systems) and returned in X's dtype.
    Differentiable in ``X`` and ``Y``.
    """
    if solver not in SOLVERS:
        raise FewShotError(f"unknown ridge solver {solver!r}; valid: {', '.join(SOLVERS)}")
    X, Y, single = _batched(X, Y)
    out_dtype = X.dtype if X.is_floating_point() else torch.float32
    wd = _work_dtype(X, dtype)
    X, Y = X.to(wd), Y.to(wd)
    e, n, d = X.shape
    lam_t = _lam_tensor(lam, e, X)
    if fit_intercept:
        xm, ym = X.mean(1, keepdim=True), Y.mean(1, keepdim=True)
        Xc, Yc = X - xm, Y - ym
    else:
        Xc, Yc = X, Y
    use_primal = solver == "primal" or (solver == "auto" and d <= n)
    if use_primal:
        A = Xc.transpose(1, 2) @ Xc + lam_t.view(e, 1, 1) * torch.eye(d, dtype=wd, device=X.device)
        W = _spd_solve(A, Xc.transpose(1, 2) @ Yc)
    else:
        G = Xc @ Xc.transpose(1, 2) + lam_t.view(e, 1, 1) * torch.eye(n, dtype=wd, device=X.device)
        W = Xc.transpose(1, 2) @ _spd_solve(G, Yc)
    b = (ym - xm @ W).squeeze(1) if fit_intercept else Y.new_zeros(e, Y.shape[2])
    W, b = W.to(out_dtype), b.to(out_dtype)
    return (W[0], b[0]) if single else (W, b)


def _centre_gram(K: torch.Tensor) -> torch.Tensor:
    """``J K J`` with ``J = I - 11ᵀ/n``: the Gram matrix of features centred in feature space."""
    return K - K.mean(1, keepdim=True) - K.mean(2, keepdim=True) + K.mean((1, 2), keepdim=True)


def _spectrum(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P [E,n,r], s [E,r])`` with ``Xc (XcᵀXc + λI)⁻¹ Xcᵀ = P diag(1/(s+λ)) Pᵀ`` for every λ."""
    n, d = Xc.shape[1:]
    if d < n:
        s, V = torch.linalg.eigh(Xc.transpose(1, 2) @ Xc)
        return Xc @ V, s.clamp_min(0)
    s, U = torch.linalg.eigh(Xc @ Xc.transpose(1, 2))
    s = s.clamp_min(0)
    return U * s.sqrt().unsqueeze(1), s


def _spectrum_gram(Kc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, U = torch.linalg.eigh(Kc)
    s = s.clamp_min(0)
    return U * s.sqrt().unsqueeze(1), s


def loo_residuals(X: torch.Tensor, Y: torch.Tensor, grid=DEFAULT_GRID, *, fit_intercept: bool = True,
                  precomputed: bool = False, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Exact leave-one-out residuals ``y_i - ŷ_{-i}`` of ridge for every lambda: ``[E, L, n, C]``.

    ``X`` is ``[E,n,D]`` features, or with ``precomputed=True`` an ``[E,n,n]`` kernel (Gram) matrix
    (kernel ridge, centred in feature space when ``fit_intercept``). One eigendecomposition per
    episode, no refits.
    """
    X, Y, _ = _batched(X, Y)
    wd = _work_dtype(X, dtype)
    X, Y = X.to(wd), Y.to(wd)
    n = X.shape[1]
    lams = torch.as_tensor(grid, dtype=wd, device=X.device).reshape(-1)
    if lams.numel() == 0 or not bool(torch.isfinite(lams).all()) or bool((lams <= 0).any()):
        raise FewShotError("the lambda grid must hold finite values > 0")
    if precomputed:
        if X.shape[2] != n:
            raise FewShotError(f"a precomputed Gram matrix must be [E,n,n], got {tuple(X.shape)}")
        P, s = _spectrum_gram(_centre_gram(X) if fit_intercept else X)
    else:
        P, s = _spectrum(X - X.mean(1, keepdim=True) if fit_intercept else X)
    Yc = Y - Y.mean(1, keepdim=True) if fit_intercept else Y
    f = 1.0 / (s.unsqueeze(1) + lams.view(1, -1, 1))                        # [E,L,r]
    fitted = torch.einsum("enr,elr,erc->elnc", P, f, P.transpose(1, 2) @ Yc)  # centred fits
    h = torch.einsum("enr,elr->eln", P * P, f) + (1.0 / n if fit_intercept else 0.0)
    return (Yc.unsqueeze(1) - fitted) / (1 - h).clamp_min(1e-12).unsqueeze(-1)


@dataclass
class LOOResult:
    """Per-episode chosen ``lam [E]``, its grid index, and the LOO criterion ``errors [E, L]``."""

    lam: torch.Tensor
    index: torch.Tensor
    errors: torch.Tensor
    grid: torch.Tensor = field(repr=False)


def loo_select(X: torch.Tensor, Y: torch.Tensor, grid=DEFAULT_GRID, *, fit_intercept: bool = True,
               criterion: str = "squared", precomputed: bool = False,
               dtype: torch.dtype | None = torch.float64) -> LOOResult:
    """Choose lambda per episode by exact leave-one-out over ``grid`` (see the module docstring).

    ``criterion="squared"``: mean squared LOO residual. ``"error"``: LOO misclassification rate
    (argmax of the LOO prediction vs argmax of ``Y``), ties broken by squared error. On equal
    criteria the smaller lambda wins.
    """
    if criterion not in CRITERIA:
        raise FewShotError(f"unknown LOO criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    with torch.no_grad():
        X, Y, _ = _batched(X.detach(), Y.detach())
        r = loo_residuals(X, Y, grid, fit_intercept=fit_intercept, precomputed=precomputed, dtype=dtype)
        lams = torch.as_tensor(grid, dtype=r.dtype, device=r.device).reshape(-1)
        sq = r.pow(2).mean((2, 3))                                              # [E,L]
        if criterion == "squared":
            errors, idx = sq, sq.argmin(1)
        else:
            Yw = Y.to(r.dtype).unsqueeze(1)
            wrong = ((Yw - r).argmax(-1) != Yw.argmax(-1).expand(-1, r.shape[1], -1)).to(r.dtype).mean(-1)
            best = wrong == wrong.min(1, keepdim=True).values
            errors, idx = wrong, sq.masked_fill(~best, float("inf")).argmin(1)
    return LOOResult(lams[idx], idx, errors, lams)


@dataclass
class FittedLinear:
    """A linear classifier per episode: ``logits = query @ weight + bias``."""

    weight: torch.Tensor  # [E,D,way]
    bias: torch.Tensor    # [E,way]
    lam: torch.Tensor     # [E]

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.weight.shape[1], self.weight.shape[0])
        return query.to(self.weight.dtype) @ self.weight + self.bias.unsqueeze(1)


@dataclass
class LSHead:
    """Ridge regression of one-hot targets (with an unpenalised bias) as a linear classifier.

    ``lam``: a fixed lambda, or ``"loo"`` (default) to pick it per episode from ``grid`` by exact
    leave-one-out (``criterion`` "squared" or "error"). Lambda selection is not differentiated
    (it is a hyperparameter); the fit at the chosen lambda is.
    """

    lam: float | str = "loo"
    grid: tuple[float, ...] = DEFAULT_GRID
    criterion: str = "squared"
    fit_intercept: bool = True
    solver: str = "auto"
    dtype: torch.dtype | None = torch.float64
    name: str = "ls"

    def __post_init__(self) -> None:
        if isinstance(self.lam, str):
            if self.lam != "loo":
                raise FewShotError(f"ls lam must be a number or 'loo', got {self.lam!r}")
        elif not float(self.lam) > 0:
            raise FewShotError(f"ls lam must be > 0, got {self.lam}")
        if self.criterion not in CRITERIA:
            raise FewShotError(f"unknown LOO criterion {self.criterion!r}; valid: {', '.join(CRITERIA)}")

    def choose_lambda(self, X: torch.Tensor, Y: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        if self.lam == "loo":
            return loo_select(X, Y, self.grid, fit_intercept=self.fit_intercept, criterion=self.criterion,
                              precomputed=precomputed, dtype=self.dtype).lam
        return torch.full((X.shape[0],), float(self.lam), dtype=torch.float64, device=X.device)

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> FittedLinear:
        check_support(support, support_labels, way)
        if not support.is_floating_point():
            support = support.float()
        Y = one_hot(support_labels, way, support.dtype)
        lam = self.choose_lambda(support, Y)
        W, b = ridge_fit(support, Y, lam, fit_intercept=self.fit_intercept, solver=self.solver,
                         dtype=self.dtype)
        return FittedLinear(W, b, lam)
