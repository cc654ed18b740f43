"""Statistics of few-shot evaluation: mean accuracy with a 95% CI, paired head comparisons.

- Confidence interval: ``1.96 * s / sqrt(E)`` with ``s`` the *sample* standard deviation
  (``ddof=1``) of the per-episode accuracies: the normal-approximation interval every few-shot
  paper reports (E is in the thousands, so the t quantile would change the third digit at most).
- Paired comparison of two heads scored on the very same episodes: the mean of the per-episode
  differences, its 95% CI (same formula on the differences), and the p-value of the paired
  t-test (``scipy.stats.ttest_rel``). The t-test is the primary test because it tests exactly the
  quantity we report (the mean difference) and agrees with the CI; with thousands of episodes
  the mean of bounded differences is very close to normal, so it is honest despite accuracies
  being bounded and discrete. The Wilcoxon signed-rank p-value (``zero_method="pratt"``, which
  keeps the many tied episodes in the ranking) is reported beside it as a distribution-free
  check; when E is small (< 30) it is the one to trust.
- Multiple comparisons: all pairs (and shots) of one report form one family; verdicts use
  Holm's step-down adjusted p-values (controls the family-wise error rate, no independence
  assumption, uniformly more powerful than Bonferroni).
- Several seeds (ablation grids): scores are paired by seed and episode (:func:`paired_by_seed`);
  the spread across seeds is a t-interval over the per-seed means (:func:`seed_ci`), and a verdict
  also needs every seed to agree in sign (:func:`seed_verdict`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from fewshot.errors import FewShotError

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


def _as_1d(x, name: str = "values") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise FewShotError(f"no {name} to summarise")
    if not np.isfinite(a).all():
        raise FewShotError(f"{name} contain NaN or infinite values")
    return a


def mean_ci(values, z: float = Z95) -> tuple[float, float]:
    """``(mean, half-width of the 95% CI)`` = ``(x̄, z * std(ddof=1) / sqrt(n))``; 0 when n == 1."""
    a = _as_1d(values)
    if a.size < 2:
        return float(a.mean()), 0.0
    return float(a.mean()), float(z * a.std(ddof=1) / math.sqrt(a.size))


@dataclass
class Paired:
    """Paired comparison ``a - b`` over the same episodes."""

    diff: float
    ci95: float
    p_value: float
    p_wilcoxon: float
    wins: int
    ties: int
    losses: int
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired(a, b, *, tie_tol: float = 1e-9) -> Paired:
    """Compare per-episode scores ``a`` and ``b`` (same episodes, same order)."""
    a, b = _as_1d(a, "scores"), _as_1d(b, "scores")
    if a.shape != b.shape:
        raise FewShotError(f"paired scores need the same episodes, got {a.size} and {b.size}")
    d = a - b
    diff, ci = mean_ci(d)
    nonzero = np.abs(d) > tie_tol
    if not nonzero.any():
        p_t = p_w = 1.0  # identical on every episode: no evidence of any difference
    elif d.size < 2:
        p_t = p_w = float("nan")
    elif np.ptp(d) <= 1e-12 * max(1.0, abs(diff)):  # the same nonzero difference in every episode
        p_t, p_w = 0.0, float(sps.wilcoxon(d, zero_method="pratt").pvalue)
    else:
        p_t = float(sps.ttest_rel(a, b).pvalue)
        if not np.isfinite(p_t):  # constant nonzero difference: zero variance
            p_t = 0.0
        p_w = float(sps.wilcoxon(d, zero_method="pratt").pvalue) if nonzero.sum() > 0 else 1.0
    return Paired(diff, ci, p_t, p_w, int((d > tie_tol).sum()), int((~nonzero).sum()),
                  int((d < -tie_tol).sum()), int(d.size))


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as given); NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def significant(p: float, diff: float, alpha: float = 0.05) -> bool:
    """A difference counts when its (adjusted) p-value is below ``alpha`` and it is not zero."""
    return bool(np.isfinite(p) and p < alpha and diff != 0)


def seed_ci(means) -> float:
    """Half-width of the 95% t-interval of the mean of per-seed means (NaN for one seed)."""
    means = np.asarray(means, dtype=np.float64)
    if len(means) < 2:
        return float("nan")
    return float(sps.t.ppf(0.975, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means)))


def paired_by_seed(a: dict, b: dict) -> dict | None:
    """Paired comparison of two cells scored on the same episodes under several seeds.

    ``a``, ``b``: ``{seed: per-episode scores}``. :func:`paired` on all (seed, episode) pairs of the
    seeds both have, plus the per-seed mean differences and how many agree in sign with the pooled
    one; None when they share no seed.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.stack([a[s] - b[s] for s in seeds])                       # [seeds, E]
    res = paired(np.concatenate([a[s] for s in seeds]), np.concatenate([b[s] for s in seeds]))
    per_seed = d.mean(1)
    agree = int((np.sign(per_seed) == np.sign(res.diff)).sum()) if res.diff != 0 else 0
    return {"diff": res.diff, "ci95": res.ci95, "p": res.p_value, "p_wilcoxon": res.p_wilcoxon,
            "wins": res.wins, "ties": res.ties, "losses": res.losses, "seeds": len(seeds),
            "seeds_agree": agree, "per_seed": per_seed.tolist()}


def seed_verdict(a: str, b: str, comparison: dict, p_adjusted: float, alpha: float = 0.05) -> str:
    """``"a > b"`` when significant and every seed agrees; a qualified sentence when only the pooled
    episodes do; ``"no significant difference"`` otherwise (``comparison``: :func:`paired_by_seed`)."""
    if not significant(p_adjusted, comparison["diff"], alpha):
        return "no significant difference"
    winner, loser = (a, b) if comparison["diff"] > 0 else (b, a)
    if comparison["seeds_agree"] == comparison["seeds"]:
        return f"{winner} > {loser}"
    return (f"{winner} > {loser} on pooled episodes, "
            f"but only {comparison['seeds_agree']}/{comparison['seeds']} seeds agree")


def format_p(p: float) -> str:
    if not np.isfinite(p):
        return "p = n/a"
    if p < 1e-6:
        return "p < 1e-6"
    if p < 1e-3:
        return f"p = {p:.0e}"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def verdict(head_a: str, head_b: str, result: Paired, *, p_adjusted: float | None = None,
            alpha: float = 0.05, scale: float = 100.0, unit: str = "points") -> str:
    """One sentence: "ls beats proto by 2.1 ± 0.4 points (p < 1e-6)" or "... cannot be told apart".

    Uses ``p_adjusted`` (Holm) when given, else the raw paired t-test p-value.
    """
    p = result.p_value if p_adjusted is None else p_adjusted
    tag = "Holm-adjusted " if p_adjusted is not None else ""
    d, ci = result.diff * scale, result.ci95 * scale
    if result.ties == result.n:
        return f"{head_a} and {head_b} are identical on every episode"
    if significant(p, d, alpha):
        win, lose = (head_a, head_b) if d > 0 else (head_b, head_a)
        w, l = (result.wins, result.losses) if d > 0 else (result.losses, result.wins)
        return (f"{win} beats {lose} by {abs(d):.1f} ± {ci:.1f} {unit} ({tag}{format_p(p)}; "
                f"{win} better/tied/worse in {w}/{result.ties}/{l} episodes)")
    return (f"{head_a} and {head_b} cannot be told apart (difference {d:+.1f} ± {ci:.1f} {unit}, "
            f"{tag}{format_p(p)})")
