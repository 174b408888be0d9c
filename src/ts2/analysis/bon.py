"""Best-of-n curves and the diversity–quality plane from saved metrics files (issue #13 item 3).

Nothing here recomputes a reward or a diversity score: every number comes from the run folders' metrics
files (``metrics/<bench>.json`` of :mod:`ts2.evaluate`): ``metrics`` (the means), ``ci`` (their 95% CIs),
``per_prompt`` (per-prompt values in ``prompt_ids`` order).

Best-of-n (PAPER.md §4, :mod:`ts2.eval.best_of_n`): the AlpacaEval file holds, for n = 1, 2, 4, …, N,
``per_prompt["win_rate@<n>"]`` = 100 · σ(max_{j<n} r_ij − r_i,ref) for each prompt i, and the win rate is their
mean. A method's curve is the mean over prompts (and over its seed runs, on the prompts they share) with a
95% percentile-bootstrap band (Efron & Tibshirani 1993, §13.3):

* one run: the CI the scorer stored, which is this bootstrap: B resamples of the P prompts with replacement,
  one set of resampled prompt sets for every n (:func:`ts2.eval.stats.bootstrap_cis`, seed 0;
  :func:`ts2.eval.stats.bootstrap_means` draws the same resamples, so it reproduces the stored CI);
* several seed runs of one method: a two-level bootstrap (:func:`ts2.eval.stats.bootstrap_means`): each
  resample draws the seed runs with replacement, then the prompts, and takes the mean of the [seeds, prompts]
  block.

A file without per-prompt values falls back to its stored ``ci`` (one run) or to no band (several).

The diversity–quality plane: one point per method; x = a quality metric (held-out CE, ``heldout_ce``, lower =
better fit; or the best-of-N win rate), y = a diversity metric (AlpacaEval N-gram, 100 − Self-BLEU,
Sent-BERT), each with the same 95% CI as above, drawn as error bars in both directions.

A "method" here is a table row (:func:`ts2.records.group_runs`): seed runs pool only when their configs differ in
``seed`` alone, so two TS² rows of different α stay two curves. Temperature frontiers (:func:`frontiers`): per
row, a quality and a diversity metric at each temperature of its runs' ``frontier/t<T>/`` metrics
(:attr:`ts2.records.RunRecord.frontier`), as a :class:`ts2.eval.stats.Frontier` on the prompts every row shares.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ts2.claims import per_prompt
from ts2.conf import Method
from ts2.eval.stats import (
    LEVEL,
    N_RESAMPLES,
    Frontier,
    bootstrap_means,
    percentile_interval,
    seeded_paired_bootstrap,
    shared_ids,
    stack,
)
from ts2.records import RunGroup, RunRecord, group_runs

log = logging.getLogger("ts2.analysis.bon")

DIVERSITY = ("ngram", "self_bleu", "sent_bert")
DIVERSITY_LABELS = {
    "ngram": "N-gram diversity (×100)",
    "self_bleu": "100 − Self-BLEU",
    "sent_bert": "Sent-BERT diversity (×100)",
}


@dataclass(frozen=True)
class Estimate:
    """A method's mean of one metric with its 95% CI (``ci`` None when it cannot be computed)."""

    mean: float
    ci: tuple[float, float] | None
    num_runs: int
    num_prompts: int | None


@dataclass(frozen=True)
class Curve:
    """A method's best-of-n curve: win rate (%) per n with 95% bands (NaN where there is no band)."""

    method: str
    label: str
    ns: list[int]
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    num_runs: int
    num_prompts: int | None


def win_rate_ns(metrics_file: Mapping[str, Any]) -> list[int]:
    """The n of every ``win_rate@<n>`` (numeric n) in a metrics file, ascending."""
    return sorted(
        int(k.split("@", 1)[1])
        for k in (metrics_file.get("metrics") or {})
        if k.startswith("win_rate@") and k.split("@", 1)[1].isdigit()
    )


def _per_prompt(mfile: Mapping[str, Any], metric: str) -> tuple[list[str], np.ndarray] | None:
    values = (mfile.get("per_prompt") or {}).get(metric)
    ids = mfile.get("prompt_ids") or []
    if values is None or not ids:
        return None
    if len(values) != len(ids):
        raise ValueError(
            f"metrics file of {mfile.get('benchmark')!r}: per_prompt[{metric!r}] has {len(values)} values "
            f"but prompt_ids has {len(ids)}: the file is corrupted; rerun ts2.evaluate."
        )
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(
            f"metrics file of {mfile.get('benchmark')!r}: per_prompt[{metric!r}] holds non-finite values."
        )
    return [str(i) for i in ids], arr


