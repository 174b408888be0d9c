"""The α sweep of TS² (issue #13 item 4): win rate and sample diversity against the penalty weight α.

TS² trains with Sparsemax+, ``L = L_spm(z; y) + α · (−log(1 − Σ_{i∉S, i≠y} softmax(z)_i))`` (PAPER.md §1),
the tail mass clamped at 0.99 before the log in the official code (``loss.clamp=0.99``) or not
(``loss.clamp=null``, the exact penalty). α = 0 is the sparsemax loss alone; the official Llama run uses
α = 0.25; the paper's own sweep values are not public. ``make sweep-alpha`` (``experiments/alpha_sweep/run.sh``)
trains one TS² run per (α, clamp) with a Hydra multirun, samples and scores each on AlpacaEval with the tiny
Table 1's sampling sizes and judge (the ``pipeline:`` block of ``conf/experiment/table1_tiny.yaml``; best-of-n
reward-model win rate and the three diversity metrics, each with its 95% bootstrap CI over prompts), then
draws the figure with ``python -m ts2.report runs_dir=runs/alpha_sweep_tiny name=alpha_sweep_tiny
figures=[alpha_sweep]`` (:func:`ts2.analysis.figures.alpha_sweep`).

- :func:`collect`: one :class:`SweepPoint` per run record (:class:`ts2.records.RunRecord`: α and clamp from its
  saved config, the metrics and CIs of ``metrics/<bench>.json``, the last logged softmax entropy and sparsemax
  support size). Missing data is an error naming the folder and what is missing, unless
  ``allow_missing=True``, which keeps the point and flags it in the figure.
- :func:`sweep_figure`: one panel per metric against α (symlog axis, so α = 0 is shown), clamp on and
  off as two lines, 95% CIs as error bars, the paper's α = 0.25 marked, "TINY SCALE" in the title when the
  runs are tiny; :func:`write_table`: the same numbers as CSV.

The sweep's cost estimate, printed by run.sh before it starts, is ``python -m ts2.plan alpha_sweep``
(:func:`ts2.plan.alpha_sweep_plan`, the tiny cost model :data:`ts2.plan.TINY_COSTS`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ts2.records import RunRecord

PAPER_ALPHA = 0.25
"""α of the official Llama-3.1-8B run script (PAPER.md §1)."""

DEFAULT_ALPHAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
"""The documented default grid of ``make sweep-alpha`` (experiments/alpha_sweep/run.sh: ALPHAS)."""

DEFAULT_CLAMPS = (0.99, None)
"""Clamp on (the official 0.99 cap on the tail mass) and off (``loss.clamp=null``, the exact penalty)."""

DIVERSITY = ("ngram", "self_bleu", "sent_bert")
LABELS = {
    "ngram": "N-gram diversity",
    "self_bleu": "100 − Self-BLEU",
    "sent_bert": "Sent-BERT diversity",
    "entropy": "train: softmax entropy, nats (last log, no CI)",
    "support_size": "train: sparsemax |S| (last log, no CI)",
}


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep: its α and clamp, and what its metrics file and training log hold."""

    run_dir: Path
    alpha: float
    clamp: float | None
    scale: str
    complete: bool
    metrics: dict[str, float] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)  # last logged entropy / support_size
    missing: tuple[str, ...] = ()


