"""The results table as data: rows (runs) x columns (benchmark metrics) of :class:`Cell`, and its writers.

A cell carries its number, its 95% CI when the metrics file has one (``ci``), how many prompts and samples
stand behind it, and marks: a cell from a partial benchmark run, from a training run that did not finish,
or sized differently from the rest of its column is marked, with a legend; a benchmark a run lacks is
shown as ``missing`` (a dash would read as "not applicable"). The Markdown and LaTeX writers only render
this model, so a new column kind (the paper's numbers) or mark is added here once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from ts2.claims import resolve_metric, significance
from ts2.runs import RunRecord

MARKS = {  # mark -> (symbol, legend)
    "partial": (
        "†",
        "partial: the benchmark's metrics file says complete=false (prompts or samples missing)",
    ),
    "unfinished": ("‡", "the training run did not finish (run.json status is not `finished`)"),
    "size": ("§", "scored on a different number of prompts x samples than the rest of its column"),
    "sig": (
        "*",
        "differs from CE: the paired-bootstrap 95% CI of the difference over prompts (and seeds) excludes 0",
    ),
}
PAPER_LEGEND = (
    "(p X) = the poster's value for this method and column (PAPER.md §5), shown for orientation only"
)
MISSING = "missing"


@dataclass
class Cell:
    value: float | None = None
    ci: tuple[float, float] | None = None
    n_prompts: int | None = None
    n_samples: int | None = None
    marks: set[str] = field(default_factory=set)
    paper: float | None = None  # the poster's value for this method and column, if it prints one

    def text(self) -> str:
        """``12.34 [10.10, 14.56]*† (p 23.78)`` (value, CI, marks, paper value) or ``missing``."""
        if self.value is None:
            body = MISSING
        else:
            body = f"{self.value:.2f}"
            if self.ci is not None:
                body += f" [{self.ci[0]:.2f}, {self.ci[1]:.2f}]"
        body += "".join(MARKS[m][0] for m in MARKS if m in self.marks)
        return body + (f" (p {self.paper:.2f})" if self.paper is not None else "")


@dataclass(frozen=True)
class Column:
    key: str  # "<bench>/<metric>" (the CSV column); bench "train" reads the training run
    header: str

    @property
    def bench(self) -> str:
        return self.key.split("/", 1)[0]


@dataclass
class Row:
    label: str
    run: str
    cells: dict[str, Cell]


@dataclass
class Table:
    title: str
    notes: list[str]
    columns: list[Column]
    rows: list[Row]

    def legend(self) -> list[str]:
        used = {m for r in self.rows for c in r.cells.values() for m in c.marks}
        lines = [f"{MARKS[m][0]} = {MARKS[m][1]}" for m in MARKS if m in used]
        if any(c.paper is not None for r in self.rows for c in r.cells.values()):
            lines.append(PAPER_LEGEND)
        if any(c.value is None for r in self.rows for c in r.cells.values()):
            lines.append(f"{MISSING} = the run has no result for this benchmark (not sampled or not scored)")
        return lines


def size_marks(cells: dict[str, Cell], bench: str, allow_mixed: bool) -> None:
    """Cells of one benchmark must share (prompts, samples); else error, or mark the odd ones (allow_mixed)."""
    sizes = {run: (c.n_prompts, c.n_samples) for run, c in cells.items() if c.value is not None}
    counts = Counter(sizes.values())
    if len(counts) <= 1:
        return
    listed = ", ".join(f"{run}: {p} prompts / {s} samples" for run, (p, s) in sorted(sizes.items()))
    if not allow_mixed:
        raise ValueError(
            f"Benchmark {bench} was scored on different sizes across runs ({listed}). Rescore the runs on the same "
            "prompts and samples, or pass allow_mixed=true to show them with a mark."
        )
    ref = max(counts, key=lambda s: (counts[s], s[0] or 0, s[1] or 0))  # most common, then largest
    for run, size in sizes.items():
        if size != ref:
            cells[run].marks.add("size")


def to_markdown(t: Table) -> str:
    header = ["method", *[c.header for c in t.columns]]
    lines = [f"# {t.title}", "", *t.notes, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(t.columns)) + "|"]
    lines += [
        "| " + " | ".join([r.label, *[r.cells[c.key].text() for c in t.columns]]) + " |" for r in t.rows
    ]
    legend = t.legend()
    return "\n".join(lines + ([""] + legend if legend else [])) + "\n"


def _tex(s: str) -> str:
    for a, b in (
        ("_", r"\_"),
        ("%", r"\%"),
        ("²", r"$^2$"),
        ("−", "-"),
        ("†", r"$^\dagger$"),
        ("‡", r"$^\ddagger$"),
        ("§", r"$^\S$"),
    ):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    out = [f"% {t.title}", r"\begin{tabular}{l" + "r" * len(t.columns) + "}", r"\toprule"]
    out.append(" & ".join(_tex(h) for h in ["method", *[c.header for c in t.columns]]) + r" \\")
    out.append(r"\midrule")
    out += [
        " & ".join(_tex(x) for x in [r.label, *[r.cells[c.key].text() for c in t.columns]]) + r" \\"
        for r in t.rows
    ]
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [f"% {_tex(x)}" for x in t.legend()]
    return "\n".join(out) + "\n"


def cell_of(metrics_file: dict[str, Any] | None, metric: str, finished: bool) -> Cell:
    """The cell of one ``metrics/<bench>.json`` (None: the benchmark is missing) for ``metric``."""
    marks = set() if finished else {"unfinished"}
    if metrics_file is None:
        return Cell(marks=marks)
    values = metrics_file.get("metrics", {})
    metric = resolve_metric(metrics_file, metric)  # win_rate@max: the largest n of the best-of-n curve
    ci = (metrics_file.get("ci") or {}).get(metric)
    if not metrics_file.get("complete", False):
        marks.add("partial")
    value = values.get(metric)
    return Cell(
        value=float(value) if isinstance(value, (int, float)) else None,
        ci=(float(ci[0]), float(ci[1])) if ci and None not in ci else None,  # null: no interval
        n_prompts=metrics_file.get("num_prompts"),
        n_samples=metrics_file.get("num_samples"),
        marks=marks,
    )


def build_table(
    runs: list[RunRecord], columns: list[Column], title: str, notes: list[str], allow_mixed: bool
) -> Table:
    """Rows = runs, columns = ``columns`` with any value; cells marked."""
    benches = {b for r in runs for b in r.metrics} | {"train"}
    cols = [c for c in columns if c.bench in benches]
    dup = Counter(r.method.id for r in runs)
    rows = []
    for r in runs:
        finished = r.finished
        cells = {
            c.key: (
                Cell(r.train.get(c.key.split("/")[1]), marks=set() if finished else {"unfinished"})
                if c.bench == "train"
                else cell_of(r.metrics.get(c.bench), c.key.split("/", 1)[1], finished)
            )
            for c in cols
        }
        label = r.method.name + (f" ({r.name})" if dup[r.method.id] > 1 else "")
        rows.append(Row(label + ("" if finished else " ‡"), r.name, cells))
    for bench in sorted(benches - {"train"}):
        for c in (c for c in cols if c.bench == bench):
            size_marks({row.run: row.cells[c.key] for row in rows}, bench, allow_mixed)
    cols = [c for c in cols if any(row.cells[c.key].value is not None for row in rows)]
    sizes = sorted(
        {f"{b}: {z.prompts} prompts, {z.samples} samples" for r in runs for b, z in r.sizes.items()}
    )
    return Table(
        title, [*notes, "Sizes: " + "; ".join(sizes) + "." if sizes else "No metrics files."], cols, rows
    )


def sub_table(
    title: str,
    runs: list[RunRecord],
    columns: dict[str, str],
    paper: dict[str, dict[str, float]] | None = None,
    paper_label: str = "paper",
) -> list[str]:
    """A Markdown section for one benchmark family (MT-Bench-101, OpenLLM): one row per run that has any of
    ``columns`` (``<bench>/<metric>`` -> header), each cell ``value [lo, hi]`` with its marks, then one row per
    method the poster prints (``paper``: method id -> column key -> value). Empty when no run has the data."""
    rows = []
    for r in runs:
        cells = [cell_of(r.metrics.get(k.split("/", 1)[0]), k.split("/", 1)[1], r.finished) for k in columns]
        if any(c.value is not None for c in cells):
            rows.append([r.method.name + ("" if r.finished else " ‡"), *[c.text() for c in cells]])
    if not rows:
        return []
    benches = {k.split("/", 1)[0] for k in columns}
    sizes = sorted(
        {
            f"{b}: {z.prompts} prompts, {z.samples} samples"
            for r in runs
            for b, z in r.sizes.items()
            if b in benches
        }
    )
    out = [f"## {title}", "", "Sizes: " + "; ".join(sizes) + ".", ""]
    out += ["| method | " + " | ".join(columns.values()) + " |", "|---" + "|---:" * len(columns) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    for method, values in (paper or {}).items():
        out.append(
            f"| {paper_label}: {method} | "
            + " | ".join(f"{values[k]:.2f}" if k in values else "–" for k in columns)
            + " |"
        )
    return [*out, ""]


def frame(runs: list[RunRecord]) -> pd.DataFrame:
    """The CSV: one row per run, every number with the prompts, samples and completeness behind it."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            "run": r.name,
            "method": r.method.id,
            "model": r.model,
            "status": r.status,
            **{f"train/{k}": v for k, v in r.train.items()},
        }
        for bench, m in r.metrics.items():
            z = r.sizes[bench]
            row.update(
                {
                    f"{bench}/n_prompts": z.prompts,
                    f"{bench}/n_samples": z.samples,
                    f"{bench}/complete": z.complete,
                }
            )
            row.update({f"{bench}/{k}": v for k, v in m["metrics"].items() if isinstance(v, (int, float))})
            for k, (lo, hi) in (m.get("ci") or {}).items():
                row[f"{bench}/{k}/ci_lo"], row[f"{bench}/{k}/ci_hi"] = lo, hi
        ae = r.metrics.get("alpaca_eval")
        if ae and (cell := cell_of(ae, "win_rate@max", True)).value is not None:
            row["alpaca_eval/win_rate@max"] = cell.value
            row["alpaca_eval/n_max"] = max(
                int(k.split("@")[1]) for k in ae["metrics"] if k[-1].isdigit() and "@" in k
            )
        row["scale"] = "; ".join(sorted(r.scales)) or "unspecified"
        row["incomplete"] = ",".join(b for b, z in r.sizes.items() if not z.complete)
        rows.append(row)
    return pd.DataFrame(rows)