def _blocks(files: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, np.ndarray] | None:
    """{metric: [runs, shared prompts]} when every file has per-prompt values of every metric, else None."""
    per = [[_per_prompt(f, m) for m in metrics] for f in files]
    if any(x is None for row in per for x in row):
        return None
    ids = shared_ids([ids for row in per for ids, _ in row])
    if not ids:
        raise ValueError("the runs of one method share no scored prompt; score them on the same prompts.")
    return {m: stack([row[j] for row in per], ids) for j, m in enumerate(metrics)}


def estimates(
    files: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Estimate]:
    """Mean and 95% CI of each of ``metrics`` over one method's run files (module docstring)."""
    if not files:
        raise ValueError("estimates: no metrics files given.")
    for f in files:
        missing = [m for m in metrics if not isinstance((f.get("metrics") or {}).get(m), (int, float))]
        if missing:
            raise ValueError(f"metrics file of {f.get('benchmark')!r} has no value for {missing}.")
    stored = (files[0].get("ci") or {}) if len(files) == 1 else {}
    blocks = _blocks(files, metrics) if len(files) > 1 or any(m not in stored for m in metrics) else None
    boot = bootstrap_means(blocks, n_resamples=n_resamples, seed=seed) if blocks is not None else {}
    out = {}
    for m in metrics:
        if blocks is not None:
            mean, prompts = float(blocks[m].mean()), blocks[m].shape[1]
        else:
            mean, prompts = float(np.mean([f["metrics"][m] for f in files])), files[0].get("num_prompts")
        if m in stored:  # one run: the scorer's own CI (the same bootstrap, its n_bootstrap)
            ci: tuple[float, float] | None = (float(stored[m][0]), float(stored[m][1]))
        else:
            ci = percentile_interval(boot[m], level) if m in boot else None
        out[m] = Estimate(mean, ci, len(files), prompts)
    return out


def by_method(runs: Sequence[RunRecord], bench: str) -> dict[str, tuple[Method, list[dict]]]:
    """{row key: (method named by the row's label, [metrics file of ``bench`` per seed run])} in table order
    (:func:`ts2.records.group_runs`; judge controls left out), runs lacking ``bench`` left out."""
    out: dict[str, tuple[Method, list[dict]]] = {}
    for g in group_runs(list(runs)):
        files = [r.metrics[bench] for r in g.runs if bench in r.metrics]
        if files:
            out[g.key] = (Method(g.method.id, g.label, g.method.order), files)
    return out


def bon_curves(runs: Sequence[RunRecord], bench: str = "alpaca_eval", **kw: Any) -> list[Curve]:
    """One :class:`Curve` per method from the runs' ``metrics/<bench>.json`` (n: those every run of it has)."""
    curves = []
    for mid, (info, files) in by_method(runs, bench).items():
        ns = sorted(set.intersection(*(set(win_rate_ns(f)) for f in files)))
        if not ns:
            log.info("best-of-n: %s has no win_rate@<n> in %s.json; left out", mid, bench)
            continue
        est = estimates(files, [f"win_rate@{n}" for n in ns], **kw)
        nan = (float("nan"), float("nan"))
        curves.append(
            Curve(
                mid,
                info.name,
                ns,
                np.array([est[f"win_rate@{n}"].mean for n in ns]),
                np.array([(est[f"win_rate@{n}"].ci or nan)[0] for n in ns]),
                np.array([(est[f"win_rate@{n}"].ci or nan)[1] for n in ns]),
                len(files),
                est[f"win_rate@{ns[0]}"].num_prompts,
            )
        )
    return curves


def plane_points(
    runs: Sequence[RunRecord], x: str, y: str, **kw: Any
) -> list[tuple[str, str, Estimate, Estimate]]:
    """(method id, name, x estimate, y estimate) for each method having both ``<bench>/<metric>`` keys.

    ``win_rate@max`` resolves to the largest n every run of the method has.
    """
    out = []
    xb, xm = x.split("/", 1)
    yb, ym = y.split("/", 1)
    xs, ys = by_method(runs, xb), by_method(runs, yb)
    for mid in (m for m in xs if m in ys):
        info, xf = xs[mid]
        yf = ys[mid][1]
        xk, yk = xm, ym
        for key, files in ((xm, xf), (ym, yf)):
            if key == "win_rate@max":
                ns = sorted(set.intersection(*(set(win_rate_ns(f)) for f in files)))
                if not ns:
                    break
                if files is xf:
                    xk = f"win_rate@{ns[-1]}"
                else:
                    yk = f"win_rate@{ns[-1]}"
        if not all(isinstance((f.get("metrics") or {}).get(xk), (int, float)) for f in xf) or not all(
            isinstance((f.get("metrics") or {}).get(yk), (int, float)) for f in yf
        ):
            continue
        if xb == yb:
            e = estimates(xf, [xk, yk] if xk != yk else [xk], **kw)
            ex, ey = e[xk], e[yk]
        else:
            ex, ey = estimates(xf, [xk], **kw)[xk], estimates(yf, [yk], **kw)[yk]
        out.append((mid, info.name, ex, ey))
    return out


