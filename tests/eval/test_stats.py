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


# Two-level bootstrap (seed runs, then prompts), hand-computed cases (moved here from tests/test_claims.py)


def test_two_level_constant_shift_gives_a_degenerate_ci():
    b = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    d = stats.seeded_paired_bootstrap([(list("abcde"), b + 1.5)], [(list("abcde"), b)])
    assert d.diff == pytest.approx(1.5)
    assert d.ci == pytest.approx((1.5, 1.5))  # every resample of a constant difference is 1.5
    assert d.num_prompts == 5 and d.seeds == (1, 1)


def test_two_level_seed_runs_widen_the_ci_by_hand():
    # a's two seeds differ from b by +4 and +2 on every prompt: a resample's difference is the mean of the two
    # drawn seed shifts, i.e. 2, 3 or 4 (probabilities 1/4, 1/2, 1/4), so the 95% interval is [2, 4].
    b = np.linspace(0.0, 1.0, 7)
    ids = [str(i) for i in range(7)]
    d = stats.seeded_paired_bootstrap([(ids, b + 4), (ids, b + 2)], [(ids, b)], n_resamples=2000)
    assert d.diff == pytest.approx(3.0)
    assert d.ci == pytest.approx((2.0, 4.0))
    assert d.seeds == (2, 1) and d.text() == "+3.00 [+2.00, +4.00]"


def test_two_level_pairs_by_prompt_id_not_position():
    a = stats.seeded_paired_bootstrap(
        [(["x", "y", "z"], np.array([10.0, 20.0, 30.0]))], [(["z", "x"], np.array([29.0, 9.0]))]
    )
    assert a.diff == pytest.approx(1.0, abs=1e-12) and a.num_prompts == 2
    with pytest.raises(ValueError, match="share no scored prompt"):
        stats.seeded_paired_bootstrap([(["x"], np.array([1.0]))], [(["y"], np.array([1.0]))])


def test_several_metrics_share_one_set_of_resamples_and_match_the_normal_width():
    """(moved from tests/eval/test_best_of_n.py: the per-n CI of the best-of-n win rate)"""
    rng = np.random.default_rng(0)
    per = {"1": rng.uniform(0, 100, size=805), "2": rng.uniform(20, 100, size=805)}
    ci = stats.bootstrap_cis(per, n_resamples=1000, seed=7)
    assert ci == stats.bootstrap_cis(per, n_resamples=1000, seed=7)
    assert ci != stats.bootstrap_cis(per, n_resamples=1000, seed=8)
    for n, v in per.items():
        lo, hi = ci[n]
        assert lo < v.mean() < hi
        normal = 2 * 1.959964 * v.std(ddof=1) / math.sqrt(v.size)  # CLT width, independent of the bootstrap
        assert (hi - lo) == pytest.approx(normal, rel=0.15)


def test_ratio_ci_is_the_token_weighted_mean_bootstrap():
    # Every prompt has the same per-token mean 2.0: every resampled ratio is 2.0, whatever the weights.
    counts = np.array([1, 4, 2, 3])
    assert stats.ratio_ci(2.0 * counts, counts, n_resamples=300) == pytest.approx((2.0, 2.0))
    # Shared indices: the ratio of the resampled sums, by hand for two resamples.
    sums, counts = np.array([3.0, 1.0]), np.array([1, 3])
    idx = np.array([[0, 0], [1, 1]])  # ratios 6/2 = 3 and 2/6 = 1/3
    assert stats.ratio_ci(sums, counts, indices=idx, level=0.5) == pytest.approx(
        (1 / 3 + 0.25 * (3 - 1 / 3), 1 / 3 + 0.75 * (3 - 1 / 3))
    )


def test_wilson_interval_by_hand():
    # 0 successes: the interval is [0, z²/(n + z²)] (Wilson 1927; the lower bound is exactly 0).
    z = 1.959964
    lo, hi = stats.wilson_interval(0, 8)
    assert lo == pytest.approx(0.0, abs=1e-15) and hi == pytest.approx(z * z / (8 + z * z))
    # symmetric around 1/2 for p = 1/2
    lo, hi = stats.wilson_interval(10, 20)
    assert lo + hi == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n >= 1"):
        stats.wilson_interval(0, 0)


