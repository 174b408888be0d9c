"""`ts2.analysis.bon`: best-of-n curves and plane points read back from metrics files, against numbers
computed here from the rewards the files were made of."""

from __future__ import annotations

import numpy as np
import pytest

from ts2.analysis.bon import bon_curves, bon_differences, estimates, plane_points
from ts2.eval.stats import bootstrap_means
from ts2.records import collect

from .bon_runs import METHODS, alpaca_metrics, heldout_metrics, make_run, make_table, rewards


def _win(r: np.ndarray, ref: np.ndarray, n: int) -> np.ndarray:
    """100 · σ(max of the first n rewards − reference reward), written out (PAPER.md §4)."""
    return 100.0 / (1.0 + np.exp(-(r[:, :n].max(axis=1) - ref)))


def test_single_run_curve_is_the_stored_win_rate_and_ci(tmp_path):
    r, ref = rewards(0.3, seed=1)
    make_run(tmp_path, "ts2", "ts2", {"alpaca_eval": alpaca_metrics(r, ref, 0.0, 1)})
    (c,) = bon_curves(collect(tmp_path))
    assert c.ns == [1, 2, 4, 8] and c.num_runs == 1 and c.num_prompts == 40
    np.testing.assert_allclose(c.mean, [_win(r, ref, n).mean() for n in (1, 2, 4, 8)], rtol=1e-12)
    # Best of more samples never loses on any prompt, so the curve rises.
    assert np.all(np.diff(c.mean) > 0)
    # The band of each n is a percentile interval around the mean, from the same resampled prompt sets.
    assert np.all(c.lo < c.mean) and np.all(c.mean < c.hi)


def test_bootstrap_of_per_prompt_values_reproduces_the_scorers_ci(tmp_path):
    """Recomputed from per_prompt (when the stored CI is absent), the band equals the scorer's CI."""
    r, ref = rewards(0.0, seed=2)
    m = alpaca_metrics(r, ref, 0.0, 2)
    stored = {k: v for k, v in m["ci"].items() if k.startswith("win_rate@")}
    m = {**m, "ci": {}, "benchmark": "alpaca_eval"}
    est = estimates([m], list(stored))
    for k, (lo, hi) in stored.items():
        assert est[k].ci == pytest.approx((lo, hi), abs=1e-12)
    block = {k: np.asarray(m["per_prompt"][k])[None, :] for k in stored}
    boot = bootstrap_means(block)
    lo, hi = np.percentile(boot["win_rate@8"], [2.5, 97.5])
    assert (lo, hi) == pytest.approx(tuple(stored["win_rate@8"]), abs=1e-12)


def test_seed_runs_pool_on_shared_prompts_with_a_two_level_band(tmp_path):
    r0, ref = rewards(0.1, seed=3)
    r1, _ = rewards(0.1, seed=4)
    # The second seed run was scored on prompts 5..39 only: the curve uses the 35 prompts both have.
    make_run(tmp_path, "a", "ce", {"alpaca_eval": alpaca_metrics(r0, ref, 0.0, 3)})
    make_run(tmp_path, "b", "ce", {"alpaca_eval": alpaca_metrics(r1[5:], ref[5:], 0.0, 4, ids=range(5, 40))})
    (c,) = bon_curves(collect(tmp_path))
    assert c.num_runs == 2 and c.num_prompts == 35
    want = [(_win(r0, ref, n)[5:].mean() + _win(r1[5:], ref[5:], n).mean()) / 2 for n in (1, 2, 4, 8)]
    np.testing.assert_allclose(c.mean, want, rtol=1e-12)
    assert np.all(c.lo < c.mean) and np.all(c.mean < c.hi)


