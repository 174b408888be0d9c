"""The results table as data: rows (run groups) x columns (benchmark metrics) of :class:`Cell`, and its writers.

A row is a :class:`ts2.records.RunGroup`: the seed runs of one method configuration (runs whose configs differ in
``seed`` alone), labelled with the settings that set it apart (``TS² (α=1, selected)``). A cell carries its
number, its 95% CI, how many prompts and samples stand behind it, and marks: a cell from a partial benchmark
run, from a training run that did not finish, or sized differently from the rest of its column is marked, with
a legend; a benchmark a run lacks is shown as ``missing`` (a dash would read as "not applicable"). A row of
several seed runs shows their mean with the two-level bootstrap CI (seed runs, then prompts;
:func:`ts2.analysis.bon.estimates`). The Markdown and LaTeX writers only render this model, so a new column
kind (the paper's numbers) or mark is added here once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ts2.analysis.bon import estimates, win_rate_ns
from ts2.claims import JUDGE_ORDER, JudgeCheck, difference, resolve_metric, significance
from ts2.records import RunGroup, RunRecord
from ts2.runs import CONTROLS

MARKS = {  # mark -> (symbol, legend)
    "partial": (
        "†",
        "partial: the benchmark's metrics file says complete=false (prompts or samples missing)",
    ),
    "unfinished": ("‡", "the training run did not finish (run.json status is not `finished`)"),
    "size": ("§", "scored on a different number of prompts x samples than the rest of its column"),
    "seeds": ("¶", "some seed runs of this row lack this result: the cell pools those that have it"),
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
    footer: list[str] = field(default_factory=list)  # lines under the legend (the seed-noise lines)

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
    footer = [""] + t.footer if t.footer else []
    return "\n".join(lines + ([""] + legend if legend else []) + footer) + "\n"


def _tex(s: str) -> str:
    for a, b in (
        ("_", r"\_"),
        ("%", r"\%"),
        ("²", r"$^2$"),
        ("−", "-"),
        ("†", r"$^\dagger$"),
        ("‡", r"$^\ddagger$"),
        ("§", r"$^\S$"),
        ("¶", r"$^\P$"),
        ("α", r"$\alpha$"),
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
    out += [f"% {_tex(x)}" for x in [*t.legend(), *t.footer]]
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


def _resolved(files: list[dict[str, Any]], metric: str) -> str:
    """``win_rate@max`` -> the largest n every file has; any other name unchanged."""
    if metric != "win_rate@max":
        return metric
    ns = set.intersection(*(set(win_rate_ns(f)) for f in files))
    return f"win_rate@{max(ns)}" if ns else metric


def group_cell(g: RunGroup, key: str) -> Cell:
    """The cell of ``<bench>/<metric>`` for a row: its one run's (:func:`cell_of`), or the mean of its seed runs
    with the two-level bootstrap CI (seed runs, then prompts), marked when some seed run lacks it."""
    bench, metric = key.split("/", 1)
    marks = set() if g.finished else {"unfinished"}
    if bench == "train":
        vals = [r.train[metric] for r in g.runs if isinstance(r.train.get(metric), (int, float))]
        if vals and len(vals) < len(g.runs):
            marks.add("seeds")
        return Cell(float(np.mean(vals)) if vals else None, marks=marks)
    files = [r.metrics[bench] for r in g.runs if bench in r.metrics]
    if len(g.runs) == 1 or not files:
        return cell_of(files[0] if files else None, metric, g.finished)
    name = _resolved(files, metric)
    if len(files) < len(g.runs):
        marks.add("seeds")
    cells = [cell_of(f, name, True) for f in files]
    marks |= {m for c in cells for m in c.marks}
    if any(c.value is None for c in cells):
        return Cell(marks=marks)
    e = estimates(files, [name])[name]
    return Cell(e.mean, e.ci, files[0].get("num_prompts"), files[0].get("num_samples"), marks)


def build_table(
    groups: list[RunGroup], columns: list[Column], title: str, notes: list[str], allow_mixed: bool
) -> Table:
    """Rows = run groups, columns = ``columns`` with any value; cells marked."""
    runs = [r for g in groups for r in g.runs]
    benches = {b for r in runs for b in r.metrics} | {"train"}
    cols = [c for c in columns if c.bench in benches]
    rows = [
        Row(g.label + ("" if g.finished else " ‡"), g.key, {c.key: group_cell(g, c.key) for c in cols})
        for g in groups
    ]
    where = {g.key: f"{g.label} [{', '.join(r.name for r in g.runs)}]" for g in groups}  # for messages
    for bench in sorted(benches - {"train"}):
        for c in (c for c in cols if c.bench == bench):
            size_marks({where[row.run]: row.cells[c.key] for row in rows}, bench, allow_mixed)
    cols = [c for c in cols if any(row.cells[c.key].value is not None for row in rows)]
    sizes = sorted(
        {f"{b}: {z.prompts} prompts, {z.samples} samples" for r in runs for b, z in r.sizes.items()}
    )
    return Table(
        title, [*notes, "Sizes: " + "; ".join(sizes) + "." if sizes else "No metrics files."], cols, rows
    )


def sub_table(
    title: str,
    groups: list[RunGroup],
    columns: dict[str, str],
    paper: dict[str, dict[str, float]] | None = None,
    paper_label: str = "paper",
    notes: list[str] | None = None,
) -> list[str]:
    """A Markdown section for one benchmark family (MT-Bench-101, OpenLLM, answer lengths): one row per run
    group that has any of ``columns`` (``<bench>/<metric>`` -> header), each cell ``value [lo, hi]`` with its
    marks, then one row per method the poster prints (``paper``: method id -> column key -> value). Empty when
    no run has the data."""
    rows = []
    for g in groups:
        cells = [group_cell(g, k) for k in columns]
        if any(c.value is not None for c in cells):
            rows.append([g.label + ("" if g.finished else " ‡"), *[c.text() for c in cells]])
    if not rows:
        return []
    benches = {k.split("/", 1)[0] for k in columns}
    sizes = sorted(
        {
            f"{b}: {z.prompts} prompts, {z.samples} samples"
            for g in groups
            for r in g.runs
            for b, z in r.sizes.items()
            if b in benches
        }
    )
    out = [f"## {title}", "", *(notes or []), "Sizes: " + "; ".join(sizes) + ".", ""]
    out += ["| method | " + " | ".join(columns.values()) + " |", "|---" + "|---:" * len(columns) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    for method, values in (paper or {}).items():
        out.append(
            f"| {paper_label}: {method} | "
            + " | ".join(f"{values[k]:.2f}" if k in values else "–" for k in columns)
            + " |"
        )
    return [*out, ""]


def frame(runs: list[RunRecord], groups: list[RunGroup] | None = None) -> pd.DataFrame:
    """The CSV: one row per run (judge controls included, ``control`` names the kind), every number with the
    prompts, samples and completeness behind it; ``row`` is the table row it is pooled into."""
    rows = []
    label = {r.path: g.label for g in (groups or []) for r in g.runs}
    for r in runs:
        row: dict[str, Any] = {
            "run": r.name,
            "row": label.get(r.path, r.method.name),
            "control": r.control,
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
            row["alpaca_eval/n_max"] = max(win_rate_ns(ae))
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


def model_note(runs: list[RunRecord]) -> str | None:
    """The models the rows fine-tuned and what trained (issue #20 item 5: a frozen part is said in the header).

    Per distinct setting: the model id, its provenance when recorded (the small scale's GGUF), and
    ``model.trainable_layers`` / ``model.train_embeddings`` (:mod:`ts2.models.freeze`): full fine-tuning, as the
    paper (PAPER.md §3), or the top k decoder layers with the embedding matrix / LM head frozen or trained.
    """
    seen: dict[str, None] = {}
    for r in runs:
        m = (r.config or {}).get("model") or {}
        if not m:
            continue
        k, emb = m.get("trainable_layers"), m.get("train_embeddings", True)
        what = (
            "full fine-tuning"
            if k is None and emb
            else ("every decoder layer" if k is None else f"the top {k} decoder layers + final norm")
            + f" fine-tuned, the embedding matrix / LM head {'trained' if emb else 'frozen'}"
            + ("" if k is None and emb else " (not the paper's full fine-tuning)")
        )
        prov = f", {m['provenance']}" if m.get("provenance") else ""
        seen[f"{m.get('id', r.model)}{prov}: {what}"] = None
    return f"Model: {'; '.join(seen)}." if seen else None


def annotate(
    table: Table, groups: list[RunGroup], paper: dict[str, Any], results: dict, reference: str | None
) -> None:
    """Put the poster's value beside each cell and mark cells that differ significantly from the
    ``reference`` row (CE; ``results``: row key -> its runs' metrics)."""
    keys = [c.key for c in table.columns if c.bench != "train"]
    sig = significance(results, keys, reference) if reference else {}
    for row, g in zip(table.rows, groups, strict=True):
        for key, cell in row.cells.items():
            cell.paper = (paper.get(key) or {}).get(g.method.id)
            d = sig.get((g.key, key))
            if d is not None and d.significant:
                cell.marks.add("sig")


def seed_noise(groups: list[RunGroup], columns: list[Column]) -> list[str]:
    """For each row of several seed runs, its first two seeds' difference on every column with per-prompt values
    (paired bootstrap 95% CI over prompts): the yardstick for any difference between rows (issue #19 item 5)."""
    lines = []
    for g in groups:
        if len(g.runs) < 2:
            continue
        r1, r2 = g.runs[:2]
        pair = {"1": [r1.metrics], "2": [r2.metrics]}
        parts = [
            f"{c.header} {d.text()}{'*' if d.significant else ''}"
            for c in columns
            if c.bench != "train" and (d := difference(pair, c.key, "1", "2")) is not None
        ]
        if parts:
            lines.append(
                f"Seed noise: {g.method.name} seed {r1.seed} − {g.method.name} seed {r2.seed} = "
                + "; ".join(parts)
                + " (paired bootstrap 95% CI over prompts; * = the CI excludes 0)."
            )
    return lines


CONTROL_COLUMNS = {
    "alpaca_eval/win_rate@1": "WR@1",
    "alpaca_eval/win_rate@max": "WR@N",
    "ref_lm/ref_lm": "ref-LM log-lik",
    "alpaca_eval/answer_tokens": "tokens",
    "alpaca_eval/answer_words": "words",
    "alpaca_eval/ngram": "AE N-gram",
}


def _control_cell(r: RunRecord, key: str) -> Cell:
    bench, metric = key.split("/", 1)
    return cell_of(r.metrics.get(bench), metric, True)


def judge_header(controls: list[RunRecord], check: JudgeCheck) -> str:
    """The header line: the verdict (VALID / INVALID / NOT CHECKED), each control's WR@1 with its CI."""
    verdict = {"valid": "VALID", "invalid": "INVALID", "unchecked": "NOT CHECKED"}[check.status]
    shown = [
        f"{CONTROLS.get(r.control, r.control)} {_control_cell(r, 'alpaca_eval/win_rate@1').text()}"
        for r in sorted(controls, key=lambda r: r.method.order)
    ]
    return (
        f"Judge controls (best-of-1 win rate, %): {'; '.join(shown) or 'none scored'} — the judge is {verdict}"
        f" ({check.note}; it must rank {' > '.join(JUDGE_ORDER)}). Win-rate claims "
        + ("count." if check.passed else "read inconclusive.")
    )


def controls_section(controls: list[RunRecord], check: JudgeCheck) -> list[str]:
    """``## Judge controls``: the control "methods" scored by the same judge and pipeline, and the verdict."""
    if not controls:
        return [
            "## Judge controls",
            "",
            "No control was scored, so the judge is not checked: every win-rate claim reads inconclusive. "
            "Score them with `python -m ts2.sample ... sampler=control sampler.kind=<reference|shuffled|random>` "
            "(src/ts2/sampling/controls.py).",
            "",
        ]
    controls = sorted(controls, key=lambda r: r.method.order)
    cols = {
        k: h
        for k, h in CONTROL_COLUMNS.items()
        if any(_control_cell(r, k).value is not None for r in controls)
    }
    out = ["## Judge controls", ""]
    out += [
        'Control "methods" scored by the same judge and pipeline as the rows of Table 1 (never rows of it): the '
        "AlpacaEval reference answers, the same with their words shuffled, random tokens of the reference's "
        "length, and the untuned base model's samples.",
        "",
        "| control | " + " | ".join(cols.values()) + " |",
        "|---" + "|---:" * len(cols) + "|",
    ]
    out += [
        "| " + " | ".join([r.method.name, *[_control_cell(r, k).text() for k in cols]]) + " |"
        for r in controls
    ]
    out += ["", f"Verdict: the judge is **{check.status}** — {check.note}."]
    for hi, lo, d in check.steps:
        shown = d.text(" pp") + f" ({d.num_prompts} prompts)" if d is not None else "not measured"
        out.append(f"- {hi} − {lo} (WR@1, paired bootstrap 95% CI): {shown}")
    return [*out, ""]


BENCH_SHORT = {"alpaca_eval": "AE", "creative_poem": "Poem", "creative_story": "Story"}
METRIC_NAMES = {"ngram": "N-gram", "self_bleu": "100−SBLEU", "sent_bert": "Sent-BERT"}


def answer_columns(runs: list[RunRecord]) -> tuple[dict[str, str], list[str]]:
    """Columns of the answers' lengths and the length-controlled diversity (``@cutK``) of every diversity
    benchmark the runs have, and one note per benchmark saying which cut and how many answers were shorter."""
    cols: dict[str, str] = {}
    notes = []
    for bench, short in BENCH_SHORT.items():
        files = [r.metrics[bench] for r in runs if bench in r.metrics]
        keys = {k for f in files for k in f.get("metrics", {})}
        for k, h in (("answer_tokens", "tokens"), ("answer_words", "words"), ("ended_by_eos", "EOS %")):
            if k in keys:
                cols[f"{bench}/{k}"] = f"{short} {h}"
        for k in sorted(x for x in keys if "@cut" in x):
            base, _, cut = k.partition("@")
            cols[f"{bench}/{k}"] = f"{short} {METRIC_NAMES.get(base, base)}@{cut}"
        cuts = [((f.get("details") or {}).get("diversity") or {}).get("length_cut") for f in files]
        cuts = [c for c in cuts if c]
        if cuts:
            shorter, total = sum(c["shorter"] for c in cuts), sum(c["answers"] for c in cuts)
            ks = sorted({c["words"] for c in cuts})
            notes.append(
                f"{bench}: every answer cut after its first {'/'.join(map(str, ks))} word tokens; {shorter} of "
                f"{total} answers (all runs) were shorter and are scored whole."
            )
    return cols, notes


def secondary_columns(runs: list[RunRecord]) -> dict[str, str]:
    """Columns of the secondary diversity texts (``paper_ngram``, …) of every diversity benchmark."""
    cols: dict[str, str] = {}
    for bench, short in BENCH_SHORT.items():
        keys = sorted({k for r in runs for k in (r.metrics.get(bench) or {}).get("metrics", {})})
        for k in keys:
            mode, _, base = k.partition("_")
            if base in METRIC_NAMES and mode in ("paper", "templated", "response"):
                cols[f"{bench}/{k}"] = f"{short} {mode} {METRIC_NAMES[base]}"
    return cols


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
