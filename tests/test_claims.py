"""ts2.claims: verdicts of the poster's claims from per-prompt results, on hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ts2.claims import ClaimSpec, judge, load_claims, per_prompt, verdict_line

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
