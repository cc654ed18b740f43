"""Statistics equal scipy's: CI, paired t-test, Wilcoxon; Holm; win/tie/loss; verdict sentences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from fewshot.errors import FewShotError
from fewshot.evaluation.stats import format_p, holm, mean_ci, paired, verdict


def _scores(seed=0, n=500, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.binomial(75, 0.6, n) / 75
    b = np.clip(a + rng.choice([-2, -1, 0, 0, 1, 2], n) / 75 - shift, 0, 1)
    return a, b


def test_mean_ci_equals_scipy_normal_interval():
    a, _ = _scores()
    mean, ci = mean_ci(a)
    lo, hi = sps.norm.interval(0.95, loc=a.mean(), scale=sps.sem(a))   # sem uses ddof=1
    assert mean == pytest.approx(a.mean(), abs=1e-15)
    assert ci == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert mean_ci([0.5]) == (0.5, 0.0)


def test_paired_equals_scipy():
    a, b = _scores(shift=0.01)
    p = paired(a, b)
    d = a - b
    assert p.diff == pytest.approx(d.mean(), abs=1e-15)
    lo, hi = sps.norm.interval(0.95, loc=d.mean(), scale=sps.sem(d))
    assert p.ci95 == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert p.p_value == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
    assert p.p_wilcoxon == pytest.approx(sps.wilcoxon(d, zero_method="pratt").pvalue, rel=1e-12)
    assert (p.wins, p.ties, p.losses) == ((d > 0).sum(), (d == 0).sum(), (d < 0).sum())
    assert p.wins + p.ties + p.losses == p.n == len(a)


def test_identical_and_constant_differences():
    a, _ = _scores()
    same = paired(a, a)
    assert same.p_value == 1.0 and same.ties == len(a) and same.diff == 0
    assert "identical on every episode" in verdict("x", "y", same)
    shifted = paired(a + 0.1, a)
    assert shifted.p_value == 0.0 and shifted.wins == len(a)


def test_holm():
    got = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm([0.1, np.nan])[1]) and holm([0.1, np.nan])[0] == pytest.approx(0.1)
    assert holm([0.9, 0.8]).max() <= 1.0


def test_verdicts():
    a, b = _scores(seed=1, n=2000, shift=0.02)
    p = paired(a, b)
    text = verdict("ls", "proto", p)
    assert text.startswith(f"ls beats proto by {100 * p.diff:.1f} ± {100 * p.ci95:.1f} points (p < 1e-6")
    assert verdict("proto", "ls", paired(b, a)).startswith("ls beats proto")
    c, d = _scores(seed=2, n=50)
    noisy = paired(c, d)
    assert "cannot be told apart" in verdict("nn", "proto", noisy, p_adjusted=0.5)
    assert format_p(0.0123) == "p = 0.012" and format_p(2e-4) == "p = 2e-04"


def test_bad_input():
    with pytest.raises(FewShotError, match="NaN"):
        mean_ci([0.5, np.nan])
    with pytest.raises(FewShotError, match="same episodes"):
        paired([0.1, 0.2], [0.1])
