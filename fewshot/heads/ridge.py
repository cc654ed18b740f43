"""Closed-form ridge regression of one-hot targets batched over episodes, lambda by exact
leave-one-out: the solver of the ``ls`` and ``ls-mlp`` heads (:mod:`fewshot.heads.ls`).

The fit is scikit-learn's ``Ridge(alpha=lam, fit_intercept=True)`` batched over episodes: features
and targets are centred per episode (the intercept is not penalised), then the smaller of the two
normal systems is solved in float64:

- primal ``W = (XcᵀXc + λI)⁻¹ XcᵀYc`` (a ``D x D`` system, used when ``D <= S``),
- dual ``W = Xcᵀ (XcXcᵀ + λI)⁻¹ Yc`` (an ``S x S`` system; the usual few-shot case ``S < D``),

and ``b = ȳ - x̄ W``. Speed: the ``O(S²D)`` Gram product and ``W = Xcᵀα`` run in the features'
dtype (float32 matmuls); only the small ``S x S`` system (eigendecomposition for leave-one-out,
then the solve) is float64, and the ``S x S`` Gram is re-centred there exactly. With λ chosen by
leave-one-out, ``α`` comes from the same eigendecomposition (no factorisation per λ); when a
gradient is needed it comes from a Cholesky solve instead. Both are differentiable, so the head
can serve as a layer in episodic training (R2-D2, Bertinetto et al. 2019). In evaluation
(:meth:`~fewshot.heads.ls.LSHead.score_batch`) the logits ``(q - x̄)·Xcᵀα + ȳ`` come from inner
products shared with the other heads (:class:`~fewshot.heads.batch.EpisodeBatch`), without
forming ``W``.

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

from fewshot.errors import FewShotError

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
    if bool((info == 0).all()):  # two triangular solves: cheaper than cholesky_solve on batches
        return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, B, upper=False),
                                             upper=True)
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


def _centre_gram(K: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``J K J`` with ``J = I - 11ᵀ/n``: the Gram matrix of features centred in feature space
    (``inplace``: overwrite ``K``, a temporary of the caller's)."""
    rows, cols, total = K.mean(1, keepdim=True), K.mean(2, keepdim=True), K.mean((1, 2), keepdim=True)
    if inplace:
        return K.sub_(rows).sub_(cols).add_(total)
    return K - rows - cols + total


def _gram(X: torch.Tensor, fit_intercept: bool) -> torch.Tensor:
    """``XcXcᵀ`` of features centred per episode, in the features' own dtype (the ``O(n²D)`` part)."""
    Xc = X - X.mean(1, keepdim=True) if fit_intercept else X
    return Xc @ Xc.transpose(1, 2)


def _small_system(K: torch.Tensor, wd: torch.dtype, fit_intercept: bool) -> torch.Tensor:
    """An ``n x n`` Gram / kernel matrix in the work dtype, (with an intercept) exactly centred
    there (``J K J``), so ``1`` is in its null space to working precision. Not re-symmetrised:
    Cholesky and ``eigh`` read one triangle only."""
    K = K.to(wd)
    return _centre_gram(K) if fit_intercept else K


def _cancels(trace: torch.Tensor, Kc: torch.Tensor, digits: float = 3.0) -> bool:
    """Whether centring a low-precision Gram of trace ``trace [E]`` into ``Kc = JKJ`` lost more than
    ``digits`` digits: the rows' common offset dominates their spread (``tr K`` vs ``tr JKJ``)."""
    centred = Kc.diagonal(dim1=1, dim2=2).sum(-1)
    return bool((trace > 10.0 ** digits * centred.clamp_min(1e-300)).any())