# Pinned outputs. These literals were computed with the code BEFORE issue #18's pass moved every bootstrap into
# this module (stats.bootstrap_ci/cis and paired_bootstrap; claims.seeded_paired_bootstrap;
# analysis.bon.bootstrap_means; eval.tspd._ratio_bootstrap_ci; models.tiny_rm.wilson_interval;
# eval.best_of_n.bootstrap_ci) on the fixed input below: the move must not change a single draw.
V = [0.5, 2.0, 3.5, 1.0, 7.25, 4.0, 0.0, 9.5, 2.5, 6.0]
W = [1.5, 1.0, 4.5, 0.5, 6.0, 4.5, 1.0, 7.0, 3.5, 5.0]


def test_outputs_pinned_to_the_code_before_the_move():
    assert stats.bootstrap_ci(V, n_resamples=200, seed=3) == (1.8725000000000005, 5.150625000000001)
    assert stats.bootstrap_cis({"v": V, "w": W}, n_resamples=200, seed=3) == {
        "v": (1.8725000000000005, 5.150625000000001),
        "w": (2.145000000000001, 4.652500000000001),
    }
    p = stats.paired_bootstrap(V, W, n_resamples=200, seed=1)
    assert (p.diff, p.ci, p.num_prompts) == (0.175, (-0.55, 1.000625), 10)
    ids = [str(i) for i in range(10)]
    v, w = np.array(V), np.array(W)
    d = stats.seeded_paired_bootstrap(
        [(ids, v), (ids, v + 1.0)], [(ids, w), (ids, w * 0.5), (ids, w + 2.0)], n_resamples=200, seed=5
    )
    assert (d.diff, d.ci, d.num_prompts, d.seeds) == (
        0.5833333333333335,
        (-1.335, 2.7775000000000007),
        10,
        (2, 3),
    )
    m = stats.bootstrap_means(
        {"v": np.stack([v, v + 1.0]), "w": np.stack([w, w * 0.5])}, n_resamples=200, seed=7
    )
    assert m["v"][:3].tolist() == [3.95, 4.35, 5.95] and m["w"][:3].tolist() == [1.7, 2.5125, 3.7875]
    assert stats.percentile_interval(m["v"], 0.95) == (2.1, 6.3293750000000015)
    assert stats.percentile_interval(m["w"], 0.95) == (1.2496875, 4.3012500000000005)
    one = stats.bootstrap_means({"v": v[None, :]}, n_resamples=200, seed=7)["v"]
    assert one[:2].tolist() == [2.95, 4.3]
    sums, counts = np.array([3.0, 10.0, 1.5, 8.0, 0.25, 6.0]), np.array([2, 5, 1, 4, 1, 3])
    assert stats.ratio_ci(sums, counts, n_resamples=200, seed=0) == (1.3888257575757574, 1.9772727272727273)
    assert stats.wilson_interval(37, 50) == (0.6044684262151608, 0.8412847256991044)
    assert stats.wilson_interval(0.0, 8) == (0.0, 0.3244075683414076)


# ------------------------------------------------------------------------------ TOST (issue #19 item 3)
@pytest.mark.parametrize(
    ("ci", "margin", "decision"),
    [
        ((-0.05, 0.08), 0.1, "equivalent"),  # inside (−0.1, +0.1)
        ((0.1, 0.3), 0.1, "different"),  # at the margin: the gap is not within it
        ((-0.5, -0.2), 0.1, "different"),
        ((0.05, 0.15), 0.1, "undecided"),  # crosses +0.1
        ((-0.2, 0.2), 0.1, "undecided"),  # crosses both
        ((-0.1, 0.0), 0.1, "undecided"),  # touches −0.1: not strictly inside
    ],
)
def test_equivalence_decision_by_hand(ci, margin, decision):
    assert stats.equivalence_decision(ci, margin) == decision


def test_tost_reads_the_90_percent_paired_ci():
    # d = a − b alternates 0 and 1 over 2 prompts: resampled means are 0, 1/2, 1 with p 1/4, 1/2, 1/4, so the
    # 90% percentile interval is exactly [0, 1] (each end holds 25% > 5%).
    a, b = np.array([5.0, 6.0]), np.array([5.0, 5.0])
    runs = lambda x: [([0, 1], x)]  # noqa: E731
    eq = stats.tost(runs(a), runs(b), margin=1.5, n_resamples=4000)
    assert eq.gap.ci == (0.0, 1.0) and eq.gap.diff == 0.5 and eq.decision == "equivalent"
    assert stats.tost(runs(a), runs(b), margin=0.8, n_resamples=4000).decision == "undecided"
    far = stats.tost(runs(a + 2), runs(b), margin=1.5, n_resamples=4000)  # d in {2, 3}: CI [2, 3]
    assert far.gap.ci == (2.0, 3.0) and far.decision == "different"
    # the interval is seeded_paired_bootstrap's at level 1 − 2α
    want = stats.seeded_paired_bootstrap(runs(a), runs(b), level=0.8, seed=3)
    assert stats.tost(runs(a), runs(b), 1.0, alpha=0.1, seed=3).gap == want
    with pytest.raises(ValueError, match="margin must be > 0"):
        stats.tost(runs(a), runs(b), margin=0.0)
    with pytest.raises(ValueError, match="alpha must be in"):
        stats.tost(runs(a), runs(b), margin=1.0, alpha=0.5)


