"""Every figure, in one place: each a function of run records (:class:`ts2.records.RunRecord`) and options,
listed in :data:`FIGURES` and drawn by ``python -m ts2.report`` after its tables (``figures:`` in
``conf/report.yaml``: null draws every figure the runs have data for; a list draws those, or fails).

- :func:`bon_curves`: best-of-n win rate against n per method with 95% bootstrap bands, and each method minus
  CE with paired CIs (data: :mod:`ts2.analysis.bon`);
- :func:`quality_diversity`: the diversity–quality plane, one point per method with CIs both ways;
- :func:`frontier`: diversity against quality along each method's temperatures, one curve per table row, with
  the common quality level at which ``ts2.report`` compares them (:func:`ts2.analysis.bon.frontiers`);
- :func:`tspd`: the TSPD quantities per method, as box plots built from the stored quantiles of
  ``<run>/metrics/tspd.json`` (box 25–75%, line median, whiskers 5–95%, marker mean), and their table;
- :func:`token_distribution`: top-k next-token distributions, our runs beside the official 8B ones (data:
  ``<out>/token_distribution/<name>/*.json`` from ``python -m ts2.analysis.token_distribution``);
- :func:`alpha_sweep`: win rate and diversity against TS²'s α (:mod:`ts2.analysis.alpha_sweep`).

Each report's figures, and the tables drawn with them, go to ``<out>/figures/<name>/`` (:func:`figure_dir`).
A figure whose data the runs do not hold raises :class:`NoData` (skipped, with a log line, unless it was asked
for by name); any other error propagates. Every figure states its scale in its title or panel titles.
Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np

from ts2.analysis import bon
from ts2.analysis.plotting import COLORS, EXTRA_COLORS, NoData, plt
from ts2.analysis.plotting import save as _save
from ts2.analysis.token_distribution import token_distribution_dir, token_distribution_figure
from ts2.records import RunRecord

log = logging.getLogger("ts2.analysis.figures")


@dataclass(frozen=True)
class FigureOptions:
    """What a figure may take besides the runs."""

    title: str | None = None  # a line naming the runs (ts2.report: "Table 1 (<name>) — ...")
    allow_missing: bool = False  # the α sweep: draw runs lacking results, flagged, instead of refusing
    frontier_quality: str = "ref_lm/ref_lm"  # the frontier's quality axis (<bench>/<metric>)
    frontier_diversity: tuple[str, ...] = ("alpaca_eval/ngram",)  # one panel per diversity metric
    name: str | None = None  # the report: figures in <out>/figures/<name>/ (None: <out>/figures/)


def figure_dir(out_dir: Path, options: FigureOptions) -> Path:
    """Where a report's figures and their tables go: ``<out_dir>/figures/<name>/``, one folder per report, so the
    tiny and the small table (and the α sweep) never overwrite each other's figures; ``<out_dir>/figures/`` when
    the options name no report."""
    return Path(out_dir) / "figures" / (options.name or "")


# ----------------------------------------------------------------------------------------------------
# TSPD


def _tspd_boxes(rows: Sequence[dict[str, Any]], out: Path, note: str | None = None) -> Path:
    """A panel per TSPD quantity (head@m, tail@m, support, entropy), one box per row (a TSPD metrics dict with
    a ``_label``) built from its stored quantiles (5/25/50/75/95) and mean."""
    from ts2.eval.tspd import DEFAULT_MS, quantity_names

    ms = list(rows[0]["details"].get("ms", DEFAULT_MS))
    names = quantity_names(ms)
    ncol = 4
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.9 * nrow), squeeze=False)
    labels = [d["_label"] for d in rows]
    for ax, name in zip(axes.flat, names, strict=False):
        stats = []
        for d in rows:
            m = d["metrics"]
            for key in ("q05", "q25", "q50", "q75", "q95"):
                if f"{name}/{key}" not in m:
                    raise ValueError(
                        f"tspd figure: {d['_label']} lacks {name}/{key} (rerun with the default quantiles)"
                    )
            stats.append(
                {
                    "whislo": m[f"{name}/q05"],
                    "q1": m[f"{name}/q25"],
                    "med": m[f"{name}/q50"],
                    "q3": m[f"{name}/q75"],
                    "whishi": m[f"{name}/q95"],
                    "mean": m[f"{name}/mean"],
                    "fliers": [],
                    "label": d["_label"],
                }
            )
        bp = ax.bxp(stats, showmeans=True, patch_artist=True, meanprops={"marker": "D", "markersize": 4})
        for patch, lab in zip(bp["boxes"], labels, strict=True):
            patch.set_facecolor(COLORS.get(str(lab).split(" ")[0], "#cccccc"))
            patch.set_alpha(0.6)
        ax.set_title(name, fontsize=10)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
        if name.startswith("head"):  # probabilities of the head span orders of magnitude
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels of minor ticks overlap
            ax.set_title(f"{name} (log scale)", fontsize=10)
        elif name.startswith("tail"):
            lo, hi = ax.get_ylim()
            ax.set_ylim(max(lo, -0.02), min(hi, 1.02))
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    scales = sorted({str(d.get("scale")) for d in rows})
    fig.suptitle(
        f"TSPD on held-out SFT tokens (scale: {', '.join(scales)}); box 25–75%, whiskers 5–95%, ◆ mean"
        + (f"\n{note}" if note else ""),
        fontsize=11,
    )
    fig.tight_layout()
    return _save(fig, out)


# ----------------------------------------------------------------------------------------------------
# Best-of-n curves and the diversity–quality plane (issue #13 item 3; data: ts2.analysis.bon)


def _color(method: str, i: int) -> str:
    """A method's colour (a row key ``ts2[loss.alpha=1]`` takes its method's)."""
    return COLORS.get(method.split("[")[0]) or EXTRA_COLORS[i % len(EXTRA_COLORS)]


def scale_label(runs: Sequence[RunRecord]) -> str:
    """The runs' scale as titles say it (:func:`ts2.conf.scale_label`: ``TINY SCALE (not comparable to the paper)``,
    ``SMALL SCALE (...)``, ``paper scale``), from their metrics files' labels and their models (conf/model/)."""
    from ts2.conf import scale_key, scale_of
    from ts2.conf import scale_label as label_of

    scales = {str(s) for r in runs for s in r.scales}
    scales |= {scale_of(str(r.model)) for r in runs if r.model}  # the run's model (conf/model/)
    return label_of(scale_key(scales))


