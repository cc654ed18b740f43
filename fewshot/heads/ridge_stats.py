"""Sufficient statistics of ridge regression: a least-squares fit that grows without its rows.

Per episode, float64: ``XᵀX [D,D]``, ``Xᵀ1 [D]``, ``XᵀY [D,way]`` (the class sums) and the class
counts ``1ᵀY [way]`` (one-hot targets). They give the ridge solution with an unpenalised
intercept at any λ: with ``n = Σ counts``, ``μ = Xᵀ1/n`` and ``ȳ = counts/n``,

    ``W = (XᵀX - nμμᵀ + λI)⁻¹ (XᵀY - nμȳᵀ)``,   ``b = ȳ - μW``,

and the statistics of two sets of rows are the sums of theirs, so new shots or new classes never
need the old rows (:meth:`fewshot.heads.ls.LSHead.partial_fit`). They cost ``D x D`` per episode:
meant for one task that grows (adaptation), not for scoring thousands of episodes, where
:meth:`~fewshot.heads.ls.LSHead.fit` solves the small ``S x S`` dual system instead.

λ from the statistics alone: generalised cross-validation (Golub, Heath and Wahba 1979),
``GCV(λ) = n·RSS(λ) / (n - df(λ))²`` with ``df = 1 + Σ sⱼ/(sⱼ+λ)``. With
``A = XcᵀXc = V diag(s) Vᵀ`` and ``G = VᵀXcᵀYc``:
``RSS = tr(YcᵀYc) - Σⱼ (2/(sⱼ+λ) - sⱼ/(sⱼ+λ)²)·‖Gⱼ‖²`` and ``tr(YcᵀYc) = Σ counts - ‖counts‖²/n``.
GCV is the rotation-invariant version of exact leave-one-out, whose per-row hat values need the
rows themselves, which an incremental fit no longer has.

Fewer rows than features (``n < D``: a few shots of wide features, e.g. TTA symmetries
concatenated): :class:`RidgeRows` keeps the rows themselves (``n x D`` instead of ``D x D``) and
solves the ``n x n`` dual system, with the same solution, GCV and leave-one-out values; it turns
into :class:`RidgeStats` once the rows reach ``D``. :func:`ridge_statistics` picks the form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewshot.heads.base import episode_index, pad_classes

FIELDS = ("xtx", "xsum", "xty", "counts")
ROW_FIELDS = ("rows", "labels", "counts")


def ridge_statistics(X: torch.Tensor, labels: torch.Tensor, way: int) -> RidgeStats | RidgeRows:
    """The statistics of rows ``X [E,S,D]``: the rows themselves while ``S < D``, else ``XᵀX``."""
    cls = RidgeRows if X.shape[1] < X.shape[2] else RidgeStats
    return cls.from_rows(X, labels, way)


def stats_from_state_dict(d: dict) -> RidgeStats | RidgeRows | None:
    """The statistics a state dict holds (either form), None without."""
    if all(k in d for k in FIELDS):
        return RidgeStats.from_state_dict(d)
    if all(k in d for k in ROW_FIELDS):
        return RidgeRows.from_state_dict(d)
    return None


def _counts(idx: torch.Tensor, episodes: int, way: int) -> torch.Tensor:
    """Rows per class ``[E, way]`` from flat episode-class indices (``episode_index``)."""
    return idx.new_zeros(episodes * way).index_add_(0, idx, torch.ones_like(idx)).view(episodes, way)


def _gcv(s: torch.Tensor, g2: torch.Tensor, counts: torch.Tensor,
         grid: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λ [E], GCV [E,L])`` from the eigenvalues ``s [E,m]`` of the centred Gram and the
    squared projections ``‖Gⱼ‖² [E,m]`` of the centred targets (module docstring)."""
    counts = counts.double()
    n = counts.sum(1, keepdim=True)
    tyy = n - counts.pow(2).sum(1, keepdim=True) / n
    s, g2 = s.unsqueeze(1), g2.unsqueeze(1)                                    # [E,1,m]
    lams = torch.as_tensor(list(grid), dtype=torch.float64, device=s.device)
    d = 1.0 / (s + lams.view(1, -1, 1))                                        # [E,L,m]
    rss = tyy - ((2 * d - s * d * d) * g2).sum(2)
    df = 1.0 + (s * d).sum(2)
    gcv = n * rss.clamp_min(0) / (n - df).clamp_min(1e-9).pow(2)
    return lams[gcv.argmin(1)], gcv


