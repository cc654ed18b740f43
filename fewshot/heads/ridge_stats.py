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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewshot.heads.base import episode_index, pad_classes

FIELDS = ("xtx", "xsum", "xty", "counts")


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
        counts = idx.new_zeros(e * way).index_add_(0, idx, torch.ones_like(idx))
        return cls(z.mT @ z, z.sum(1), xty.view(e, way, d).mT.contiguous(), counts.view(e, way))

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

    def __add__(self, other: RidgeStats) -> RidgeStats:
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
        n = self.n.unsqueeze(1)
        s, v = torch.linalg.eigh(a)
        s = s.clamp_min(0).unsqueeze(1)                                        # [E,1,D]
        g2 = (v.mT @ b).pow(2).sum(2).unsqueeze(1)                             # ‖Gⱼ‖², [E,1,D]
        counts = self.counts.double()
        tyy = counts.sum(1, keepdim=True) - counts.pow(2).sum(1, keepdim=True) / n
        lams = torch.as_tensor(list(grid), dtype=torch.float64, device=a.device)
        d = 1.0 / (s + lams.view(1, -1, 1))                                    # [E,L,D]
        rss = tyy - ((2 * d - s * d * d) * g2).sum(2)
        df = 1.0 + (s * d).sum(2)
        gcv = n * rss.clamp_min(0) / (n - df).clamp_min(1e-9).pow(2)
        return lams[gcv.argmin(1)], gcv

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}

    @classmethod
    def from_state_dict(cls, d: dict) -> RidgeStats:
        return cls(*(d[k] for k in FIELDS))