def bon_differences(
    runs: Sequence[RunRecord], ref: str = "ce", bench: str = "alpaca_eval", **kw: Any
) -> list[Curve]:
    """Each method's win rate minus ``ref``'s (percentage points) per n, with the paired 95% CI of
    :func:`ts2.eval.stats.seeded_paired_bootstrap` (prompts resampled jointly, seed runs too). Empty when
    ``ref`` has no curve or the files lack per-prompt values."""
    groups = by_method(runs, bench)
    if ref not in groups:
        return []
    out = []
    ref_files = groups[ref][1]
    for mid, (info, files) in groups.items():
        if mid == ref:
            continue
        ns = sorted(set.intersection(*(set(win_rate_ns(f)) for f in [*files, *ref_files])))
        diffs = []
        for n in ns:
            a = [_per_prompt(f, f"win_rate@{n}") for f in files]
            b = [_per_prompt(f, f"win_rate@{n}") for f in ref_files]
            if any(x is None for x in [*a, *b]):
                break
            diffs.append(seeded_paired_bootstrap(a, b, **kw))
        if not ns or len(diffs) < len(ns):
            continue
        out.append(
            Curve(
                mid,
                info.name,
                ns,
                np.array([d.diff for d in diffs]),
                np.array([d.ci[0] for d in diffs]),
                np.array([d.ci[1] for d in diffs]),
                len(files),
                diffs[0].num_prompts,
            )
        )
    return out


# ----------------------------------------------------------------------------------------------------
# Temperature frontiers (issue #19 item 3)


@dataclass(frozen=True)
class FrontierCurve:
    """One row's temperature frontier of (``quality``, ``diversity``), on the prompts every curve shares."""

    key: str  # the row key (:class:`ts2.records.RunGroup`)
    method: str
    label: str
    frontier: Frontier


def frontiers(
    groups: Sequence[RunGroup], quality: str, diversity: str, min_temperatures: int = 3
) -> list[FrontierCurve]:
    """The frontier of every row whose runs with a frontier share per-prompt ``quality`` and ``diversity``
    (``<bench>/<metric>``) at >= ``min_temperatures`` common temperatures; rows with fewer are left out (logged).
    A row's seed runs without a frontier (a pipeline that samples the frontier of the first seed only, to fit its
    budget: ``pipeline.frontier.seeds``) are left out of its curve, and said so in the log; ``Frontier`` keeps the
    runs it holds, so the matched-quality lines name how many seed runs each curve has. Every curve holds the
    prompts all of them share, so curves can be compared prompt by prompt."""
    kept: list[tuple[RunGroup, list[Any], list[float]]] = []
    for g in groups:
        temps = {
            r.path: {t for t, m in r.frontier.items() if per_prompt(m, quality) and per_prompt(m, diversity)}
            for r in g.runs
        }
        runs = [r for r in g.runs if temps[r.path]]
        common = sorted(set.intersection(*(temps[r.path] for r in runs))) if runs else []
        if len(common) >= min_temperatures:
            kept.append((g, runs, common))
            if len(runs) < len(g.runs):
                log.info("frontier: %s: %d of %d seed runs have a frontier", g.label, len(runs), len(g.runs))
        elif any(temps.values()):
            log.info(
                "frontier: %s has %d temperature(s) with %s and %s; left out",
                g.label,
                len(common),
                quality,
                diversity,
            )
    if not kept:
        return []
    series = [
        per_prompt(r.frontier[t], k)
        for _, runs, ts in kept
        for r in runs
        for t in ts
        for k in (quality, diversity)
    ]
    ids = shared_ids([x[0] for x in series if x is not None])
    if not ids:
        raise ValueError(f"frontier: the rows share no prompt scored on {quality} and {diversity}.")
    out = []
    for g, runs, ts in kept:
        q = np.stack([stack([per_prompt(r.frontier[t], quality) for t in ts], ids) for r in runs])
        d = np.stack([stack([per_prompt(r.frontier[t], diversity) for t in ts], ids) for r in runs])
        out.append(FrontierCurve(g.key, g.method.id, g.label, Frontier(tuple(ts), q, d)))
    return out
