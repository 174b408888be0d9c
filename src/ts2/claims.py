"""The poster's Table-1 claims, judged on our own runs (issue #15 item 5; PAPER.md §5).

Each claim compares two methods on one metric, e.g. "TS² AlpacaEval N-gram diversity > CE". The evidence is
the difference of means d = mean(a) − mean(b) over the prompts both were scored on, with a 95% percentile-
bootstrap CI. Prompts are resampled jointly for both methods (paired: a prompt that is hard for one is hard
for the other), and when a method was trained with several seeds (``SEEDS=k``) its seed runs are resampled
too, so the CI covers both sources of variation (:func:`ts2.eval.stats.seeded_paired_bootstrap`: seeds, then
prompts). This module only states and judges claims; every bootstrap lives in :mod:`ts2.eval.stats`.

Verdicts, from the CI of d (never from the point estimate alone):

* ``greater`` / ``at_least`` (a > b, a ≥ b): **reproduced** when the CI lies above 0, **not reproduced** when
  it lies below 0, **inconclusive** otherwise (for ``at_least``: no detectable difference, so "≥" is not
  contradicted but not shown either);
* ``below`` (a < b; the poster's "far below" is tested as below, and the size is printed): reproduced when
  the CI lies below 0, not reproduced above 0, inconclusive otherwise.

"At comparable quality" is judged explicitly: every verdict line also carries the quality gap a − b on the
configured quality metric (held-out response CE, lower = better fit) with its own paired CI, so diversity
bought with a worse fit is visible on the same line. The claims themselves are data, in
``experiments/table1/paper_numbers.yaml`` (``claims:``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ts2.eval.stats import PairedDifference, seeded_paired_bootstrap

RELATIONS = ("greater", "at_least", "below")
SYMBOL = {"greater": ">", "at_least": "≥", "below": "<"}

# A method's results: one entry per training run (seed), each mapping benchmark id -> its metrics-file dict.
MethodRuns = Sequence[Mapping[str, Mapping[str, Any]]]


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
class Verdict:
    spec: ClaimSpec
    status: str  # reproduced | not reproduced | inconclusive | not measured
    evidence: PairedDifference | None
    quality: PairedDifference | None
    note: str = ""


def load_claims(path: str | Path) -> tuple[list[ClaimSpec], str | None]:
    """The ``claims:`` list and ``quality_metric`` of a paper-numbers YAML file."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    claims = []
    for i, c in enumerate(data.get("claims") or []):
        try:
            claims.append(ClaimSpec(**c))
        except TypeError as err:
            raise ValueError(f"{path}: claims[{i}] is malformed ({err}).") from err
    return claims, data.get("quality_metric")


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


def _difference(
    results: Mapping[str, MethodRuns], key: str, a: str, b: str, **kw: Any
) -> PairedDifference | None:
    runs_a = [x for x in (per_prompt(r, key) for r in results.get(a, [])) if x is not None]
    runs_b = [x for x in (per_prompt(r, key) for r in results.get(b, [])) if x is not None]
    if not runs_a or not runs_b:
        return None
    return seeded_paired_bootstrap(runs_a, runs_b, **kw)


def judge(
    spec: ClaimSpec, results: Mapping[str, MethodRuns], quality_metric: str | None = None, **kw: Any
) -> Verdict:
    """The verdict of one claim from per-prompt results (``results``: method id -> its seed runs)."""
    ev = _difference(results, spec.metric, spec.a, spec.b, **kw)
    quality = _difference(results, quality_metric, spec.a, spec.b, **kw) if quality_metric else None
    if ev is None:
        missing = [m for m in (spec.a, spec.b) if not results.get(m)]
        why = f"no runs of {missing}" if missing else f"no per-prompt values of {spec.metric}"
        return Verdict(spec, "not measured", None, quality, why)
    lo, hi = ev.ci
    above, below = lo > 0, hi < 0
    if spec.relation == "below":
        above, below = below, above
    status = "reproduced" if above else "not reproduced" if below else "inconclusive"
    return Verdict(spec, status, ev, quality)


def verdict_line(v: Verdict, names: Mapping[str, str], scale: str) -> str:
    """One Markdown bullet: verdict, claim, evidence with CI and size, and the quality gap beside it."""
    a, b = names.get(v.spec.a, v.spec.a), names.get(v.spec.b, v.spec.b)
    head = f"- **{v.status}** at {scale} — {v.spec.text}"
    if v.evidence is None:
        return f"{head}: {v.note}."
    e = v.evidence
    seeds = f"{e.seeds[0]}+{e.seeds[1]} seed runs" if max(e.seeds) > 1 else "1 seed each"
    line = f"{head}: {a} − {b} = {e.text()} ({e.num_prompts} prompts, {seeds}; paired bootstrap 95% CI)."
    if v.quality is None:
        return line + " Quality at comparable fit: not measured (no held-out CE for both)."
    q = v.quality
    if q.ci[0] > 0:
        fit = f"{a} fits the SFT data worse"
    elif q.ci[1] < 0:
        fit = f"{a} fits the SFT data better"
    else:
        fit = "no detectable difference in fit"
    return (
        f"{line} Quality (judged by stating the fit gap beside it): held-out CE {a} − {b} = "
        f"{q.text(' nats')} ({q.num_prompts} rows) — {fit}."
    )


def significance(
    results: Mapping[str, MethodRuns], keys: Sequence[str], reference: str = "ce", **kw: Any
) -> dict[tuple[str, str], PairedDifference]:
    """(method, metric) -> its paired difference against ``reference``, for every method with per-prompt data."""
    out: dict[tuple[str, str], PairedDifference] = {}
    for method in results:
        if method == reference:
            continue
        for key in keys:
            d = _difference(results, key, method, reference, **kw)
            if d is not None:
                out[(method, key)] = d
    return out