def _titled(what: str, title: str | None, runs: Sequence[RunRecord]) -> str:
    """``what``, the title, and the scale's label unless the title already says it."""
    scale = scale_label(runs)
    lines = [what, *([title] if title else [])]
    if not any(scale in x for x in lines):
        lines.append(scale)
    return "\n".join(lines)


def _sizes(curves: Sequence[Any]) -> str:
    seeds = sorted({c.num_runs for c in curves})
    prompts = sorted({c.num_prompts for c in curves if c.num_prompts is not None})
    return (
        f"{'/'.join(map(str, prompts)) or '?'} prompts, {'/'.join(map(str, seeds))} run(s) per method; "
        "bands: 95% percentile bootstrap over prompts (and seed runs)"
    )


def bon_curves(runs: Sequence[RunRecord], out_dir: Path, options: FigureOptions) -> list[Path]:
    """``figures/<name>/bon_curves.png``: best-of-n win rate (%) against n (log2 axis) per method with 95% bands
    (:func:`ts2.analysis.bon.bon_curves`); beside it, each method minus CE with the paired 95% CI when CE and
    per-prompt values are there."""
    curves = bon.bon_curves(runs)
    if not curves:
        raise NoData("no run has win_rate@<n> in metrics/alpaca_eval.json")
    diffs = bon.bon_differences(runs)
    ncol = 2 if diffs else 1
    fig, axes = plt.subplots(1, ncol, figsize=(6.2 * ncol, 4.4), squeeze=False)
    panels = [(axes[0, 0], curves, "win rate vs the AlpacaEval-2 reference (%)")]
    if diffs:
        panels.append((axes[0, 1], diffs, "win rate − CE's (percentage points)"))
    order = {c.method: i for i, c in enumerate(curves)}
    for ax, cs, ylabel in panels:
        for c in cs:
            col = _color(c.method, order[c.method])
            ax.plot(
                c.ns,
                c.mean,
                marker="o",
                ms=3.5,
                color=col,
                lw=2.0 if c.method == "ts2" else 1.2,
                label=c.label,
            )
            if np.isfinite(c.lo).all():
                ax.fill_between(c.ns, c.lo, c.hi, color=col, alpha=0.13, lw=0)
        ax.set_xscale("log", base=2)
        ns = sorted({n for c in cs for n in c.ns})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("n (best of the first n samples, reward-model judge)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if diffs:
        axes[0, 1].axhline(0, color="k", lw=0.8)
        axes[0, 1].set_title("paired difference to CE (95% CI)", fontsize=9)
    axes[0, 0].set_title(_sizes(curves), fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle(_titled("Best-of-n win rate (AlpacaEval, RM judge)", options.title, runs), fontsize=10)
    fig.tight_layout()
    return [_save(fig, figure_dir(out_dir, options) / "bon_curves.png")]


QUALITY_AXES = {
    "heldout_ce/heldout_ce": "held-out CE, nats/token (lower = better fit)",
    "alpaca_eval/win_rate@max": "best-of-N win rate (%) (higher = better)",
}
QUALITY_LABELS = {
    **QUALITY_AXES,
    "ref_lm/ref_lm": "reference-LM log-likelihood per token (higher = better)",
    "alpaca_eval/win_rate@1": "best-of-1 win rate (%) (higher = better)",
}


def quality_diversity(
    runs: Sequence[RunRecord],
    out_dir: Path,
    options: FigureOptions,
    *,
    bench: str = "alpaca_eval",
    diversity: Sequence[str] = ("ngram", "self_bleu", "sent_bert"),
) -> list[Path]:
    """``figures/<name>/quality_diversity.png``: the diversity–quality plane, one point per method with 95% CIs
    in both directions; a row per quality axis present (held-out CE, best-of-N win rate), a column per diversity
    metric of ``bench``."""
    rows = []
    for qx, qlabel in QUALITY_AXES.items():
        cols = []
        for d in diversity:
            pts = bon.plane_points(runs, qx, f"{bench}/{d}")
            if pts:
                cols.append((d, pts))
        if cols:
            rows.append((qx, qlabel, cols))
    if not rows:
        raise NoData(
            f"no method has both a quality metric ({', '.join(QUALITY_AXES)}) and "
            f"a diversity metric of {bench}"
        )
    ncol = max(len(c) for _, _, c in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(4.3 * ncol, 3.7 * len(rows)), squeeze=False)
    methods = [r.method.id for r in runs]
    order = {m: i for i, m in enumerate(dict.fromkeys(methods))}
    n_max = None
    for i, (qx, qlabel, cols) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(cols):
                ax.axis("off")
                continue
            d, pts = cols[j]
            for mid, name, ex, ey in pts:
                col = _color(mid, order.get(mid, 0))

                def err(e):
                    if e.ci is None:
                        return None
                    return [[max(e.mean - e.ci[0], 0.0)], [max(e.ci[1] - e.mean, 0.0)]]

                ax.errorbar(
                    ex.mean,
                    ey.mean,
                    xerr=err(ex),
                    yerr=err(ey),
                    fmt="o",
                    color=col,
                    ms=5,
                    capsize=2,
                    lw=1,
                    label=name,
                )
                ax.annotate(
                    name, (ex.mean, ey.mean), textcoords="offset points", xytext=(4, 4), fontsize=7, color=col
                )
            if qx.endswith("win_rate@max"):
                ns = [
                    max(bon.win_rate_ns(f))
                    for _, fs in bon.by_method(runs, "alpaca_eval").values()
                    for f in fs
                ]
                n_max = min(ns) if ns else None
            xl = qlabel.replace("best-of-N", f"best-of-{n_max}") if n_max else qlabel
            ax.set_xlabel(xl, fontsize=8)
            ax.set_ylabel(f"{bench}: {bon.DIVERSITY_LABELS.get(d, d)}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.margins(0.15)  # room for the method labels
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6, loc="best")
    fig.suptitle(
        _titled(
            "Diversity vs quality, one point per method; bars: 95% CI (percentile bootstrap over prompts, "
            "and seed runs)",
            options.title,
            runs,
        ),
        fontsize=10,
    )
    fig.tight_layout()
    return [_save(fig, figure_dir(out_dir, options) / "quality_diversity.png")]


def frontier(runs: Sequence[RunRecord], out_dir: Path, options: FigureOptions) -> list[Path]:
    """``figures/<name>/frontier.png``: diversity (y) against quality (x, ``options.frontier_quality``) along each row's
    sampling temperatures (labelled), one curve per row with >= 3 temperatures, a panel per
    ``options.frontier_diversity`` metric; the dashed line is the common quality level (the midpoint of the
    overlap of the curves' quality ranges) at which ``ts2.report`` compares diversity."""
    from ts2.eval.stats import matched_level
    from ts2.records import group_runs

    groups = group_runs(list(runs))
    panels = [(d, bon.frontiers(groups, options.frontier_quality, d)) for d in options.frontier_diversity]
    panels = [(d, cs) for d, cs in panels if cs]
    if not panels:
        raise NoData(
            f"no row has {options.frontier_quality} and a diversity metric at >= 3 temperatures "
            "(<run>/frontier/t<T>/metrics/)"
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.3), squeeze=False)
    for ax, (d, curves) in zip(axes[0], panels, strict=True):
        level = matched_level([c.frontier.quality_range for c in curves])
        for i, c in enumerate(curves):
            q, y = c.frontier.curve()
            col = _color(c.method, i)
            ax.plot(q, y, marker="o", ms=4, color=col, lw=2.0 if c.method == "ts2" else 1.2, label=c.label)
            for t, x0, y0 in zip(c.frontier.temperatures, q, y, strict=True):
                ax.annotate(
                    f"T={t:g}", (x0, y0), textcoords="offset points", xytext=(3, 3), fontsize=6, color=col
                )
        if level is not None:
            ax.axvline(level, color="k", ls="--", lw=0.8, label=f"matched quality {level:.3g}")
        bench, metric = d.split("/", 1)
        ax.set_xlabel(QUALITY_LABELS.get(options.frontier_quality, options.frontier_quality), fontsize=8)
        ax.set_ylabel(f"{bench}: {bon.DIVERSITY_LABELS.get(metric, metric)}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        p = curves[0].frontier.quality.shape[2]
        ax.set_title(f"{p} prompts; points: means over prompts (and seed runs)", fontsize=8)
    fig.suptitle(_titled("Temperature frontiers: diversity vs quality", options.title, runs), fontsize=10)
    fig.tight_layout()
    return [_save(fig, figure_dir(out_dir, options) / "frontier.png")]


# ----------------------------------------------------------------------------------------------------
# TSPD, token distributions, the α sweep


def tspd(runs: Sequence[RunRecord], out_dir: Path, options: FigureOptions) -> list[Path]:
    """``figures/<name>/tspd.png`` (:func:`_tspd_boxes`) and ``figures/<name>/tspd_table.md``, rows from
    ``figures/<name>/tspd/<label>.json`` (copies of the runs' ``metrics/tspd.json``, seed runs labelled ``ts2 #1``,
    ``ts2 #2``)."""
    from ts2.eval.tspd import tspd_table

    have = [r for r in runs if "tspd" in r.metrics]
    if not have:
        raise NoData("no run has metrics/tspd.json (python -m ts2.evaluate run_dir=... eval=tspd)")
    count = {m: sum(x.method.id == m for x in have) for m in (r.method.id for r in have)}
    folder = figure_dir(out_dir, options)
    (folder / "tspd").mkdir(parents=True, exist_ok=True)
    rows, files, seen, legend = [], [], {}, []
    for r in have:
        mid = r.method.id
        seen[mid] = seen.get(mid, 0) + 1
        label = mid + (f" #{seen[mid]}" if count[mid] > 1 else "")  # seed runs: "ts2 #1", "ts2 #2"
        if count[mid] > 1:
            legend.append(f"{label} = run {r.name}")
        d = dict(r.metrics["tspd"])
        details = dict(d.get("details") or {})  # the copy names its row: the table labels rows by method
        d["details"] = {**details, "model": {**(details.get("model") or {}), "method": label}}
        f = folder / "tspd" / (label.replace("/", "_").replace(" #", "_") + ".json")
        f.write_text(json.dumps(d, indent=2, default=str))
        files.append(f)
        rows.append({**d, "_label": label})
    note = _titled("", options.title, runs).strip()
    table = folder / "tspd_table.md"
    table.write_text(f"{note}\n\n" + tspd_table(files) + ("\n" + "; ".join(legend) + ".\n" if legend else ""))
    return [_tspd_boxes(rows, folder / "tspd.png", note=note), table]


def token_distribution(runs: Sequence[RunRecord], out_dir: Path, options: FigureOptions) -> list[Path]:
    """``figures/<name>/token_distribution.png`` from ``<out_dir>/token_distribution/<name>/*.json``
    (:func:`token_distribution_dir`, written by ``python -m ts2.analysis.token_distribution <run folders> --out
    <out_dir> --name <name>``), panels of these runs only."""
    from ts2.analysis.token_distribution import PROMPT, our_panel

    src = token_distribution_dir(out_dir, options.name)
    name_arg = f" --name {options.name}" if options.name else ""
    official = src / "official_8b.json"
    if not official.is_file():
        raise NoData(
            f"no {official} (python -m ts2.analysis.token_distribution <run folders> --out {out_dir}{name_arg})"
        )
    names = {r.name: r for r in runs}
    ours = []
    for f in sorted(src.glob("*.json")):
        if f == official:
            continue
        d = json.loads(f.read_text())
        run_dir = (d.get("model") or {}).get("run_dir")
        if run_dir and Path(run_dir).name in names and "tokens" in d and "probs" in d:
            ours.append((names[Path(run_dir).name], d))
    if not ours:
        raise NoData(
            f"{src} holds no distribution of these runs ({', '.join(list(names)[:3])}, ...): run "
            f"python -m ts2.analysis.token_distribution <run folders> --out {out_dir}{name_arg}"
        )
    ours.sort(key=lambda x: (x[0].method.order, x[0].name))
    dup = {r.method.id for r, _ in ours if sum(x.method.id == r.method.id for x, _ in ours) > 1}
    panels = [
        our_panel(d, r.method.name + (f" ({r.name})" if r.method.id in dup else ""), r.method.id)
        for r, d in ours
    ]
    what = (
        f"Next-token distribution at the first generated digit; prompt {PROMPT!r}\nT=0.6, top-p 0.9 (mean over "
        "samples). Top row: ours (scale in each title); bottom row: the official 8B data."
    )
    fig = token_distribution_figure(
        [panels, json.loads(official.read_text())],
        figure_dir(out_dir, options) / "token_distribution.png",
        title=_titled(what, options.title, runs),
    )
    return [fig]


def alpha_sweep(runs: Sequence[RunRecord], out_dir: Path, options: FigureOptions) -> list[Path]:
    """``figures/<name>/alpha_sweep.png`` and ``figures/<name>/alpha_sweep.csv`` (:mod:`ts2.analysis.alpha_sweep`):
    the runs must all be TS² runs (a loss with ``alpha``) of at least two α values; runs lacking results are
    refused unless ``options.allow_missing``."""
    import ts2.analysis.alpha_sweep as sweep

    no_alpha = [r.name for r in runs if r.config is None or "alpha" not in (r.config.get("loss") or {})]
    if no_alpha:
        raise NoData(f"the α sweep needs runs whose loss has an alpha (method=ts2); {no_alpha[:3]} have none")
    if len({float(r.config.loss.alpha) for r in runs}) < 2:
        raise NoData("the α sweep needs runs of at least two α values")
    settings = [(float(r.config.loss.alpha), r.config.loss.get("clamp")) for r in runs]
    if len(set(settings)) < len(settings):  # a Table-1 folder of TS² rows with seed runs, not a sweep
        raise NoData(
            "the α sweep needs one run per (α, clamp); these runs repeat one (seed runs of a table row)"
        )
    points = sweep.collect(runs, allow_missing=options.allow_missing)
    return [
        sweep.sweep_figure(points, figure_dir(out_dir, options) / "alpha_sweep.png"),
        sweep.write_table(points, figure_dir(out_dir, options) / "alpha_sweep.csv"),
    ]


Figure = Callable[[Sequence[RunRecord], Path, FigureOptions], list[Path]]
FIGURES: dict[str, Figure] = {
    f.__name__: f for f in (bon_curves, quality_diversity, frontier, tspd, token_distribution, alpha_sweep)
}
"""Every figure: name -> function of (runs, results folder, options) returning the files it wrote."""


def figure_names(names: Sequence[str] | None) -> list[str]:
    """The figures to draw: every one of :data:`FIGURES` (``names`` None), else ``names``, checked."""
    unknown = sorted(set(names or ()) - set(FIGURES))
    if unknown:
        raise ValueError(f"figures={list(names or ())}: no figure {unknown}; known: {list(FIGURES)}.")
    return list(FIGURES if names is None else names)


def write_figures(
    runs: Sequence[RunRecord],
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    options: FigureOptions | None = None,
) -> list[Path]:
    """Draw the figures ``names`` (None: every figure of :data:`FIGURES` whose data the runs hold) into
    :func:`figure_dir` (``<out_dir>/figures/<options.name>/``, their tables beside them). A figure without data (:class:`NoData`) is
    skipped with a log line when ``names`` is None, an error when it was named; any other error propagates.
    Returns the paths written. Called by ``ts2.report`` after its tables."""
    options = options or FigureOptions()
    written: list[Path] = []
    for name in figure_names(names):
        try:
            paths = FIGURES[name](runs, Path(out_dir), options)
        except NoData as err:  # its data is not there
            if names is not None:
                raise NoData(f"figure {name}: {err}") from err
            log.info("figure %s skipped: %s", name, err)
            continue
        log.info("figure %s: %s", name, ", ".join(str(p) for p in paths))
        written += paths
    return written