def read_point(run: RunRecord, bench: str = "alpaca_eval") -> SweepPoint:
    """A :class:`SweepPoint` from one run record; ``missing`` lists what it lacks (nothing is guessed)."""
    if run.config is None:
        raise FileNotFoundError(
            f"{run.path}: no config.yaml, so not a training run folder (python -m ts2.train)."
        )
    loss = OmegaConf.to_container(run.config, resolve=False).get("loss") or {}
    if "alpha" not in loss:
        raise ValueError(
            f"{run.path}: its loss ({loss.get('id')!r}) has no alpha; the α sweep needs method=ts2 runs."
        )
    alpha, clamp = float(loss["alpha"]), loss.get("clamp")
    clamp = None if clamp is None else float(clamp)
    missing: list[str] = []
    if run.status != "finished":
        missing.append(f"training not finished (run.json status={run.status})")
    data = run.metrics.get(bench)
    metrics: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    complete, scale = False, str(run.scale or "unknown")
    if data is not None:
        metrics = {k: float(v) for k, v in (data.get("metrics") or {}).items() if isinstance(v, (int, float))}
        ci = {k: (float(v[0]), float(v[1])) for k, v in (data.get("ci") or {}).items() if v and len(v) == 2}
        complete = bool(data.get("complete"))
        scale = str(data.get("scale") or scale)
        if not complete:
            missing.append(f"{bench}.json is incomplete ({data.get('note') or 'see the file'})")
        no_ci = sorted(k for k in metrics if k not in ci)
        if no_ci:
            missing.append(f"no CI for {no_ci} in {bench}.json")
    else:
        missing.append(f"no metrics/{bench}.json (run python -m ts2.evaluate on it)")
    return SweepPoint(
        run.path, alpha, clamp, scale, complete, metrics, ci, dict(run.last_logged), tuple(missing)
    )


def collect(
    runs: Sequence[RunRecord], bench: str = "alpaca_eval", *, allow_missing: bool = False
) -> list[SweepPoint]:
    """The sweep's points from its run records (:func:`ts2.records.collect`), sorted by clamp, then α.

    Refuses (ValueError naming the folders) two runs with the same (α, clamp), and any run with missing
    or incomplete results unless ``allow_missing``; then the point is kept and flagged.
    """
    if not runs:
        raise ValueError("collect: no run folders")
    points = [read_point(r, bench) for r in runs]
    seen: dict[tuple[float, float | None], Path] = {}
    for p in points:
        key = (p.alpha, p.clamp)
        if key in seen:
            raise ValueError(f"two runs with alpha={p.alpha}, clamp={p.clamp}: {seen[key]} and {p.run_dir}")
        seen[key] = p.run_dir
    bad = [p for p in points if p.missing]
    if bad and not allow_missing:
        lines = "\n".join(f"  {p.run_dir}: {'; '.join(p.missing)}" for p in bad)
        raise ValueError(
            f"{len(bad)} run(s) of the sweep lack results:\n{lines}\n"
            "Finish them (experiments/alpha_sweep/run.sh resumes), or pass allow_missing=true "
            "to draw the rest with these flagged."
        )
    return sorted(points, key=lambda p: (p.clamp is None, p.clamp or 0.0, p.alpha))


def _win_rate_keys(points: Sequence[SweepPoint]) -> list[str]:
    ns = sorted({int(k.split("@")[1]) for p in points for k in p.metrics if k.startswith("win_rate@")})
    return [f"win_rate@{n}" for n in ([ns[0], ns[-1]] if len(ns) > 1 else ns)]


def _clamp_label(clamp: float | None) -> str:
    return "no clamp (exact penalty)" if clamp is None else f"clamp {clamp:g} (official)"


def figure_title(points: Sequence[SweepPoint]) -> str:
    """The sweep figure's title: "TINY SCALE" when any run is tiny, and the runs flagged for missing or
    incomplete results (drawn with red rings)."""
    scales = sorted({p.scale for p in points})
    title = "TS² α sweep"
    if any(s.startswith("tiny") for s in scales):
        title = f"TINY SCALE — {title} (tiny models: pipeline-scale numbers, not the paper's)"
    elif scales != ["paper"]:
        title += f" (scale: {', '.join(scales)})"
    title += "; error bars: 95% bootstrap CI over prompts"
    flagged = [p for p in points if p.missing]
    if flagged:
        which = ", ".join(
            f"α={p.alpha:g}/clamp {'off' if p.clamp is None else f'{p.clamp:g}'}" for p in flagged
        )
        title += f"\nFLAGGED (red ring: incomplete; red cross: missing) results for {which}"
    return title


