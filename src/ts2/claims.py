"""The poster's Table-1 claims, judged on our own runs (issue #15 item 5, issue #19; PAPER.md §5).

Each claim compares two methods on one metric, e.g. "TS² AlpacaEval N-gram diversity > CE". The evidence is
the difference of means d = mean(a) − mean(b) over the prompts both were scored on, with a 95% percentile-
bootstrap CI. Prompts are resampled jointly for both methods (paired: a prompt that is hard for one is hard
for the other), and when a method was trained with several seeds its seed runs are resampled too, so the CI
covers both sources of variation (:func:`ts2.eval.stats.seeded_paired_bootstrap`: seeds, then prompts). This
module only states and judges claims; every bootstrap lives in :mod:`ts2.eval.stats`.

The direction, from the CI of d (never from the point estimate alone):

* ``greater`` / ``at_least`` (a > b, a ≥ b): **reproduced** when the CI lies above 0, **not reproduced** when
  it lies below 0, **inconclusive** otherwise (for ``at_least``: no detectable difference, so "≥" is not
  contradicted but not shown either);
* ``below`` (a < b; the poster's "far below" is tested as below, and the size is printed): reproduced when
  the CI lies below 0, not reproduced above 0, inconclusive otherwise.

Two gates come first (issue #19):

* **The judge.** A claim on a reward-model win rate (``alpaca_eval/win_rate@…``) counts only when the judge passed
  its controls (:func:`check_judge`): it must rank the reference answers above the shuffled reference above
  random tokens on best-of-1 win rate, each adjacent paired difference with a 95% CI above 0. Otherwise the
  verdict is "inconclusive: the judge failed its controls" (or "…was not checked on controls" without any).
* **Matched quality.** A diversity claim (N-gram, Self-BLEU, Sent-BERT, in any text mode or length cut) is
  reproduced only at equivalent quality: on every configured quality metric the runs have (held-out CE,
  the reference-LM score, …), a TOST with that metric's margin (:func:`ts2.eval.stats.tost`: the 90% paired CI
  of the gap inside ±margin for α = 0.05) must show equivalence. A gap shown beyond a margin gives "quality
  differs" (with the gap); an undecided TOST gives "inconclusive (quality not shown equivalent)"; no quality
  metric at all gives "inconclusive (quality not measured)". Only at equivalent quality does the CI of d decide.

The claims themselves are data, in ``experiments/table1/paper_numbers.yaml`` (``claims:``); the quality metrics
and margins are config (``quality:`` of ``conf/report.yaml``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ts2.eval.stats import (
    DIFFERENT,
    EQUIVALENT,
    UNDECIDED,
    Equivalence,
    PairedDifference,
    seeded_paired_bootstrap,
    tost,
)

RELATIONS = ("greater", "at_least", "below")
SYMBOL = {"greater": ">", "at_least": "≥", "below": "<"}

# A method's results: one entry per training run (seed), each mapping benchmark id -> its metrics-file dict.
MethodRuns = Sequence[Mapping[str, Mapping[str, Any]]]

JUDGE_METRIC = "alpaca_eval/win_rate@1"
JUDGE_ORDER = ("reference", "shuffled", "random")
"""The controls a valid judge ranks in this order (each above the next) on :data:`JUDGE_METRIC`."""
_DIVERSITY = re.compile(r"(^|_)(ngram|self_bleu|sent_bert)(@cut\d+)?$")


def rests_on_judge(metric: str) -> bool:
    """A reward-model win rate (``alpaca_eval/win_rate@<n>``, ``win_rate@max``)."""
    return metric.startswith("alpaca_eval/win_rate@")


def is_diversity(metric: str) -> bool:
    """A diversity metric in any text mode or length cut (``ngram``, ``paper_self_bleu``, ``sent_bert@cut8``)."""
    return bool(_DIVERSITY.search(metric.split("/", 1)[-1]))


@dataclass(frozen=True)
class ClaimSpec:
    """One claim of the poster: ``a <relation> b`` on ``metric`` (``<bench>/<metric>``)."""

    text: str
    metric: str
    a: str
    b: str
    relation: str

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(
                f"claim {self.text!r}: relation must be one of {RELATIONS}, got {self.relation!r}."
            )
        if "/" not in self.metric:
            raise ValueError(f"claim {self.text!r}: metric must be '<bench>/<metric>', got {self.metric!r}.")


@dataclass(frozen=True)
class QualityMetric:
    """A quality axis of the matched-quality gate: its key, TOST margin and which direction is better."""

    key: str  # <bench>/<metric>
    margin: float
    better: str = "lower"  # lower | higher
    label: str = ""
    unit: str = ""

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ValueError(
                f"quality metric {self.key}: better must be 'lower' or 'higher', got {self.better!r}."
            )
        if not self.margin > 0:
            raise ValueError(f"quality metric {self.key}: the TOST margin must be > 0, got {self.margin!r}.")


@dataclass(frozen=True)
class QualityRule:
    """The matched-quality gate: the quality metrics with their margins, and the TOST level α."""

    metrics: tuple[QualityMetric, ...] = ()
    alpha: float = 0.05

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> QualityRule:
        """From ``quality:`` of conf/report.yaml: ``alpha`` and ``metrics: {<bench>/<metric>: {margin, better,
        label, unit}}``. A metric whose ``margin`` is null is left out: a scale where it cannot judge quality turns
        it off (small scale: ``quality.metrics={ref_lm/ref_lm:{margin:null}}``, the policies being fine-tunes of
        the reference LM)."""
        node = dict(node or {})
        metrics = tuple(
            QualityMetric(k, **dict(v))
            for k, v in dict(node.get("metrics") or {}).items()
            if v is not None and dict(v).get("margin") is not None
        )
        return cls(metrics, float(node.get("alpha", 0.05)))

    def header(self) -> str:
        """The line that states the margins in the table header."""
        if not self.metrics:
            return "Matched quality: no quality metric configured, so no diversity claim can be reproduced."
        ms = "; ".join(
            f"{q.label or q.key} ±{q.margin:g}{' ' + q.unit if q.unit else ''}" for q in self.metrics
        )
        return (
            f"Matched quality: a diversity claim is reproduced only if, on every quality metric the runs have, a "
            f"TOST shows the gap within its margin ({100 * (1 - 2 * self.alpha):.0f}% paired-bootstrap CI inside "
            f"±margin, α = {self.alpha:g}); margins: {ms}."
        )


@dataclass(frozen=True)
class JudgeCheck:
    """The judge's controls: ``valid`` (ranks reference > shuffled > random, CIs separating them), ``invalid``,
    or ``unchecked`` (no control was scored); the adjacent paired differences behind it."""

    status: str
    steps: tuple[tuple[str, str, PairedDifference | None], ...] = ()
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "valid"

    @property
    def failure(self) -> str:
        """The verdict of a claim that rests on this judge when it did not pass."""
        if self.status == "unchecked":
            return "inconclusive: the judge was not checked on controls"
        return "inconclusive: the judge failed its controls"


@dataclass(frozen=True)
class QualityCheck:
    """One quality metric's TOST for a claim (``result`` None: skipped, ``why`` says why)."""

    metric: QualityMetric
    result: Equivalence | None
    why: str = ""


