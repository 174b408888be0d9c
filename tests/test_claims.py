"""ts2.claims: verdicts of the poster's claims from per-prompt results, on hand-computed cases; the judge's
controls on scripted judges; the matched-quality (TOST) gate of the diversity claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests._judges import NoiseLovingJudge, SaneJudge, control_metrics
from ts2.claims import (
    ClaimSpec,
    JudgeCheck,
    QualityMetric,
    QualityRule,
    check_judge,
    is_diversity,
    judge,
    load_claims,
    per_prompt,
    rests_on_judge,
    verdict_line,
)

REPO = Path(__file__).resolve().parents[1]
CE_RULE = QualityRule((QualityMetric("heldout_ce/heldout_ce", 0.1, "lower", "held-out CE", "nats/token"),))
NAMES = {"ts2": "TS²", "ce": "CE"}


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
    """Without gates (a judge taken as valid; a metric that is neither judge- nor diversity-based)."""
    base = np.array([5.0, 7.0, 6.0, 8.0])
    results = {
        "ts2": [_run("humaneval", "pass@1", base + shift)],
        "ce": [_run("humaneval", "pass@1", base)],
    }
    v = judge(ClaimSpec("t", "humaneval/pass@1", "ts2", "ce", relation), results)
    assert v.status == status


def test_zero_mean_noise_is_inconclusive_and_missing_is_not_measured():
    base = np.zeros(8)
    noise = np.array([1.0, -1.0] * 4)
    same_fit = _run("heldout_ce", "heldout_ce", [2.0] * 8)
    results = {
        "ts2": [{**_run("creative_poem", "ngram", base + noise), **same_fit}],
        "ce": [{**_run("creative_poem", "ngram", base), **same_fit}],
    }
    v = judge(ClaimSpec("t", "creative_poem/ngram", "ts2", "ce", "greater"), results, CE_RULE)
    assert v.status == "inconclusive" and v.evidence.diff == pytest.approx(0.0)
    assert v.evidence.ci[0] < 0 < v.evidence.ci[1]
    miss = judge(ClaimSpec("t", "creative_story/ngram", "ts2", "ce", "greater"), results, CE_RULE)
    assert miss.status == "not measured" and "per-prompt" in miss.note


def test_claim_kinds():
    assert rests_on_judge("alpaca_eval/win_rate@max") and not rests_on_judge("alpaca_eval/ngram")
    for m in ("alpaca_eval/ngram", "creative_poem/paper_self_bleu", "alpaca_eval/sent_bert@cut8"):
        assert is_diversity(m)
    assert not is_diversity("alpaca_eval/answer_words") and not is_diversity("alpaca_eval/win_rate@1")


def _diversity_results(ce_gap, ref_lm_gap=None, n=6):
    """TS² is 2 N-gram points above CE on every prompt; its held-out CE differs from CE's by ``ce_gap``
    (per prompt values), its ref-LM score by ``ref_lm_gap`` (None: TS² lacks the metric)."""
    base = np.array([10.0, 12.0, 11.0, 13.0, 9.0, 10.5])[:n]
    fit = np.array([2.0, 2.2, 2.4, 1.9, 2.1, 2.3])[:n]
    ts2 = {
        **_run("alpaca_eval", "ngram", base + 2),
        **_run("heldout_ce", "heldout_ce", fit + np.asarray(ce_gap)),
    }
    ce = {**_run("alpaca_eval", "ngram", base), **_run("heldout_ce", "heldout_ce", fit)}
    ce.update(_run("ref_lm", "ref_lm", -fit))
    if ref_lm_gap is not None:
        ts2.update(_run("ref_lm", "ref_lm", -fit + np.asarray(ref_lm_gap)))
    return {"ts2": [ts2], "ce": [ce]}


RULE = QualityRule(
    (
        QualityMetric("heldout_ce/heldout_ce", 0.1, "lower", "held-out CE", "nats/token"),
        QualityMetric("ref_lm/ref_lm", 0.1, "higher", "ref-LM log-lik", "nats/token"),
    )
)
SPEC = ClaimSpec("TS² AE N-gram > CE", "alpaca_eval/ngram", "ts2", "ce", "greater")


def test_diversity_is_reproduced_only_at_equivalent_quality():
    # Constant gaps give degenerate CIs: held-out CE +0.05 and ref-LM −0.02 lie inside ±0.1 -> equivalent.
    v = judge(SPEC, _diversity_results([0.05] * 6, [-0.02] * 6), RULE)
    assert v.status == "reproduced" and v.evidence.ci == pytest.approx((2.0, 2.0))
    assert [c.result.decision for c in v.quality] == ["equivalent", "equivalent"]
    line = verdict_line(v, NAMES, "tiny scale")
    assert (
        "held-out CE TS² − CE = +0.05 nats/token [+0.05, +0.05] (90% CI, 6 prompts) — equivalent within ±0.1"
        in line
    )
    assert "ref-LM log-lik TS² − CE = -0.02 nats/token" in line


def test_quality_beyond_the_margin_reads_quality_differs_with_the_gap():
    v = judge(SPEC, _diversity_results([0.5] * 6, [0.0] * 6), RULE)
    assert v.status == "quality differs"
    line = verdict_line(v, NAMES, "tiny scale")
    assert line.startswith("- **quality differs** at tiny scale — TS² AE N-gram > CE: TS² − CE = +2.00")
    assert (
        "held-out CE TS² − CE = +0.50 nats/token [+0.50, +0.50] (90% CI, 6 prompts) — differs beyond ±0.1 (TS² worse)"
        in line
    )
    # higher ref-LM is better: a gap of +0.5 there is TS² better, still beyond the margin
    better = judge(SPEC, _diversity_results([0.0] * 6, [0.5] * 6), RULE)
    assert better.status == "quality differs" and "(TS² better)" in verdict_line(better, NAMES, "tiny scale")


def test_undecided_equivalence_is_inconclusive_and_a_missing_metric_is_named():
    # held-out CE gaps alternate 0 and 0.2: the mean gap is the margin 0.1 itself, and a (non-degenerate)
    # percentile CI around it has lo < 0.1 < hi: it crosses the margin -> undecided
    v = judge(SPEC, _diversity_results([0.0, 0.2] * 3), RULE)
    assert v.quality[0].result.decision == "undecided"
    assert v.status == "inconclusive (quality not shown equivalent)"
    line = verdict_line(v, NAMES, "tiny scale")
    assert "not shown equivalent within ±0.1 (the CI crosses the margin)" in line
    assert "ref-LM log-lik: not measured: no per-prompt ref_lm/ref_lm for ts2" in line
    none = judge(SPEC, _diversity_results([0.0] * 6), QualityRule())
    assert none.status == "inconclusive (quality not measured)"
    assert "Quality: no quality metric configured." in verdict_line(none, NAMES, "tiny scale")


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
    spec = ClaimSpec("wr", "alpaca_eval/win_rate@max", "ts2", "ce", "at_least")
    v = judge(spec, {"ts2": [ts2], "ce": [ce]}, CE_RULE, JudgeCheck("valid"))
    assert v.status == "reproduced" and v.evidence.diff == pytest.approx(10.0)
    q = v.quality[0].result
    assert (
        q.gap.diff == pytest.approx(0.5)
        and q.gap.ci == pytest.approx((0.5, 0.5))
        and q.decision == "different"
    )
    line = verdict_line(v, NAMES, "tiny scale")
    assert "TS² − CE = +10.00 [+10.00, +10.00]" in line and "(TS² worse)" in line and "3 prompts" in line
    # the same claim on a judge that failed (or never met) its controls
    failed = judge(spec, {"ts2": [ts2], "ce": [ce]}, CE_RULE, JudgeCheck("invalid"))
    assert failed.status == "inconclusive: the judge failed its controls"
    unchecked = judge(spec, {"ts2": [ts2], "ce": [ce]}, CE_RULE, JudgeCheck("unchecked"))
    assert unchecked.status == "inconclusive: the judge was not checked on controls"


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save_pretrained(path)
    return path


def test_a_judge_that_prefers_noise_fails_its_controls(tokenizer_dir, tmp_path):
    """Controls made by the control backend and scored through the AlpacaEval scorer with a judge that rewards
    words absent from the reference: random tokens beat the shuffled reference, so the judge is invalid."""
    controls = {
        k: [{"alpaca_eval": control_metrics(tmp_path, k, tokenizer_dir, NoiseLovingJudge())}]
        for k in ("reference", "shuffled", "random")
    }
    wr = {k: v[0]["alpaca_eval"]["metrics"]["win_rate@1"] for k, v in controls.items()}
    assert wr["reference"] == pytest.approx(50.0) and wr["random"] > wr["shuffled"] > wr["reference"]
    check = check_judge(controls)
    assert check.status == "invalid" and not check.passed
    assert all(d.ci[1] < 0 for _, _, d in check.steps)  # both adjacent differences lie below 0
    assert "reference − shuffled = -" in check.note and "does not lie above 0" in check.note


def test_a_sane_judge_passes_its_controls(tokenizer_dir, tmp_path):
    controls = {
        k: [{"alpaca_eval": control_metrics(tmp_path, k, tokenizer_dir, SaneJudge())}]
        for k in ("reference", "shuffled", "random")
    }
    check = check_judge(controls)
    assert check.status == "valid" and all(d.ci[0] > 0 for _, _, d in check.steps)
    # with one control missing the judge cannot be shown valid; with none it is unchecked
    assert check_judge({k: v for k, v in controls.items() if k != "random"}).status == "invalid"
    assert check_judge({}).status == "unchecked"


def test_the_shipped_claims_load():
    claims = load_claims(REPO / "experiments/table1/paper_numbers.yaml")
    assert len(claims) == 12
    assert {c.a for c in claims} == {"ts2", "sparsemax", "entmax15"} and {c.b for c in claims} == {"ce"}


def test_the_shipped_quality_rule_loads():
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR

    rule = QualityRule.from_config(
        OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "report.yaml").quality)
    )
    assert [(q.key, q.margin, q.better) for q in rule.metrics] == [
        ("heldout_ce/heldout_ce", 0.1, "lower"),
        ("ref_lm/ref_lm", 0.1, "higher"),
    ]
    assert (
        "90% paired-bootstrap CI inside ±margin" in rule.header()
        and "held-out CE ±0.1 nats/token" in rule.header()
    )


def test_bad_claim_and_quality_settings_are_named():
    with pytest.raises(ValueError, match="relation must be one of"):
        ClaimSpec("oops", "alpaca_eval/ngram", "ts2", "ce", "bigger")
    with pytest.raises(ValueError, match="the TOST margin must be > 0"):
        QualityMetric("heldout_ce/heldout_ce", 0.0)
    with pytest.raises(ValueError, match="better must be 'lower' or 'higher'"):
        QualityRule.from_config({"metrics": {"x/y": {"margin": 0.1, "better": "up"}}})