def sweep_figure(
    points: Sequence[SweepPoint], out: str | Path, *, metrics: Sequence[str] | None = None
) -> Path:
    """Draw the sweep: one panel per metric (best-of-1 and best-of-N win rate, the diversity metrics, the
    last logged training entropy and support size when every run has them) against α, one line per clamp
    setting with 95% CI error bars, α = 0.25 marked. Writes a PNG to ``out`` and returns its path.

    Flags, in the title, tiny scale and runs with missing or incomplete results; a metric no run has is
    an error (ValueError naming it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("sweep_figure: no points")
    if metrics is None:
        metrics = [*_win_rate_keys(points), *[m for m in DIVERSITY if any(m in p.metrics for p in points)]]
        metrics += [k for k in ("entropy", "support_size") if all(k in p.train for p in points)]
    if not metrics:
        raise ValueError("sweep_figure: the runs hold no win rate or diversity metric to plot")
    for m in metrics:
        if not any(m in p.metrics or m in p.train for p in points):
            raise ValueError(f"sweep_figure: no run has metric {m!r}")
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    clamps = sorted({p.clamp for p in points}, key=lambda c: (c is None, c or 0.0))
    styles = [("#d62728", "o", "-"), ("#1f77b4", "s", "--"), ("#2ca02c", "^", ":")]
    alphas = sorted({p.alpha for p in points})
    for ax, m in zip(axes.flat, metrics, strict=False):
        for (color, marker, ls), clamp in zip(styles, clamps, strict=False):
            pts = [p for p in points if p.clamp == clamp and (m in p.metrics or m in p.train)]
            if not pts:
                continue
            x = [p.alpha for p in pts]
            y = [p.metrics.get(m, p.train.get(m)) for p in pts]
            lo = [yy - p.ci[m][0] if m in p.ci else 0.0 for p, yy in zip(pts, y, strict=True)]
            hi = [p.ci[m][1] - yy if m in p.ci else 0.0 for p, yy in zip(pts, y, strict=True)]
            ax.errorbar(
                x, y, yerr=[lo, hi], color=color, marker=marker, ls=ls, capsize=3, label=_clamp_label(clamp)
            )
            for p, yy in zip(pts, y, strict=True):
                if p.missing:  # flagged: hollow red ring
                    ax.scatter([p.alpha], [yy], s=160, facecolors="none", edgecolors="red", linewidths=1.5)
        ax.axvline(PAPER_ALPHA, color="grey", ls=":", lw=1.2)
        ax.text(PAPER_ALPHA, 0.98, " paper α=0.25", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.set_xscale("symlog", linthresh=0.1, linscale=0.5)
        ax.set_xticks(alphas)
        ax.set_xticklabels([f"{a:g}" for a in alphas], fontsize=8)
        ax.set_xlabel("α (Sparsemax+ penalty weight)")
        ax.set_title(
            LABELS.get(m, m.replace("win_rate@", "win rate, best-of-") + ("" if "@" not in m else " (%)"))
        )
        for p in points:  # a run without this metric: a red cross on the axis
            if m not in p.metrics and m not in p.train:
                ax.plot([p.alpha], [0.03], "x", color="red", ms=9, mew=2, transform=ax.get_xaxis_transform())
        ax.set_xlim(-0.03, max(alphas) * 1.25 if max(alphas) > 0 else 1.0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="best")
    fig.suptitle(figure_title(points), fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def write_table(points: Sequence[SweepPoint], path: str | Path) -> Path:
    """The sweep as CSV: one row per run, each metric with its CI bounds."""
    keys = sorted({k for p in points for k in p.metrics})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        header = ["alpha", "clamp", "scale", "complete", "run_dir"]
        header += [c for k in keys for c in (k, f"{k}_lo", f"{k}_hi")] + [
            "train_entropy",
            "train_support_size",
        ]
        w.writerow(header)
        for p in points:
            row: list[Any] = [
                p.alpha,
                "null" if p.clamp is None else p.clamp,
                p.scale,
                p.complete,
                str(p.run_dir),
            ]
            for k in keys:
                lo, hi = p.ci.get(k, (None, None))
                row += [p.metrics.get(k), lo, hi]
            w.writerow([*row, p.train.get("entropy"), p.train.get("support_size")])
    return path