@dataclass
class RidgeStats:
    """``xtx [E,D,D]``, ``xsum [E,D]``, ``xty [E,D,way]`` (float64) and ``counts [E,way]`` (int64)."""

    xtx: torch.Tensor
    xsum: torch.Tensor
    xty: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_rows(cls, X: torch.Tensor, labels: torch.Tensor, way: int) -> RidgeStats:
        """The statistics of rows ``X [E,S,D]`` with labels ``[E,S]`` in ``[0, way)``."""
        z = X.double()
        e, _, d = z.shape
        idx = episode_index(labels, way)
        xty = z.new_zeros(e * way, d).index_add_(0, idx, z.reshape(-1, d))
        return cls(z.mT @ z, z.sum(1), xty.view(e, way, d).mT.contiguous(), _counts(idx, e, way))

    @property
    def way(self) -> int:
        return self.xty.shape[2]

    @property
    def n(self) -> torch.Tensor:
        """Rows per episode, ``[E]`` (float64)."""
        return self.counts.sum(1).double()

    def grown(self, way: int) -> RidgeStats:
        """The same statistics over ``way`` classes (new classes have no rows yet)."""
        xty, counts = pad_classes(self.xty, way, 2), pad_classes(self.counts, way, 1)
        return RidgeStats(self.xtx, self.xsum, xty, counts)

    def __add__(self, other: RidgeStats | RidgeRows) -> RidgeStats:
        if isinstance(other, RidgeRows):
            other = other.to_stats()
        way = max(self.way, other.way)
        a, b = self.grown(way), other.grown(way)
        return RidgeStats(a.xtx + b.xtx, a.xsum + b.xsum, a.xty + b.xty, a.counts + b.counts)

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A = XcᵀXc [E,D,D], B = XcᵀYc [E,D,way], μ [E,D], ȳ [E,way])`` of the centred data."""
        n = self.n.unsqueeze(1)
        mu, ybar = self.xsum / n, self.counts.double() / n
        n = n.unsqueeze(2)
        a = self.xtx - n * (mu.unsqueeze(2) * mu.unsqueeze(1))
        b = self.xty - n * (mu.unsqueeze(2) * ybar.unsqueeze(1))
        return (a + a.mT) / 2, b, mu, ybar

    def regularised(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A + λI, B, μ, ȳ)`` for one λ per episode (``lam [E]``)."""
        a, b, mu, ybar = self.centred()
        eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
        return a + lam.to(a.dtype).view(-1, 1, 1) * eye, b, mu, ybar

    def solve(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [E,D,way], b [E,way])`` at ``lam [E]``, float64: Cholesky, or the least-norm
        solution where λ ~ 0 on rank-deficient data left the system without one."""
        reg, b, mu, ybar = self.regularised(lam)
        chol, info = torch.linalg.cholesky_ex(reg)
        w = torch.cholesky_solve(b, chol)
        bad = info != 0
        if bool(bad.any()):
            w[bad] = torch.linalg.lstsq(reg[bad], b[bad]).solution
        return w, ybar - (mu.unsqueeze(1) @ w).squeeze(1)

    def gcv(self, grid: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ [E], GCV [E,L])``: per episode the ``grid`` value of least GCV (module docstring)."""
        a, b, _, _ = self.centred()
        s, v = torch.linalg.eigh(a)
        return _gcv(s.clamp_min(0), (v.mT @ b).pow(2).sum(2), self.counts, grid)

    def loo(self, lam: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h [n], ŷ [n,way])`` of episode 0 for rows ``z [n,D]``: the hat values
        ``xcᵀ(A + λI)⁻¹xc + 1/n`` and the fitted values (what exact leave-one-out needs)."""
        reg, b, mu, ybar = self.regularised(lam)
        reg, b, mu, ybar = reg[0], b[0], mu[0], ybar[0]
        xc = z.double() - mu
        chol, info = torch.linalg.cholesky_ex(reg)
        if int(info) == 0:
            h, w = torch.cholesky_solve(xc.T, chol).T, torch.cholesky_solve(b, chol)
        else:
            h, w = torch.linalg.solve(reg, xc.T).T, torch.linalg.lstsq(reg, b).solution
        return (xc * h).sum(1) + 1.0 / float(self.n[0]), xc @ w + ybar

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}

    @classmethod
    def from_state_dict(cls, d: dict) -> RidgeStats:
        return cls(*(d[k] for k in FIELDS))


@dataclass
class RidgeRows:
    """The rows ``rows [E,n,D]`` (float64) and ``labels [E,n]`` (int64) of a ridge fit with fewer
    rows than features, and ``counts [E,way]`` (int64; classes may have none yet). Same interface
    as :class:`RidgeStats`; the ``n x n`` dual system, ``W = Xcᵀ(XcXcᵀ + λI)⁻¹Yc``."""

    rows: torch.Tensor
    labels: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_rows(cls, X: torch.Tensor, labels: torch.Tensor, way: int) -> RidgeRows:
        return cls(X.double(), labels.long(), _counts(episode_index(labels, way), X.shape[0], way))

    @property
    def way(self) -> int:
        return self.counts.shape[1]

    @property
    def n(self) -> torch.Tensor:
        return self.counts.sum(1).double()

    @property
    def xsum(self) -> torch.Tensor:
        return self.rows.sum(1)

    def to_stats(self) -> RidgeStats:
        return RidgeStats.from_rows(self.rows, self.labels, self.way)

    def grown(self, way: int) -> RidgeRows:
        return RidgeRows(self.rows, self.labels, pad_classes(self.counts, way, 1))

    def __add__(self, other: RidgeStats | RidgeRows) -> RidgeStats | RidgeRows:
        if isinstance(other, RidgeStats):
            return self.to_stats() + other
        way = max(self.way, other.way)
        rows = torch.cat([self.rows, other.rows], 1)
        out = RidgeRows(rows, torch.cat([self.labels, other.labels], 1),
                        self.grown(way).counts + other.grown(way).counts)
        return out if rows.shape[1] < rows.shape[2] else out.to_stats()

    def _centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(K = XcXcᵀ [E,n,n], Xc, Yc, μ [E,D], ȳ [E,way])``."""
        n = self.n.unsqueeze(1)
        mu, ybar = self.xsum / n, self.counts.double() / n
        xc = self.rows - mu.unsqueeze(1)
        yc = torch.nn.functional.one_hot(self.labels, self.way).double() - ybar.unsqueeze(1)
        k = xc @ xc.mT
        return (k + k.mT) / 2, xc, yc, mu, ybar

    def solve(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, xc, yc, mu, ybar = self._centred()
        eye = torch.eye(k.shape[1], dtype=k.dtype, device=k.device)
        w = xc.mT @ torch.linalg.solve(k + lam.to(k.dtype).view(-1, 1, 1) * eye, yc)
        return w, ybar - (mu.unsqueeze(1) @ w).squeeze(1)

    def gcv(self, grid: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`RidgeStats.gcv`: ``XcᵀXc`` and ``XcXcᵀ`` share their non-zero eigenvalues
        ``s``, and ``‖Gⱼ‖² = sⱼ ‖uⱼᵀYc‖²`` for the eigenvectors ``uⱼ`` of ``XcXcᵀ``."""
        k, _, yc, _, _ = self._centred()
        s, u = torch.linalg.eigh(k)
        s = s.clamp_min(0)
        return _gcv(s, s * (u.mT @ yc).pow(2).sum(2), self.counts, grid)

    def loo(self, lam: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`RidgeStats.loo`, by Woodbury: ``(A + λI)⁻¹ = (I - Xcᵀ(K + λI)⁻¹Xc) / λ``."""
        k, xc, yc, mu, ybar = self._centred()
        k, xc, yc, mu, ybar = k[0], xc[0], yc[0], mu[0], ybar[0]
        lam0 = float(lam.reshape(-1)[0])
        reg = k + lam0 * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
        zc = z.double() - mu
        kz = xc @ zc.T                                                          # [n_rows, n_z]
        solved = torch.linalg.solve(reg, torch.cat([kz, yc], 1))              # one factorisation
        h = (zc.pow(2).sum(1) - (kz * solved[:, :kz.shape[1]]).sum(0)) / lam0
        w = xc.T @ solved[:, kz.shape[1]:]
        return h + 1.0 / float(self.n[0]), zc @ w + ybar

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ROW_FIELDS}

    @classmethod
    def from_state_dict(cls, d: dict) -> RidgeRows:
        return cls(d["rows"].double(), d["labels"].long(), d["counts"].long())
