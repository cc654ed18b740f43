"""`EpisodeBatch`: a chunk of gathered episodes with the inner products every kernel head needs.

Prototype, nearest-neighbour, least-squares and kernel heads all depend on the features only
through inner products between query and support rows and among support rows, plus row norms:

- squared euclidean distances ``|q - s|² = |q|² - 2 q·s + |s|²`` (nn, proto, rbf kernel),
- prototypes: ``q·p_c`` and ``|p_c|²`` are averages of ``q·s`` and ``s·s'`` over a class,
- ridge in the dual: ``logits = (q - x̄)·Xcᵀ α + ȳ`` with ``α = (XcXcᵀ + λI)⁻¹ Yc``,
- cosine and arc-cosine kernels: functions of ``x·y``, ``|x|`` and ``|y|``.

So an evaluation chunk computes ``[E, S+Q, S]`` inner products once, with one batched matmul in
the features' dtype (float32), and every head derives its logits from it in ``O(E·Q·S)``
instead of each head re-reading the ``[E, Q, D]`` query features (``fewshot.evaluation.evaluate``). Rows are
centred on the episode's support mean first (distances and the centred ridge Gram need no
cancellation of a large common offset, e.g. of non-negative ReLU features); the uncentred inner
products that cosine kernels need are recovered exactly in algebra from the centred ones and the
projections on the mean, which come out of the same matmul.
"""

from __future__ import annotations

from functools import cached_property

import torch

from fewshot.errors import FewShotError
from fewshot.heads.base import check_support


