"""Tests for `ts2.eval.stats`: percentile-bootstrap CIs on hand-computed cases, the CLT width, shared resamples,
and the paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ts2.eval import stats


def test_constant_values_have_a_zero_width_ci():
    assert stats.bootstrap_ci([3.5] * 7) == (3.5, 3.5)


def test_two_point_distribution_by_hand():
    # Resampling two prompts {0, 1}: the mean is 0 (p=1/4), 1/2 (p=1/2) or 1 (p=1/4). With 4000 resamples
    # far more than 2.5% land on each end, so the 95% percentile interval is exactly [0, 1].
    assert stats.bootstrap_ci([0.0, 1.0], n_resamples=4000) == (0.0, 1.0)
    # a 40% interval (30th..70th percentile) lies inside the middle mass: exactly 1/2 at both ends
    assert stats.bootstrap_ci([0.0, 1.0], n_resamples=4000, level=0.4) == (0.5, 0.5)


def test_width_matches_the_normal_approximation_and_contains_the_mean():
    v = np.random.default_rng(1).exponential(10.0, size=400)
    lo, hi = stats.bootstrap_ci(v, n_resamples=2000, seed=3)
    assert lo < v.mean() < hi
    normal = 2 * 1.959964 * v.std(ddof=1) / math.sqrt(v.size)  # CLT width, independent of the bootstrap
    assert hi - lo == pytest.approx(normal, rel=0.1)


def test_seeded_and_shared_resamples():
    v = np.random.default_rng(0).normal(size=50)
    assert stats.bootstrap_ci(v, seed=5) == stats.bootstrap_ci(v, seed=5)
    assert stats.bootstrap_ci(v, seed=5) != stats.bootstrap_ci(v, seed=6)
    cis = stats.bootstrap_cis({"a": v, "b": 2 * v + 1})
    # one set of resampled prompt sets: an affine map of the values maps the interval exactly
    assert cis["b"] == pytest.approx((2 * cis["a"][0] + 1, 2 * cis["a"][1] + 1), abs=1e-12)
    assert cis["a"] == stats.bootstrap_ci(v)  # same seed (0), same draws
    with pytest.raises(ValueError, match="same prompts"):
        stats.bootstrap_cis({"a": v, "b": v[:10]})


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    base = rng.normal(50, 20, size=60)  # prompt difficulty, shared by both methods
    a, b = base + 1.0, base.copy()
    d = stats.paired_bootstrap(a, b)
    assert d.diff == pytest.approx(1.0) and d.ci == pytest.approx((1.0, 1.0)) and d.significant
    noisy = base + rng.normal(0.5, 1.0, size=60)
    p = stats.paired_bootstrap(noisy, base, seed=4)
    assert p.diff == pytest.approx(noisy.mean() - base.mean())
    assert p.ci == stats.bootstrap_ci(noisy - base, seed=4)
    # pairing removes the shared variance: far narrower than either method's own interval
    lo, hi = stats.bootstrap_ci(noisy, seed=4)
    assert (p.ci[1] - p.ci[0]) < 0.2 * (hi - lo)
    same = stats.paired_bootstrap(base, base)
    assert same.diff == 0.0 and not same.significant
    with pytest.raises(ValueError, match="pair them"):
        stats.paired_bootstrap(a, b[:-1])


def test_align_pairs_by_prompt_id():
    ids, a, b = stats.align([3, 1, 2], [30.0, 10.0, 20.0], [2, 3, 9], [200.0, 300.0, 900.0])
    assert ids == [3, 2] and a.tolist() == [30.0, 20.0] and b.tolist() == [300.0, 200.0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="non-empty"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        stats.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci([1.0, 2.0], level=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        stats.bootstrap_ci([1.0], n_resamples=0)
