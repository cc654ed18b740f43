"""Least-squares head: ridge regression of one-hot targets (an unpenalised bias), λ by exact
leave-one-out, as a linear classifier per episode.

:meth:`LSHead.fit` solves every episode of a batch in closed form (:func:`~fewshot.heads.ridge.ridge_fit`
maths: the ``S x S`` dual system when ``D > S``), differentiably, so the head also serves as a
layer in episodic training (R2-D2). :meth:`LSHead.score_batch` gives the same logits from the
inner products shared with the other heads in evaluation. :meth:`LSHead.partial_fit` keeps the
sufficient statistics instead (:class:`~fewshot.heads.ridge_stats.RidgeStats`), so a fit grows by
new shots or classes without its old rows: the first call chooses λ by exact leave-one-out on its
rows, as ``fit`` does; later calls, which no longer have the old rows, by generalised
cross-validation from the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewshot.errors import FewShotError
from fewshot.heads.base import check_extension, check_query, check_support, one_hot
from fewshot.heads.batch import EpisodeBatch
from fewshot.heads.ridge import (
    CRITERIA,
    DEFAULT_GRID,
    SOLVERS,
    _cancels,
    _centre_gram,
    _gram,
    _small_system,
    _solve_centred,
    _work_dtype,
    dual_solve,
    loo_select,
    ridge_fit,
)
from fewshot.heads.ridge_stats import RidgeRows, RidgeStats, ridge_statistics, stats_from_state_dict
from fewshot.options import check, finite_positive


@dataclass
class FittedLinear:
    """A linear classifier per episode: ``logits = query @ weight + bias``; ``stats``: the ridge
    statistics it was solved from (:meth:`LSHead.partial_fit` only; what it extends)."""

    weight: torch.Tensor  # [E,D,way]
    bias: torch.Tensor    # [E,way]
    lam: torch.Tensor     # [E]
    stats: RidgeStats | RidgeRows | None = None

    @property
    def way(self) -> int:
        return self.weight.shape[2]

    def state_dict(self) -> dict:
        """``weight``, ``bias``, ``lam`` and, when kept, the statistics (``xtx``, ``xsum``, ``xty``,
        ``counts``; with fewer rows than features the rows: ``rows``, ``labels``, ``counts``)."""
        out = {"weight": self.weight, "bias": self.bias, "lam": self.lam}
        return out if self.stats is None else {**out, **self.stats.state_dict()}

    @classmethod
    def from_state_dict(cls, d: dict) -> FittedLinear:
        lam = torch.as_tensor(d["lam"], dtype=torch.float64).reshape(-1)
        return cls(d["weight"], d["bias"], lam, stats_from_state_dict(d))

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.weight.shape[1], self.weight.shape[0])
        # (Wᵀ qᵀ)ᵀ: the long query dimension as the matmul's wide output (one streaming pass over
        # the queries, rather than a product with only ``way`` output columns)
        out = torch.baddbmm(self.bias.unsqueeze(2), self.weight.transpose(1, 2),
                            query.to(self.weight.dtype).transpose(1, 2))
        return out.transpose(1, 2).contiguous()


def check_lam_grid(head, kind: str) -> None:
    """``head.lam`` is ``"loo"`` or a finite number > 0; every ``head.grid`` value is one too."""
    if isinstance(head.lam, str):
        check(head.lam == "loo", f"head '{kind}' option lam", head.lam, "'loo' or a finite number > 0")
    else:
        head.lam = finite_positive(head.lam, f"head '{kind}' option lam")
    grid = head.grid if isinstance(head.grid, (tuple, list)) else (head.grid,)
    check(len(grid) > 0, f"head '{kind}' option grid", head.grid, "one or more finite numbers > 0")
    head.grid = tuple(finite_positive(v, f"head '{kind}' option grid") for v in grid)


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
        check_lam_grid(self, "ls")
        check(isinstance(self.fit_intercept, bool), "head 'ls' option fit_intercept", self.fit_intercept,
              "true or false")
        if self.solver not in SOLVERS:
            raise FewShotError(f"unknown ls solver {self.solver!r}; valid: {', '.join(SOLVERS)}")
        if self.criterion not in CRITERIA:
            raise FewShotError(f"unknown LOO criterion {self.criterion!r}; valid: {', '.join(CRITERIA)}")

    def choose_lambda(self, X: torch.Tensor, Y: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        if self.lam == "loo":
            return loo_select(X, Y, self.grid, fit_intercept=self.fit_intercept, criterion=self.criterion,
                              precomputed=precomputed, dtype=self.dtype).lam
        return torch.full((X.shape[0],), float(self.lam), dtype=torch.float64, device=X.device)

    def _dual(self, support: torch.Tensor) -> bool:
        d, n = support.shape[-1], support.shape[-2]
        return self.solver == "dual" or (self.solver == "auto" and d > n)

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> FittedLinear:
        check_support(support, support_labels, way)
        if not support.is_floating_point():
            support = support.float()
        if not self._dual(support):  # D <= S: the D x D primal system, all in the work dtype
            Y = one_hot(support_labels, way, support.dtype)
            lam = self.choose_lambda(support, Y)
            W, b = ridge_fit(support, Y, lam, fit_intercept=self.fit_intercept, solver=self.solver,
                             dtype=self.dtype)
            return FittedLinear(W, b, lam)
        return self._fit_dual(support, support_labels, way)

    def _fit_dual(self, X: torch.Tensor, labels: torch.Tensor, way: int) -> FittedLinear:
        """The ``S x S`` Gram in the features' dtype, the small system (LOO, solve) in the work
        dtype, centred there exactly (``J K J``) from one conversion of ``K``."""
        wd = _work_dtype(X, self.dtype)
        Kc = (X @ X.transpose(1, 2)).to(wd, copy=True)  # uncentred K
        row_mean = Kc.mean(1)                          # x_i·x̄ (K is symmetric)
        trace = Kc.diagonal(dim1=1, dim2=2).sum(-1)
        if self.fit_intercept:
            _centre_gram(Kc, inplace=True)             # J K J on our own copy
        xm = None
        if self.fit_intercept and X.dtype != wd and _cancels(trace, Kc):
            # a large common offset: the low-precision Gram lost the spread; centre the rows first
            xm = X.mean(1, keepdim=True)
            Kc = _small_system(_gram(X, fit_intercept=True), wd, fit_intercept=True)
        Y = one_hot(labels, way, wd)
        alpha, y_mean, lam = _solve_centred(Kc, Y, self.lam, grid=self.grid, criterion=self.criterion,
                                            fit_intercept=self.fit_intercept, owned=True)
        a = alpha.to(X.dtype)
        # columns of alpha sum to 0 (Kc 1 = 0), so Xcᵀα = Xᵀα, and x̄·Xᵀα = mean_i (Kα)_i
        W = (a.transpose(1, 2) @ X).transpose(1, 2)      # [E,D,way], a view of Wᵀ [E,way,D]
        if not self.fit_intercept:
            b = y_mean.to(X.dtype)
        elif xm is None:
            b = (y_mean - (row_mean.unsqueeze(1) @ alpha).squeeze(1)).to(X.dtype)
        else:
            b = y_mean.to(X.dtype) - (xm @ W).squeeze(1)
        return FittedLinear(W, b, lam)

    def partial_fit(self, fitted: FittedLinear | None, support: torch.Tensor, support_labels: torch.Tensor,
                    way: int) -> FittedLinear:
        """Add ``support`` to the ridge statistics of ``fitted`` (None: start from nothing) and
        re-solve: labels below the fitted way add shots to their class, the others are new classes.

        λ: the fixed ``lam``; else with ``fitted=None`` the exact leave-one-out choice on these rows
        (as :meth:`fit`), and afterwards generalised cross-validation from the statistics (the old
        rows are gone). The statistics and the solve are float64; weights come back in the
        features' dtype. Always fits an intercept.
        """
        check_support(support, support_labels, way)
        if not self.fit_intercept:
            raise FewShotError("partial_fit of the ls head fits an intercept; use fit_intercept=True")
        new = ridge_statistics(support, support_labels, way)
        if fitted is not None:
            if fitted.stats is None:
                raise FewShotError("this ls fit keeps no statistics to extend (it came from fit(); "
                                   "start it with partial_fit(None, ...))")
            check_extension(tuple(fitted.stats.xsum.shape), support, fitted.way, way)
            new = fitted.stats + new
        if self.lam != "loo":
            lam = torch.full((support.shape[0],), float(self.lam), dtype=torch.float64, device=support.device)
        elif fitted is None:
            rows = support.double()
            lam = self.choose_lambda(rows, one_hot(support_labels, way, rows.dtype))
        else:
            lam = new.gcv(self.grid)[0]
        W, b = new.solve(lam)
        dt = support.dtype if support.is_floating_point() else torch.float32
        return FittedLinear(W.to(dt), b.to(dt), lam, new)

    def score_batch(self, batch: EpisodeBatch, support_labels: torch.Tensor, way: int) -> torch.Tensor:
        """Logits ``[E,Q,way]`` from the shared inner products: ``(q - x̄)·Xcᵀ α + ȳ``, i.e.
        ``q W + b`` of :meth:`fit` without forming ``W`` or reading the query features again."""
        batch.check(support_labels, way)
        s = batch.n_support
        if self.fit_intercept:
            K, kq = batch.centred_ss, batch.centred_qs
        else:
            K, kq = batch.inner[:, :s], batch.inner[:, s:]
        Y = one_hot(support_labels, way, torch.float64)
        alpha, y_mean, _ = dual_solve(K, Y, self.lam, grid=self.grid, criterion=self.criterion,
                                      fit_intercept=self.fit_intercept, dtype=self.dtype)
        dt = batch.rows.dtype
        return kq @ alpha.to(dt) + y_mean.to(dt).unsqueeze(1)