def _spectrum(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P [E,n,r], s [E,r])`` with ``Xc (XcᵀXc + λI)⁻¹ Xcᵀ = P diag(1/(s+λ)) Pᵀ`` for every λ
    (``D < n``: from the ``D x D`` covariance)."""
    s, V = torch.linalg.eigh(Xc.transpose(1, 2) @ Xc)
    return Xc @ V, s.clamp_min(0)


def _eig(Kc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors ``U [E,n,n]`` and eigenvalues ``s [E,n]`` (>= 0) of a PSD ``[E,n,n]`` matrix."""
    s, U = torch.linalg.eigh(Kc)
    return U, s.clamp_min(0)


def _loo_from_spectrum(P: torch.Tensor, f: torch.Tensor, Yc: torch.Tensor, n: int,
                       fit_intercept: bool) -> torch.Tensor:
    """LOO residuals ``[E,L,n,C]`` of the smoother ``H = 11ᵀ/n + P diag(f_l) Pᵀ`` for every ``l``
    (``f [E,L,r]``)."""
    e, n_, r = P.shape
    G = P.transpose(1, 2) @ Yc                                               # [E,r,C]
    # fitted[e,l,i,c] = sum_r f[e,l,r] P[e,i,r] G[e,r,c]: one batched matmul over (i, c)
    PG = (P.transpose(1, 2).unsqueeze(-1) * G.unsqueeze(2)).reshape(e, r, -1)   # [E,r,n*C]
    fitted = (f @ PG).view(e, f.shape[1], n_, -1)                            # [E,L,n,C]
    h = f @ (P * P).transpose(1, 2)                                          # [E,L,n]
    if fit_intercept:
        h = h + 1.0 / n
    return (Yc.unsqueeze(1) - fitted) / (1 - h).clamp_min(1e-12).unsqueeze(-1)


def _grid(grid, wd: torch.dtype, device: torch.device) -> torch.Tensor:
    lams = torch.as_tensor(grid, dtype=wd, device=device).reshape(-1)
    if lams.numel() == 0 or not bool(torch.isfinite(lams).all()) or bool((lams <= 0).any()):
        raise FewShotError("the lambda grid must hold finite values > 0")
    return lams