@dataclass(frozen=True)
class Verdict:
    spec: ClaimSpec
    status: (
        str  # reproduced | not reproduced | inconclusive | not measured | quality differs | inconclusive (…)
    )
    evidence: PairedDifference | None
    quality: tuple[QualityCheck, ...] = ()
    note: str = ""


def load_claims(path: str | Path) -> list[ClaimSpec]:
    """The ``claims:`` list of a paper-numbers YAML file."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    claims = []
    for i, c in enumerate(data.get("claims") or []):
        try:
            claims.append(ClaimSpec(**c))
        except TypeError as err:
            raise ValueError(f"{path}: claims[{i}] is malformed ({err}).") from err
    return claims


def resolve_metric(metrics_file: Mapping[str, Any], metric: str) -> str:
    """``win_rate@max`` -> the largest ``win_rate@n`` of the file; any other name unchanged."""
    if metric != "win_rate@max":
        return metric
    ns = [
        int(k.split("@")[1])
        for k in metrics_file.get("metrics", {})
        if k.startswith("win_rate@") and k.split("@")[1].isdigit()
    ]
    return f"win_rate@{max(ns)}" if ns else metric


def per_prompt(run: Mapping[str, Mapping[str, Any]], key: str) -> tuple[list[Any], np.ndarray] | None:
    """(prompt ids, per-prompt values) of ``<bench>/<metric>`` in one run, or None when not recorded."""
    bench, metric = key.split("/", 1)
    mfile = run.get(bench)
    if not mfile:
        return None
    metric = resolve_metric(mfile, metric)
    values = (mfile.get("per_prompt") or {}).get(metric)
    ids = mfile.get("prompt_ids") or []
    if values is None or len(values) != len(ids) or not ids:
        return None
    return [str(i) for i in ids], np.asarray(values, dtype=np.float64)


def _runs(results: Mapping[str, MethodRuns], key: str, method: str) -> list[tuple[list[Any], np.ndarray]]:
    return [x for x in (per_prompt(r, key) for r in results.get(method, [])) if x is not None]


def difference(
    results: Mapping[str, MethodRuns], key: str, a: str, b: str, **kw: Any
) -> PairedDifference | None:
    """mean(a) − mean(b) of ``key`` with its paired (two-level) bootstrap CI; None when either lacks it."""
    runs_a, runs_b = _runs(results, key, a), _runs(results, key, b)
    if not runs_a or not runs_b:
        return None
    return seeded_paired_bootstrap(runs_a, runs_b, **kw)


def check_judge(controls: Mapping[str, MethodRuns], metric: str = JUDGE_METRIC, **kw: Any) -> JudgeCheck:
    """Is the judge valid? ``controls``: control kind -> its runs' metrics. Valid iff it ranks
    reference > shuffled > random on ``metric`` (best-of-1 win rate) with the paired 95% CI of each adjacent
    difference above 0; invalid otherwise (a missing control included); unchecked without any control."""
    if not any(controls.get(k) for k in JUDGE_ORDER):
        return JudgeCheck("unchecked", (), "no judge control (reference, shuffled, random) was scored")
    missing = [k for k in JUDGE_ORDER if not controls.get(k)]
    steps = tuple(
        (hi, lo, difference(controls, metric, hi, lo, **kw))
        for hi, lo in zip(JUDGE_ORDER, JUDGE_ORDER[1:], strict=False)
    )
    if missing:
        return JudgeCheck("invalid", steps, f"the control(s) {', '.join(missing)} were not scored")
    fails = []
    for hi, lo, d in steps:
        if d is None:
            fails.append(f"{hi} − {lo}: no per-prompt {metric}")
        elif not d.ci[0] > 0:
            fails.append(f"{hi} − {lo} = {d.text()} does not lie above 0")
    if fails:
        return JudgeCheck("invalid", steps, "; ".join(fails))
    return JudgeCheck("valid", steps, "reference > shuffled > random, each paired 95% CI above 0")


def _quality(
    results: Mapping[str, MethodRuns], spec: ClaimSpec, rule: QualityRule, judge_ok: bool, **kw: Any
) -> tuple[QualityCheck, ...]:
    out = []
    for q in rule.metrics:
        if rests_on_judge(q.key) and not judge_ok:
            out.append(QualityCheck(q, None, "skipped: the judge did not pass its controls"))
            continue
        lacking = [m for m in (spec.a, spec.b) if not _runs(results, q.key, m)]
        if lacking:
            out.append(QualityCheck(q, None, f"not measured: no per-prompt {q.key} for {', '.join(lacking)}"))
            continue
        res = tost(
            _runs(results, q.key, spec.a), _runs(results, q.key, spec.b), q.margin, alpha=rule.alpha, **kw
        )
        out.append(QualityCheck(q, res))
    return tuple(out)


def judge(
    spec: ClaimSpec,
    results: Mapping[str, MethodRuns],
    quality: QualityRule | None = None,
    judge_check: JudgeCheck | None = None,
    **kw: Any,
) -> Verdict:
    """The verdict of one claim (module docstring) from per-prompt results (``results``: method id -> its seed
    runs). ``judge_check`` None treats the judge as valid (no gate); ``quality`` None: no quality metric."""
    rule = quality or QualityRule()
    judge_ok = judge_check is None or judge_check.passed
    ev = difference(results, spec.metric, spec.a, spec.b, **kw)
    checks = _quality(results, spec, rule, judge_ok, **kw)
    if ev is None:
        missing = [m for m in (spec.a, spec.b) if not results.get(m)]
        why = f"no runs of {missing}" if missing else f"no per-prompt values of {spec.metric}"
        return Verdict(spec, "not measured", None, checks, why)
    lo, hi = ev.ci
    above, below = lo > 0, hi < 0
    if spec.relation == "below":
        above, below = below, above
    status = "reproduced" if above else "not reproduced" if below else "inconclusive"
    if rests_on_judge(spec.metric) and not judge_ok:
        assert judge_check is not None
        return Verdict(spec, judge_check.failure, ev, checks)
    if is_diversity(spec.metric):
        decided = [c.result.decision for c in checks if c.result is not None]
        if not decided:
            status = "inconclusive (quality not measured)"
        elif DIFFERENT in decided:
            status = "quality differs"
        elif UNDECIDED in decided:
            status = "inconclusive (quality not shown equivalent)"
    return Verdict(spec, status, ev, checks)


def _quality_text(c: QualityCheck, a: str, b: str) -> str:
    q = c.metric
    name = q.label or q.key
    if c.result is None:
        return f"{name}: {c.why}"
    g, unit = c.result.gap, f" {q.unit}" if q.unit else ""
    level = f"{100 * (1 - 2 * c.result.alpha):.0f}% CI"
    decision = c.result.decision
    if decision == EQUIVALENT:
        what = f"equivalent within ±{q.margin:g}"
    elif decision == DIFFERENT:
        worse = (g.diff > 0) == (q.better == "lower")
        what = f"differs beyond ±{q.margin:g} ({a} {'worse' if worse else 'better'})"
    else:
        what = f"not shown equivalent within ±{q.margin:g} (the CI crosses the margin)"
    return f"{name} {a} − {b} = {g.text(unit)} ({level}, {g.num_prompts} prompts) — {what}"


def verdict_line(v: Verdict, names: Mapping[str, str], scale: str) -> str:
    """One Markdown bullet: verdict, claim, evidence with CI and size, and each quality metric's TOST."""
    a, b = names.get(v.spec.a, v.spec.a), names.get(v.spec.b, v.spec.b)
    head = f"- **{v.status}** at {scale} — {v.spec.text}"
    quality = (
        " Quality (TOST): " + "; ".join(_quality_text(c, a, b) for c in v.quality) + "."
        if v.quality
        else " Quality: no quality metric configured."
    )
    if v.evidence is None:
        return f"{head}: {v.note}." + quality
    e = v.evidence
    seeds = f"{e.seeds[0]}+{e.seeds[1]} seed runs" if max(e.seeds) > 1 else "1 seed each"
    return f"{head}: {a} − {b} = {e.text()} ({e.num_prompts} prompts, {seeds}; paired bootstrap 95% CI).{quality}"


def significance(
    results: Mapping[str, MethodRuns], keys: Sequence[str], reference: str = "ce", **kw: Any
) -> dict[tuple[str, str], PairedDifference]:
    """(method, metric) -> its paired difference against ``reference``, for every method with per-prompt data."""
    out: dict[tuple[str, str], PairedDifference] = {}
    for method in results:
        if method == reference:
            continue
        for key in keys:
            d = difference(results, key, method, reference, **kw)
            if d is not None:
                out[(method, key)] = d
    return out
