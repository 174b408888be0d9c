"""ts2.claims: verdicts of the poster's claims from per-prompt results, on hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ts2.claims import ClaimSpec, judge, load_claims, per_prompt, seeded_paired_bootstrap, verdict_line

REPO = Path(__file__).resolve().parents[1]


def _run(bench: str, metric: str, values, ids=None) -> dict:
    ids = ids if ids is not None else list(range(len(values)))
    return {
        bench: {
            "metrics": {metric: float(np.mean(values))},
            "per_prompt": {metric: list(values)},
            "prompt_ids": ids,
        }
    }


def test_constant_shift_gives_a_degenerate_ci():
    b = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    d = seeded_paired_bootstrap([(list("abcde"), b + 1.5)], [(list("abcde"), b)])
    assert d.diff == pytest.approx(1.5)
    assert d.ci == pytest.approx((1.5, 1.5))  # every resample of a constant difference is 1.5
    assert d.num_prompts == 5 and d.seeds == (1, 1)


def test_seed_runs_widen_the_ci_by_hand():
    # a's two seeds differ from b by +4 and +2 on every prompt: a resample's difference is the mean of the two
    # drawn seed shifts, i.e. 2, 3 or 4 (probabilities 1/4, 1/2, 1/4), so the 95% interval is [2, 4].
    b = np.linspace(0.0, 1.0, 7)
    ids = [str(i) for i in range(7)]
    d = seeded_paired_bootstrap([(ids, b + 4), (ids, b + 2)], [(ids, b)], n_resamples=2000)
    assert d.diff == pytest.approx(3.0)
    assert d.ci == pytest.approx((2.0, 4.0))
    assert d.seeds == (2, 1)


def test_pairs_by_prompt_id_not_position():
    a = seeded_paired_bootstrap(
        [(["x", "y", "z"], np.array([10.0, 20.0, 30.0]))], [(["z", "x"], np.array([29.0, 9.0]))]
    )
    assert d_equal(a.diff, 1.0) and a.num_prompts == 2


def d_equal(x: float, y: float) -> bool:
    return abs(x - y) < 1e-12


@pytest.mark.parametrize(
    ("shift", "relation", "status"),
    [
        (+1.0, "greater", "reproduced"),
        (-1.0, "greater", "not reproduced"),
        (-1.0, "below", "reproduced"),
        (+1.0, "below", "not reproduced"),
        (+1.0, "at_least", "reproduced"),
    ],
)
def test_verdicts_follow_the_ci(shift, relation, status):
    base = np.array([5.0, 7.0, 6.0, 8.0])
    results = {
        "ts2": [_run("alpaca_eval", "ngram", base + shift)],
        "ce": [_run("alpaca_eval", "ngram", base)],
    }
    v = judge(ClaimSpec("t", "alpaca_eval/ngram", "ts2", "ce", relation), results)
    assert v.status == status


def test_zero_mean_noise_is_inconclusive_and_missing_is_not_measured():
    base = np.zeros(8)
    noise = np.array([1.0, -1.0] * 4)
    results = {
        "ts2": [_run("creative_poem", "ngram", base + noise)],
        "ce": [_run("creative_poem", "ngram", base)],
    }
    v = judge(ClaimSpec("t", "creative_poem/ngram", "ts2", "ce", "greater"), results)
    assert v.status == "inconclusive" and v.evidence.diff == pytest.approx(0.0)
    assert v.evidence.ci[0] < 0 < v.evidence.ci[1]
    miss = judge(ClaimSpec("t", "creative_story/ngram", "ts2", "ce", "greater"), results)
    assert miss.status == "not measured" and "per-prompt" in miss.note


def test_win_rate_max_resolves_to_the_largest_n_and_quality_is_reported():
    ids = [0, 1, 2]
    ae = lambda w1, w8: {  # noqa: E731
        "metrics": {"win_rate@1": float(np.mean(w1)), "win_rate@8": float(np.mean(w8))},
        "per_prompt": {"win_rate@1": w1, "win_rate@8": w8},
        "prompt_ids": ids,
    }
    ts2 = {"alpaca_eval": ae([50, 50, 50], [70, 60, 65]), **_run("heldout_ce", "heldout_ce", [2.0, 2.2, 2.4])}
    ce = {"alpaca_eval": ae([50, 50, 50], [60, 50, 55]), **_run("heldout_ce", "heldout_ce", [1.5, 1.7, 1.9])}
    assert per_prompt(ts2, "alpaca_eval/win_rate@max")[1].tolist() == [70, 60, 65]
    v = judge(
        ClaimSpec("wr", "alpaca_eval/win_rate@max", "ts2", "ce", "at_least"),
        {"ts2": [ts2], "ce": [ce]},
        quality_metric="heldout_ce/heldout_ce",
    )
    assert v.status == "reproduced" and v.evidence.diff == pytest.approx(10.0)
    assert v.quality.diff == pytest.approx(0.5) and v.quality.ci == pytest.approx((0.5, 0.5))
    line = verdict_line(v, {"ts2": "TS²", "ce": "CE"}, "tiny scale")
    assert (
        "TS² − CE = +10.00 [+10.00, +10.00]" in line
        and "fits the SFT data worse" in line
        and "3 prompts" in line
    )


def test_the_shipped_claims_load():
    claims, quality = load_claims(REPO / "experiments/table1/paper_numbers.yaml")
    assert len(claims) == 12 and quality == "heldout_ce/heldout_ce"
    assert {c.a for c in claims} == {"ts2", "sparsemax", "entmax15"} and {c.b for c in claims} == {"ce"}


def test_bad_claim_is_named():
    with pytest.raises(ValueError, match="relation must be one of"):
        ClaimSpec("oops", "alpaca_eval/ngram", "ts2", "ce", "bigger")