def test_two_level_band_of_identical_seed_copies_matches_the_prompt_bootstrap():
    """Resampling seed runs that are copies of each other adds nothing: the two-level band is the prompt
    bootstrap's band, up to Monte-Carlo error."""
    r, ref = rewards(0.0, seed=5, prompts=200)
    m = {**alpaca_metrics(r, ref, 0.0, 5), "benchmark": "alpaca_eval"}
    one = estimates([{**m, "ci": {}}], ["win_rate@4"], n_resamples=4000)["win_rate@4"]
    two = estimates([m, m, m], ["win_rate@4"], n_resamples=4000)["win_rate@4"]
    assert two.mean == pytest.approx(one.mean, abs=1e-12)
    width = one.ci[1] - one.ci[0]
    assert two.ci == pytest.approx(one.ci, abs=0.08 * width)


def test_differences_to_ce_are_paired_means(tmp_path):
    make_table(tmp_path, tspd=False)
    runs = collect(tmp_path)
    diffs = {d.method: d for d in bon_differences(runs)}
    assert set(diffs) == {"sparsemax", "ts2"}
    ce = next(r for r in runs if r.method.id == "ce").metrics["alpaca_eval"]
    ts2 = next(r for r in runs if r.method.id == "ts2").metrics["alpaca_eval"]
    for i, n in enumerate(diffs["ts2"].ns):
        d = np.mean(ts2["per_prompt"][f"win_rate@{n}"]) - np.mean(ce["per_prompt"][f"win_rate@{n}"])
        assert diffs["ts2"].mean[i] == pytest.approx(d, abs=1e-9)
        assert diffs["ts2"].lo[i] < d < diffs["ts2"].hi[i]


def test_plane_points_read_quality_and_diversity_with_their_cis(tmp_path):
    make_table(tmp_path, tspd=False)
    runs = collect(tmp_path)
    pts = {p[0]: p for p in plane_points(runs, "heldout_ce/heldout_ce", "alpaca_eval/ngram")}
    assert list(pts) == ["ce", "sparsemax", "ts2"]  # the table's method order
    ce_file = runs[0].metrics
    _, name, x, y = pts["ce"]
    assert name == METHODS["ce"]["name"]
    assert x.mean == pytest.approx(np.mean(ce_file["heldout_ce"]["per_prompt"]["heldout_ce"]))
    assert x.ci == tuple(ce_file["heldout_ce"]["ci"]["heldout_ce"])
    assert y.mean == pytest.approx(np.mean(ce_file["alpaca_eval"]["per_prompt"]["ngram"]))
    # win_rate@max is the largest n of the curve.
    wr = {p[0]: p[2] for p in plane_points(runs, "alpaca_eval/win_rate@max", "alpaca_eval/ngram")}
    assert wr["ce"].mean == pytest.approx(ce_file["alpaca_eval"]["metrics"]["win_rate@8"])


def test_without_per_prompt_values_stored_ci_or_no_band(tmp_path):
    r, ref = rewards(0.0, seed=6)
    m = alpaca_metrics(r, ref, 0.0, 6)
    m.pop("per_prompt")
    make_run(tmp_path, "a", "ce", {"alpaca_eval": m})
    (c,) = bon_curves(collect(tmp_path))
    assert c.lo[-1] == m["ci"]["win_rate@8"][0]
    make_run(tmp_path, "b", "ce", {"alpaca_eval": m})
    (c,) = bon_curves(collect(tmp_path))  # two seed runs, no per-prompt values: a mean, no band
    assert c.mean[-1] == pytest.approx(m["metrics"]["win_rate@8"]) and np.isnan(c.lo).all()


def test_corrupted_per_prompt_values_are_named(tmp_path):
    m = heldout_metrics(2.0, 0)
    m["per_prompt"]["heldout_ce"] = m["per_prompt"]["heldout_ce"][:-1]
    with pytest.raises(ValueError, match=r"heldout_ce.*29 values but prompt_ids has 30"):
        estimates([{**m, "benchmark": "heldout_ce"}, {**m, "benchmark": "heldout_ce"}], ["heldout_ce"])
    with pytest.raises(ValueError, match="no value for"):
        estimates([{"benchmark": "alpaca_eval", "metrics": {}}], ["ngram"])