class EpisodeBatch:
    """``rows [E, S+Q, D]``: the support rows of every episode followed by its query rows.

    Quantities are computed lazily and cached; everything is batched over episodes and
    differentiable. ``support`` / ``query`` are the raw rows (for heads without a batch path).

    ``origin``: the rows are given relative to it (``x - origin``; ``[D]`` or ``[E, D]``), with
    ``origin_proj [E, S+Q]`` = ``(x - origin)·origin``; ``row_sq`` (optional): ``|x - origin|²``
    of every row, ``[E, S+Q]``, if known (evaluation computes it once per image). Evaluation
    centres the whole feature matrix once on its global mean (:func:`centred_features`), so the
    per-episode centring below never cancels a large common offset and costs no pass over the rows.
    """

    def __init__(self, rows: torch.Tensor, n_support: int, *, origin: torch.Tensor | None = None,
                 origin_proj: torch.Tensor | None = None, raw: torch.Tensor | None = None,
                 row_sq: torch.Tensor | None = None):
        if rows.dim() != 3 or not 0 < n_support <= rows.shape[1]:
            raise FewShotError(f"episode rows must be [E, S+Q, D] with 1 <= S <= S+Q, got "
                               f"{tuple(rows.shape)} and S={n_support}")
        if not rows.is_floating_point():
            rows = rows.float()
        if (origin is None) != (origin_proj is None):
            raise FewShotError("origin and origin_proj go together")
        self.rows = rows
        self.n_support = int(n_support)
        self.origin = origin
        self.origin_proj = origin_proj
        self._raw = raw
        if row_sq is not None:
            self._row_sq = row_sq

    @classmethod
    def centred(cls, raw: torch.Tensor, n_support: int) -> EpisodeBatch:
        """A batch of raw rows ``[E, S+Q, D]`` re-expressed relative to each episode's support mean
        (exact centred products whatever the features' offset; one extra pass over the rows)."""
        if not raw.is_floating_point():
            raw = raw.float()
        mean = raw[:, :n_support].mean(1)
        rows = raw - mean.unsqueeze(1)
        proj = (rows @ mean.unsqueeze(-1)).squeeze(-1)
        return cls(rows, n_support, origin=mean, origin_proj=proj, raw=raw)

    @classmethod
    def from_parts(cls, support: torch.Tensor, query: torch.Tensor | None = None) -> EpisodeBatch:
        """A batch from ``support [E,S,D]`` and ``query [E,Q,D]`` (see :meth:`centred`)."""
        dtype = support.dtype if support.is_floating_point() else torch.float32
        raw = support.to(dtype) if query is None else torch.cat([support.to(dtype), query.to(dtype)], 1)
        return cls.centred(raw, support.shape[1])

    # ------------------------------------------------------------------ raw rows
    @cached_property
    def raw(self) -> torch.Tensor:
        """The rows in the features' own coordinates."""
        if self._raw is not None:
            return self._raw
        if self.origin is None:
            return self.rows
        o = self.origin
        return self.rows + (o.unsqueeze(1) if o.dim() == 2 else o)

    @property
    def support(self) -> torch.Tensor:
        return self.raw[:, :self.n_support]

    @property
    def query(self) -> torch.Tensor:
        return self.raw[:, self.n_support:]

    def check(self, support_labels: torch.Tensor, way: int) -> None:
        """Validate the support labels against the batch (shapes and range), as ``Head.fit`` does."""
        check_support(self.rows[:, :self.n_support], support_labels, way)

    @property
    def episodes(self) -> int:
        return self.rows.shape[0]

    @property
    def dim(self) -> int:
        return self.rows.shape[2]

    # ------------------------------------------------------------- centred products
    @cached_property
    def _products(self) -> torch.Tensor:
        """``[E, S+Q, S]``: rows against the support rows, one matmul (no copy of the rows)."""
        return self.rows @ self.rows[:, :self.n_support].transpose(1, 2)

    @cached_property
    def _xm(self) -> torch.Tensor:
        """``x·x̄`` (``x̄`` the support mean) of every row, ``[E, S+Q]``: the mean of its products."""
        return self._products.mean(-1)

    @cached_property
    def _row_sq(self) -> torch.Tensor:  # noqa: F811 - may be preset by __init__
        return torch.linalg.vector_norm(self.rows, dim=-1).square()

    @cached_property
    def _mean_sq(self) -> torch.Tensor:
        """``|x̄|²``, ``[E]``."""
        return self._xm[:, :self.n_support].mean(-1)

    @cached_property
    def _centred(self) -> torch.Tensor:
        """``(x - x̄)·(s - x̄)`` for every row and support row, ``[E, S+Q, S]``."""
        xm = self._xm
        return (self._products - xm.unsqueeze(2) - xm[:, :self.n_support].unsqueeze(1)
                + self._mean_sq.view(-1, 1, 1))

    @cached_property
    def centred_sq(self) -> torch.Tensor:
        """``|x - x̄|²`` of every row, ``[E, S+Q]`` (>= 0)."""
        return (self._row_sq - 2 * self._xm + self._mean_sq.unsqueeze(1)).clamp_min(0)

    @property
    def centred_ss(self) -> torch.Tensor:
        """Centred support Gram ``(s_i - x̄)·(s_j - x̄)``, ``[E, S, S]``."""
        return self._centred[:, :self.n_support]

    @property
    def centred_qs(self) -> torch.Tensor:
        """``(q - x̄)·(s - x̄)``, ``[E, Q, S]``."""
        return self._centred[:, self.n_support:]

    # ---------------------------------------------------------------- derived
    @cached_property
    def sq_dist(self) -> torch.Tensor:
        """Squared euclidean distances of every row to every support row, ``[E, S+Q, S]`` (>= 0)."""
        sq = self.centred_sq
        return (sq.unsqueeze(2) - 2 * self._centred + sq[:, :self.n_support].unsqueeze(1)).clamp_min(0)

    @cached_property
    def inner(self) -> torch.Tensor:
        """Inner products ``x·s`` (features' own coordinates) of every row with every support row,
        ``[E, S+Q, S]``."""
        g = self._products
        if self.origin is None:
            return g
        p = self.origin_proj
        return g + p.unsqueeze(2) + p[:, :self.n_support].unsqueeze(1) + self._origin_sq.view(-1, 1, 1)

    @cached_property
    def _origin_sq(self) -> torch.Tensor:
        o = self.origin
        sq = o.square().sum(-1)
        return sq.expand(self.episodes) if sq.dim() == 0 else sq

    @cached_property
    def sq_norm(self) -> torch.Tensor:
        """``|x|²`` (features' own coordinates) of every row, ``[E, S+Q]`` (>= 0)."""
        if self.origin is None:
            return self._row_sq
        return (self._row_sq + 2 * self.origin_proj + self._origin_sq.unsqueeze(1)).clamp_min(0)


def centred_features(features: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features - μ, μ, (features - μ)·μ, |features - μ|²)`` with ``μ`` the mean row: the
    coordinates evaluation gathers episodes from (``EpisodeBatch(..., origin=μ, origin_proj=...,
    row_sq=...)``). A few passes over the features, once, instead of per episode."""
    mu = features.mean(0)
    centred = features - mu
    return centred, mu, centred @ mu, torch.linalg.vector_norm(centred, dim=-1).square()