def _gram_loo(Kc: torch.Tensor, Yc: torch.Tensor, lams: torch.Tensor, fit_intercept: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(residuals [E,L,n,C], U, s)`` from one eigendecomposition of the (centred) Gram ``Kc``."""
    U, s = _eig(Kc)
    f = s.unsqueeze(1) / (s.unsqueeze(1) + lams.view(1, -1, 1))                 # s / (s + λ)
    return _loo_from_spectrum(U, f, Yc, Kc.shape[1], fit_intercept), U, s


def loo_residuals(X: torch.Tensor, Y: torch.Tensor, grid=DEFAULT_GRID, *, fit_intercept: bool = True,
                  precomputed: bool = False, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Exact leave-one-out residuals ``y_i - ŷ_{-i}`` of ridge for every lambda: ``[E, L, n, C]``.

    ``X`` is ``[E,n,D]`` features, or with ``precomputed=True`` an ``[E,n,n]`` kernel (Gram) matrix
    (kernel ridge, centred in feature space when ``fit_intercept``). One eigendecomposition per
    episode, no refits. The ``O(n²D)`` Gram product runs in the features' dtype; the small
    ``n x n`` (or ``D x D`` when ``D < n``) eigenproblem and the residuals in ``dtype``.
    """
    X, Y, _ = _batched(X, Y)
    wd = _work_dtype(X, dtype)
    n, d = X.shape[1], X.shape[2]
    lams = _grid(grid, wd, X.device)
    Y = Y.to(wd)
    Yc = Y - Y.mean(1, keepdim=True) if fit_intercept else Y
    if precomputed:
        if d != n:
            raise FewShotError(f"a precomputed Gram matrix must be [E,n,n], got {tuple(X.shape)}")
        return _gram_loo(_small_system(X, wd, fit_intercept), Yc, lams, fit_intercept)[0]
    if not X.is_floating_point():
        X = X.float()
    if d < n:
        Xw = X.to(wd)
        P, s = _spectrum(Xw - Xw.mean(1, keepdim=True) if fit_intercept else Xw)
        f = 1.0 / (s.unsqueeze(1) + lams.view(1, -1, 1))
        return _loo_from_spectrum(P, f, Yc, n, fit_intercept)
    return _gram_loo(_small_system(_gram(X, fit_intercept), wd, fit_intercept), Yc, lams, fit_intercept)[0]


def _select(r: torch.Tensor, Y: torch.Tensor, criterion: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index [E], errors [E,L])`` of the grid value each episode chooses from LOO residuals."""
    sq = r.pow(2).mean((2, 3))                                                  # [E,L]
    if criterion == "squared":
        return sq.argmin(1), sq
    Yw = Y.to(r.dtype).unsqueeze(1)
    wrong = ((Yw - r).argmax(-1) != Yw.argmax(-1).expand(-1, r.shape[1], -1)).to(r.dtype).mean(-1)
    best = wrong == wrong.min(1, keepdim=True).values
    return sq.masked_fill(~best, float("inf")).argmin(1), wrong


def dual_solve(K: torch.Tensor, Y: torch.Tensor, lam: float | str = "loo", *, grid=DEFAULT_GRID,
               criterion: str = "squared", fit_intercept: bool = True,
               dtype: torch.dtype | None = torch.float64
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel ridge in the dual from a Gram / kernel matrix ``K [E,n,n]`` and targets ``Y [E,n,C]``:
    ``(alpha [E,n,C], y_mean [E,C], lam [E])`` with ``alpha = (Kc + λI)⁻¹ Yc`` (``Kc = JKJ``
    with an intercept), so that scores are ``kc(x, support) @ alpha + y_mean``.

    ``lam="loo"`` picks λ per episode from ``grid`` by exact leave-one-out; then, when no gradient
    is needed, the same eigendecomposition gives ``alpha`` (no factorisation per λ). Otherwise a
    Cholesky solve at the chosen λ (differentiable in ``K``). Small-system work in ``dtype``.
    """
    wd = _work_dtype(K, dtype)
    return _solve_centred(_small_system(K, wd, fit_intercept), Y, lam, grid=grid, criterion=criterion,
                          fit_intercept=fit_intercept)


def _solve_centred(Kc: torch.Tensor, Y: torch.Tensor, lam: float | str, *, grid, criterion: str,
                   fit_intercept: bool, owned: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`dual_solve` on a system already in the work dtype and (with an intercept) centred.
    ``owned``: ``Kc`` is a temporary of the caller's, which the solve may overwrite."""
    wd = Kc.dtype
    e, n, _ = Kc.shape
    Y = Y.to(wd)
    y_mean = Y.mean(1) if fit_intercept else Y.new_zeros(e, Y.shape[2])
    Yc = Y - y_mean.unsqueeze(1)
    need_grad = torch.is_grad_enabled() and Kc.requires_grad
    if lam == "loo":
        if criterion not in CRITERIA:
            raise FewShotError(f"unknown LOO criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
        lams = _grid(grid, wd, Kc.device)
        with torch.no_grad():
            r, U, s = _gram_loo(Kc.detach(), Yc, lams, fit_intercept)
            idx, _ = _select(r, Y, criterion)
        lam_t = lams[idx]
        if not need_grad:
            alpha = U @ ((U.transpose(1, 2) @ Yc) / (s + lam_t.unsqueeze(1)).unsqueeze(2))
            return alpha, y_mean, lam_t
    else:
        lam_t = _lam_tensor(lam, e, Kc)
    if owned and not Kc.requires_grad:
        A = Kc
        A.diagonal(dim1=1, dim2=2).add_(lam_t.unsqueeze(1))
    else:
        A = Kc + torch.diag_embed(lam_t.unsqueeze(1).expand(e, n))
    alpha = _spd_solve(A, Yc)
    return alpha, y_mean, lam_t


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
        idx, errors = _select(r, Y, criterion)
    return LOOResult(lams[idx], idx, errors, lams)