def load_paper(path: Path | None) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path)) if path and path.is_file() else {}


def judge_note(runs: list[RunRecord]) -> str | None:
    """The reward model's own held-out pairwise accuracy (95% CI), as recorded by the AlpacaEval scorer."""
    for r in runs:
        ev = ((r.metrics.get("alpaca_eval") or {}).get("details") or {}).get("rm_eval")
        if ev and ev.get("pairwise_accuracy") is not None:
            lo, hi = ev.get("pairwise_accuracy_ci95") or (None, None)
            ci = f" (95% CI {100 * lo:.1f}–{100 * hi:.1f})" if lo is not None else ""
            n = ev.get("num_eval_pairs")
            size = f" on {n} held-out UltraFeedback pairs" if n else ""
            return f"Judge: the reward model's held-out pairwise accuracy is {100 * ev['pairwise_accuracy']:.1f}%{ci}{size}."
    return None


def annotate(table: Table, runs: list[RunRecord], paper: dict[str, Any], results: dict) -> None:
    """Put the poster's value beside each cell and mark cells that differ significantly from CE."""
    keys = [c.key for c in table.columns if c.bench != "train"]
    sig = significance(results, keys)
    for row, r in zip(table.rows, runs, strict=True):
        for key, cell in row.cells.items():
            cell.paper = (paper.get(key) or {}).get(r.method.id)
            d = sig.get((r.method.id, key))
            if d is not None and d.significant:
                cell.marks.add("sig")


def openllm_columns(runs: list[RunRecord]) -> dict[str, str]:
    """majority@1, majority@N and any@N of every OpenLLM task a run was scored on (N: its largest n)."""
    cols: dict[str, str] = {}
    for bench in sorted(
        {b for r in runs for b in r.metrics if b.startswith("openllm_") and b != "openllm_harness"}
    ):
        ns = sorted(
            {
                int(k.split("@")[1])
                for r in runs
                for k in (r.metrics.get(bench) or {}).get("metrics", {})
                if k.startswith("majority@")
            }
        )
        task = bench.removeprefix("openllm_")
        if ns:
            cols[f"{bench}/majority@1"] = f"{task} maj@1"
            cols[f"{bench}/majority@{ns[-1]}"] = f"{task} maj@{ns[-1]}"
            cols[f"{bench}/any@{ns[-1]}"] = f"{task} any@{ns[-1]}"
    return cols


def harness_columns(runs: list[RunRecord]) -> dict[str, str]:
    keys = sorted({k for r in runs for k in (r.metrics.get("openllm_harness") or {}).get("metrics", {})})
    return {f"openllm_harness/{k}": k for k in keys}