# ------------------------------------------------------------------- matched quality (issue #19 item 3)
def test_matched_level_is_the_midpoint_of_the_overlap():
    assert stats.matched_level([(1.0, 3.0), (2.0, 5.0)]) == 2.5
    assert stats.matched_level([(-3.0, -1.0), (-3.5, -1.5), (-2.8, 0.0)]) == pytest.approx(-2.15)
    assert stats.matched_level([(0.0, 1.0), (2.0, 3.0)]) is None


def test_interpolate_at_by_hand():
    q, d = [1.0, 2.0, 3.0], [10.0, 20.0, 40.0]
    assert stats.interpolate_at(q, d, 2.5) == (30.0, False)
    assert stats.interpolate_at(q, d, 1.0) == (10.0, False)
    assert stats.interpolate_at(q[::-1], d[::-1], 1.5) == (15.0, False)  # decreasing quality
    # not monotone in quality: the first segment (in temperature order) that holds the level
    assert stats.interpolate_at([1.0, 3.0, 2.0], [0.0, 20.0, 10.0], 2.5) == (15.0, False)
    # outside the range: the nearer end segment extended
    assert stats.interpolate_at(q, d, 4.0) == (60.0, True)
    assert stats.interpolate_at(q, d, 0.0) == (0.0, True)
    assert stats.interpolate_at([1.0, 1.0, 2.0], [5.0, 7.0, 9.0], 1.0) == (5.0, False)  # flat segment
    with pytest.raises(ValueError, match=">= 2 points"):
        stats.interpolate_at([1.0], [2.0], 1.0)


def _frontier(
    q: list[float], d: list[float], prompts: int = 5, runs: int = 1, noise: float = 0.0, seed: int = 0
):
    rng = np.random.default_rng(seed)
    shape = (runs, len(q), prompts)
    qa = np.asarray(q)[None, :, None] + noise * rng.normal(size=shape)
    da = np.asarray(d)[None, :, None] + 10 * noise * rng.normal(size=shape)
    return stats.Frontier(tuple(0.3 * (k + 1) for k in range(len(q))), qa, da)


def test_matched_difference_by_hand_and_its_ci():
    ce = _frontier([-1.0, -2.0, -3.0], [10.0, 20.0, 30.0])
    ts2 = _frontier([-1.5, -2.5, -3.5], [15.0, 30.0, 45.0])
    level = stats.matched_level([ce.quality_range, ts2.quality_range])
    assert level == -2.25
    md = stats.matched_difference(ts2, ce, level)
    # CE at -2.25: 20 + 0.25·10 = 22.5; TS²: 15 + 0.75·15 = 26.25; constant over prompts -> a zero-width CI
    assert (md.a, md.b, md.diff, md.ci) == (26.25, 22.5, 3.75, (3.75, 3.75))
    assert md.significant and md.extrapolated == 0 and md.num_prompts == 5
    # prompt noise widens the CI around the same point estimate; seed runs resampled too (two-level)
    noisy = stats.matched_difference(
        _frontier([-1.5, -2.5, -3.5], [15.0, 30.0, 45.0], 40, runs=2, noise=0.05, seed=1),
        _frontier([-1.0, -2.0, -3.0], [10.0, 20.0, 30.0], 40, noise=0.05, seed=2),
        level,
        seed=4,
    )
    assert noisy.seeds == (2, 1) and noisy.ci[0] < noisy.diff < noisy.ci[1] and noisy.ci[1] - noisy.ci[0] < 3
    assert noisy.diff == pytest.approx(3.75, abs=0.5)
    with pytest.raises(ValueError, match="same prompts"):
        stats.matched_difference(ts2, _frontier([-1.0, -2.0, -3.0], [1.0, 2.0, 3.0], prompts=4), level)
