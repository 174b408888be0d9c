"""Figures of issue #13, drawn from saved results only (for ``ts2.report`` and the notebooks).

- :func:`tspd_figure`: the TSPD quantities per method, as box plots built from the stored quantiles of
  ``<run>/metrics/tspd.json`` (box 25–75%, line median, whiskers 5–95%, marker mean).
- :func:`token_distribution_figure`: top-k next-token distributions, our models beside the official 8B ones
  (:mod:`ts2.analysis.token_distribution`).
- :func:`known_distribution_figure`: the known-distribution testbed's exact metrics along training, mean and
  95% CI over seeds (:mod:`ts2.analysis.known_distribution`).
- :func:`bon_figure`: best-of-n win rate against n per method with 95% bootstrap bands, and each method
  minus CE with paired CIs (:mod:`ts2.analysis.bon`).
- :func:`quality_diversity_figure`: the diversity–quality plane, one point per method with CIs both ways.
- :func:`write_figures`: every figure the run folders have data for, into ``results/figures/`` (called by
  ``ts2.report``; ``python -m ts2.analysis.figures all RUNS_DIR --out results`` draws them alone).

Every figure states its scale in its title or panel titles. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np

# Each testbed's figure lives with its data (known_distribution, token_distribution); re-exported here.
from ts2.analysis.known_distribution import known_distribution_figure  # noqa: F401
from ts2.analysis.plotting import COLORS, EXTRA_COLORS, NoData, plt
from ts2.analysis.plotting import save as _save
from ts2.analysis.token_distribution import token_distribution_figure

# ----------------------------------------------------------------------------------------------------
# TSPD


def tspd_figure(
    paths: Iterable[str | Path], out: str | Path, *, ms: Sequence[int] | None = None, note: str | None = None
) -> Path:
    """One figure of the TSPD meter over runs: a panel per quantity (head@m, tail@m, support, entropy), one
    box per run built from the stored quantiles (5/25/50/75/95) and mean of ``tspd.json``."""
    from ts2.eval.tspd import load_tspd

    return tspd_rows_figure(load_tspd(paths), out, ms=ms, note=note)


def tspd_rows_figure(
    rows: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    ms: Sequence[int] | None = None,
    note: str | None = None,
) -> Path:
    """:func:`tspd_figure` from TSPD metrics dicts already read (each with a ``_label``)."""
    from ts2.eval.tspd import DEFAULT_MS, quantity_names

    if not rows:
        raise ValueError("tspd_figure: no runs given")
    ms = list(ms or rows[0]["details"].get("ms", DEFAULT_MS))
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
                        f"tspd_figure: {d['_label']} lacks {name}/{key} (rerun with the default quantiles)"
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
# Token distributions


# ----------------------------------------------------------------------------------------------------
# Known-distribution testbed


def tspd_report(
    paths: Iterable[str | Path], out: str | Path = "results", *, note: str | None = None
) -> dict[str, Path]:
    """The TSPD table and figure over runs, for ``ts2.report`` and ``notebooks/tspd.ipynb``:
    ``<out>/tspd/<method>.json`` (copies of each run's ``metrics/tspd.json``), ``<out>/tspd_table.md`` and
    ``<out>/figures/tspd.png``."""
    import json

    from ts2.eval.tspd import load_tspd, tspd_table

    paths = list(paths)
    rows = load_tspd(paths)
    out = Path(out)
    (out / "tspd").mkdir(parents=True, exist_ok=True)
    written = {}
    for d in rows:
        label = str(d.pop("_label")).replace("/", "_")
        f = out / "tspd" / f"{label}.json"
        f.write_text(json.dumps(d, indent=2))
        written[label] = f
    table = out / "tspd_table.md"
    table.write_text((f"{note}\n\n" if note else "") + tspd_table(list(written.values())))
    fig = tspd_figure(list(written.values()), out / "figures" / "tspd.png", note=note)
    return {"table": table, "figure": fig, **{f"json:{k}": v for k, v in written.items()}}


# ----------------------------------------------------------------------------------------------------
# Best-of-n curves and the diversity–quality plane (issue #13 item 3; data: ts2.analysis.bon)


def _color(method: str, i: int) -> str:
    return COLORS.get(method) or EXTRA_COLORS[i % len(EXTRA_COLORS)]


def scale_label(runs: Sequence[dict[str, Any]]) -> str:
    """``TINY SCALE (not comparable to the paper)`` when any run's metrics are tiny scale, else the scales."""
    from ts2.conf import scale_of

    scales = {str(s) for r in runs for s in r.get("scales", ())}
    scales |= {scale_of(str(r["model"])) for r in runs if r.get("model")}  # the run's model (conf/model/)
    scales = sorted(scales - {"unspecified"}) or sorted(scales)
    if any("tiny" in s for s in scales):
        return "TINY SCALE (not comparable to the paper)"
    return "scale: " + (", ".join(scales) or "unspecified")


def _titled(what: str, title: str | None, runs: Sequence[dict[str, Any]]) -> str:
    scale = scale_label(runs)
    lines = [what, *([title] if title else [])]
    if "TINY" in scale and not any("TINY" in x.upper().replace("-", " ") for x in lines):
        lines.append(scale)
    elif "TINY" not in scale:
        lines.append(scale)
    return "\n".join(lines)


def _sizes(curves: Sequence[Any]) -> str:
    seeds = sorted({c.num_runs for c in curves})
    prompts = sorted({c.num_prompts for c in curves if c.num_prompts is not None})
    return (
        f"{'/'.join(map(str, prompts)) or '?'} prompts, {'/'.join(map(str, seeds))} run(s) per method; "
        "bands: 95% percentile bootstrap over prompts (and seed runs)"
    )


def bon_figure(runs: Sequence[dict[str, Any]], out: str | Path, title: str | None = None) -> Path:
    """Best-of-n win rate (%) against n (log2 axis) per method with 95% bands (:func:`ts2.analysis.bon.bon_curves`);
    beside it, each method minus CE with the paired 95% CI when CE and per-prompt values are there."""
    from ts2.analysis.bon import bon_curves, bon_differences

    curves = bon_curves(runs)
    if not curves:
        raise NoData("no run has win_rate@<n> in metrics/alpaca_eval.json")
    diffs = bon_differences(runs)
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
    fig.suptitle(_titled("Best-of-n win rate (AlpacaEval, RM judge)", title, runs), fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


QUALITY_AXES = {
    "heldout_ce/heldout_ce": "held-out CE, nats/token (lower = better fit)",
    "alpaca_eval/win_rate@max": "best-of-N win rate (%) (higher = better)",
}


def quality_diversity_figure(
    runs: Sequence[dict[str, Any]],
    out: str | Path,
    title: str | None = None,
    *,
    bench: str = "alpaca_eval",
    diversity: Sequence[str] = ("ngram", "self_bleu", "sent_bert"),
) -> Path:
    """The diversity–quality plane: one point per method with 95% CIs in both directions; a row per quality
    axis present (held-out CE, best-of-N win rate), a column per diversity metric of ``bench``."""
    from ts2.analysis.bon import DIVERSITY_LABELS, plane_points

    rows = []
    for qx, qlabel in QUALITY_AXES.items():
        cols = []
        for d in diversity:
            pts = plane_points(runs, qx, f"{bench}/{d}")
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
    methods = [r["method"].id for r in runs]
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
                from ts2.analysis.bon import by_method, win_rate_ns

                ns = [max(win_rate_ns(f)) for _, fs in by_method(runs, "alpaca_eval").values() for f in fs]
                n_max = min(ns) if ns else None
            xl = qlabel.replace("best-of-N", f"best-of-{n_max}") if n_max else qlabel
            ax.set_xlabel(xl, fontsize=8)
            ax.set_ylabel(f"{bench}: {DIVERSITY_LABELS.get(d, d)}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.margins(0.15)  # room for the method labels
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6, loc="best")
    fig.suptitle(
        _titled(
            "Diversity vs quality, one point per method; bars: 95% CI (percentile bootstrap over prompts, "
            "and seed runs)",
            title,
            runs,
        ),
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, out)


def _tspd_of_runs(
    runs: Sequence[dict[str, Any]], out_dir: Path, fig_dir: Path, title: str | None
) -> list[Path]:
    """TSPD table (``<out_dir>/tspd_table.md``, rows from ``<out_dir>/tspd/<label>.json``) and figure."""
    import json

    from ts2.eval.tspd import tspd_table

    have = [r for r in runs if "tspd" in r["metrics"]]
    if not have:
        raise NoData("no run has metrics/tspd.json (python -m ts2.evaluate run_dir=... eval=tspd)")
    count = {m: sum(x["method"].id == m for x in have) for m in (r["method"].id for r in have)}
    (out_dir / "tspd").mkdir(parents=True, exist_ok=True)
    rows, files, seen, legend = [], [], {}, []
    for r in have:
        mid = r["method"].id
        seen[mid] = seen.get(mid, 0) + 1
        label = mid + (f" #{seen[mid]}" if count[mid] > 1 else "")  # seed runs: "ts2 #1", "ts2 #2"
        if count[mid] > 1:
            legend.append(f"{label} = run {r['run']}")
        d = dict(r["metrics"]["tspd"])
        details = dict(d.get("details") or {})  # the copy names its row: the table labels rows by method
        d["details"] = {**details, "model": {**(details.get("model") or {}), "method": label}}
        f = out_dir / "tspd" / (label.replace("/", "_").replace(" #", "_") + ".json")
        f.write_text(json.dumps(d, indent=2, default=str))
        files.append(f)
        rows.append({**d, "_label": label})
    note = _titled("", title, runs).strip()
    table = out_dir / "tspd_table.md"
    table.write_text(f"{note}\n\n" + tspd_table(files) + ("\n" + "; ".join(legend) + ".\n" if legend else ""))
    return [tspd_rows_figure(rows, fig_dir / "tspd.png", note=note), table]


def _token_distribution_of_runs(
    runs: Sequence[dict[str, Any]], out_dir: Path, fig_dir: Path, title: str | None
) -> list[Path]:
    """The token-distribution figure from ``<out_dir>/token_distribution/*.json`` (written by
    ``python -m ts2.analysis.token_distribution <run folders> --out <out_dir>``), panels of these runs only."""
    import json

    src = out_dir / "token_distribution"
    official = src / "official_8b.json"
    if not official.is_file():
        raise NoData(
            f"no {official} (python -m ts2.analysis.token_distribution <run folders> --out {out_dir})"
        )
    names = {r["run"]: r for r in runs}
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
            f"python -m ts2.analysis.token_distribution <run folders> --out {out_dir}"
        )
    from ts2.analysis.token_distribution import PROMPT, our_panel

    ours.sort(key=lambda x: (x[0]["method"].order, x[0]["run"]))
    dup = {r["method"].id for r, _ in ours if sum(x["method"].id == r["method"].id for x, _ in ours) > 1}
    panels = [
        our_panel(d, r["method"].name + (f" ({r['run']})" if r["method"].id in dup else ""), r["method"].id)
        for r, d in ours
    ]
    what = (
        f"Next-token distribution at the first generated digit; prompt {PROMPT!r}\nT=0.6, top-p 0.9 (mean over "
        "samples). Top row: ours (scale in each title); bottom row: the official 8B data."
    )
    fig = token_distribution_figure(
        [panels, json.loads(official.read_text())],
        fig_dir / "token_distribution.png",
        title=_titled(what, title, runs),
    )
    return [fig]


def write_figures(
    runs: Sequence[dict[str, Any]], fig_dir: str | Path, title: str | None = None
) -> list[Path]:
    """Every figure whose data the runs (records of :func:`ts2.runs.collect`) hold, into ``fig_dir``:

    ``bon_curves.png`` (metrics/alpaca_eval.json), ``quality_diversity.png`` (alpaca_eval diversity with
    heldout_ce and/or the best-of-N win rate), ``tspd.png`` + ``../tspd_table.md`` (metrics/tspd.json) and
    ``token_distribution.png`` (``../token_distribution/*.json`` of these runs). A figure whose data is
    missing is skipped with an INFO line; an error while drawing one (bad data) is logged as an ERROR naming
    it, and the others are still drawn.
    Returns the paths written. Called by ``ts2.report`` after the tables.
    """
    import logging

    log = logging.getLogger("ts2.analysis.figures")
    fig_dir = Path(fig_dir)
    out_dir = fig_dir.parent
    jobs = {
        "bon_curves": lambda: [bon_figure(runs, fig_dir / "bon_curves.png", title)],
        "quality_diversity": lambda: [
            quality_diversity_figure(runs, fig_dir / "quality_diversity.png", title)
        ],
        "tspd": lambda: _tspd_of_runs(runs, out_dir, fig_dir, title),
        "token_distribution": lambda: _token_distribution_of_runs(runs, out_dir, fig_dir, title),
    }
    written: list[Path] = []
    for name, job in jobs.items():
        try:
            paths = job()
        except NoData as err:  # its data is not there
            log.info("figure %s skipped: %s", name, err)
            continue
        except Exception as err:  # bad data or a bug: never let one figure stop the report
            log.error(
                "figure %s failed (%s: %s); the other figures are still drawn", name, type(err).__name__, err
            )
            continue
        log.info("figure %s: %s", name, ", ".join(str(p) for p in paths))
        written += paths
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ts2.analysis.figures tspd RUN_OR_JSON... [--out results]``: the TSPD table and figure;
    ``python -m ts2.analysis.figures all RUNS_DIR [--out results]``: every figure of :func:`write_figures`
    for the run folders under RUNS_DIR (what ``ts2.report`` draws after its tables)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("what", choices=["tspd", "all"])
    p.add_argument(
        "paths",
        nargs="+",
        help="tspd: run folders (with metrics/tspd.json) or tspd.json files; all: RUNS_DIR",
    )
    p.add_argument("--out", default="results")
    p.add_argument(
        "--note", default=None, help="a line stating what the runs are (table header, figure title)"
    )
    a = p.parse_args(argv)
    if a.what == "all":
        import logging

        from ts2.runs import collect

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        if len(a.paths) != 1:
            p.error("all takes one RUNS_DIR (the folder holding the run folders)")
        runs = collect(Path(a.paths[0]))
        for f in write_figures(runs, Path(a.out) / "figures", a.note or f"runs: {a.paths[0]}"):
            print(f)
        return
    for k, v in tspd_report(a.paths, a.out, note=a.note).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    from ts2 import cli

    cli.run(main, interrupted=cli.RERUN)
