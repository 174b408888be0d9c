"""Collect run folders into results tables: ``python -m ts2.report runs_dir=runs/table1_tiny name=table1_tiny``.

Every sub-folder of ``runs_dir`` with a ``run.json`` (written by ``ts2.train``) is a run; the runs of one method
whose configs differ in ``seed`` alone are one row (:func:`ts2.records.group_runs`: seeds pooled with the two-level
bootstrap, other settings such as TS²'s α make separate rows, labelled), ordered by the method's ``order``.
Folders marked as judge controls (``run.json`` ``control:``, :mod:`ts2.sampling.controls`) are scored like runs
but listed in the "Judge controls" section, never as rows. Writes ``results/<name>.csv`` (every number of every
run, with ``<bench>/n_prompts``, ``n_samples``, ``complete`` and CI bounds per benchmark, the training
``status``, the ``row`` and ``control``), ``<name>.md`` and ``<name>.tex`` (the Table-1 columns as a
:class:`ts2.table.Table`: marked cells, ``missing`` benchmarks, a legend, the seed-noise lines),
``<name>_samples.md`` (three answers per row and control: what the models write), then the figures
(``figures:``, :mod:`ts2.analysis.figures`) into ``<out_dir>/figures/<name>/``. Benchmarks scored on different sizes
in one column are an error unless ``allow_mixed=true``.

The header states the judge's held-out accuracy, its controls and its verdict (:func:`ts2.claims.check_judge`),
and the quality margins. Each cell shows its 95% CI, a mark when it differs significantly from CE (paired
bootstrap, :mod:`ts2.claims`) and the poster's value beside it; under the table, one line per poster claim says
whether it is reproduced, not reproduced, inconclusive or "quality differs" at this scale (judge gate and
matched-quality TOST, :mod:`ts2.claims`), then diversity at matched quality along the temperature frontiers,
the judge controls, the answers' lengths and length-controlled diversity, the paper's diversity string when
scored as secondary, and MT-Bench-101 / OpenLLM tables. Tiny- and small-scale numbers are labelled so everywhere
(:data:`ts2.conf.SCALE_LABELS`). Nothing
here is typed by hand: rerun this command to regenerate every number.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ts2 import cli
from ts2 import table as T
from ts2.analysis.bon import frontiers
from ts2.analysis.figures import FigureOptions, figure_names, write_figures
from ts2.claims import JudgeCheck, QualityRule, check_judge, judge, load_claims, verdict_line
from ts2.conf import CONF_DIR, check_config, scale_key, scale_label
from ts2.eval.stats import matched_difference, matched_level
from ts2.paths import check_name, check_output_dir
from ts2.records import RunGroup, claim_groups, collect, group_runs
from ts2.sampling.store import group_by_prompt, read_samples

log = logging.getLogger("ts2.report")


def settings_of(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The report settings (``quality``, ``ts2_alpha``, ``judge``, ``frontier``, ``samples``) of
    ``conf/report.yaml``, each overridden by ``settings``."""
    base = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "report.yaml"), resolve=True)
    keys = ("quality", "ts2_alpha", "judge", "frontier", "samples")
    out = {k: dict(base.get(k) or {}) for k in keys}  # type: ignore[union-attr]
    for k, v in dict(settings or {}).items():
        if k not in keys:
            raise ValueError(f"report settings: unknown key {k!r}; known: {list(keys)}.")
        out[k].update(dict(v or {}))
    return out


def claims_section(
    path: Path | None,
    chosen: dict[str, RunGroup],
    scale: str,
    rule: QualityRule,
    check: JudgeCheck | None,
) -> list[str]:
    """One line per poster claim: reproduced / not reproduced / inconclusive / quality differs at this scale.
    Each method is its claim row (:func:`ts2.records.claim_groups`: TS²'s selected α, else the paper's)."""
    if not path or not path.is_file():
        return []
    specs = load_claims(path)
    results = {mid: [r.metrics for r in g.runs] for mid, g in chosen.items()}
    names = {mid: g.label for mid, g in chosen.items()}
    lines = ["## The poster's claims at this scale", ""]
    lines += [verdict_line(judge(s, results, rule, check), names, scale) for s in specs]
    return [*lines, ""]


def frontier_section(chosen: dict[str, RunGroup], fs: Mapping[str, Any], name: str) -> list[str]:
    """Diversity at matched quality: for each ``fs["compare"]`` method minus ``fs["reference"]`` (claim rows),
    each diversity metric interpolated along the temperature frontiers at one quality level, the midpoint of
    the overlap of the curves' quality ranges, with a paired (two-level) bootstrap CI. Empty without frontiers."""
    ref, compare, quality = fs["reference"], list(fs.get("compare") or []), fs["quality"]
    rows = [chosen[m] for m in [ref, *compare] if m in chosen]
    lines = []
    for d in fs.get("diversity") or []:
        curves = {c.method: c for c in frontiers(rows, quality, d)}
        if not curves:
            continue
        if ref not in curves:
            lines.append(f"- {d}: no frontier of {ref} (>= 3 temperatures) to compare against.")
            continue
        level = matched_level([c.frontier.quality_range for c in curves.values()])
        if level is None:
            ranges = ", ".join(
                f"{c.label} [{lo:.3g}, {hi:.3g}]"
                for c in curves.values()
                for lo, hi in [c.frontier.quality_range]
            )
            lines.append(f"- {d}: the methods' quality ranges do not overlap ({ranges}): no matched level.")
            continue
        for m in compare:
            if m not in curves:
                continue
            a, b = curves[m], curves[ref]
            md = matched_difference(a.frontier, b.frontier, level)
            seeds = f"{md.seeds[0]}+{md.seeds[1]} seed runs" if max(md.seeds) > 1 else "1 seed each"
            mark = "*" if md.significant else ""
            lines.append(
                f"- {a.label} − {b.label}, {d} at {quality} = {level:.4g}: {md.diff:+.2f} [{md.ci[0]:+.2f}, "
                f"{md.ci[1]:+.2f}]{mark} ({a.label} {md.a:.2f}, {b.label} {md.b:.2f}; temperatures "
                f"{'/'.join(f'{t:g}' for t in a.frontier.temperatures)} vs "
                f"{'/'.join(f'{t:g}' for t in b.frontier.temperatures)}; {md.num_prompts} prompts, {seeds}; "
                f"{md.extrapolated} of {md.n_resamples} resamples extended a curve to reach the level)."
            )
    if not lines:
        return []
    head = [
        "## Diversity at matched quality (temperature frontiers)",
        "",
        f"Each method sampled at several temperatures (figures/{name}/frontier.png); diversity is interpolated "
        f"linearly along its curve at one quality level of {quality}: the midpoint of the overlap of the methods' quality "
        "ranges. The difference has a paired 95% bootstrap CI (prompts shared by both curves, seed runs resampled "
        "first; the level held fixed); * = the CI excludes 0.",
        "",
    ]
    return [*head, *lines, ""]


TEXT_MODES = {
    "response": "the answer alone",
    "paper": "the paper's string (the chat-templated prompt + answer, PAPER.md §4)",
    "templated": "the prompt as sent + the answer",
}


def diversity_text_note(runs: list[Any]) -> str | None:
    """The line that says which text the table's diversity columns score (``details.diversity.text`` of the runs'
    metrics files: ``diversity.text``), and where the others are; None when no run has a diversity score."""
    modes = sorted(
        {
            str(((m.get("details") or {}).get("diversity") or {}).get("text"))
            for r in runs
            for m in r.metrics.values()
            if ((m.get("details") or {}).get("diversity") or {}).get("text")
        }
    )
    if not modes:
        return None
    said = " / ".join(TEXT_MODES.get(x, x) for x in modes)
    return (
        f"Diversity columns score {said} (`diversity.text={'/'.join(modes)}`); other texts, when scored, are in "
        '"Diversity of other strings" below, the answers\' lengths and length-cut diversity in "The answers".'
    )


def _cut(text: str, chars: int) -> str:
    text = text.replace("```", "ʼʼʼ")
    return text if len(text) <= chars else text[:chars] + " …[cut]"


def samples_markdown(
    title: str, rows: list[tuple[str, Path]], benches: list[str], prompts: int = 3, chars: int = 300
) -> str | None:
    """``<name>_samples.md``: for each benchmark, its first ``prompts`` prompts (smallest ids every row has),
    and under each the first sample of every row (label, run folder), cut to ``chars`` characters."""
    out = [
        f"# {title}: what the models write",
        "",
        f"The first sample (sample_idx 0) of each row and control "
        f"for the first {prompts} prompts, cut to {chars} characters. Read from each run's samples/.",
        "",
    ]
    any_bench = False
    for bench in benches:
        have = [(label, run / "samples" / f"{bench}.jsonl") for label, run in rows]
        have = [(label, f) for label, f in have if f.is_file()]
        if not have:
            continue
        groups = [(label, group_by_prompt(read_samples(f))) for label, f in have]
        shared = set.intersection(*(set(g) for _, g in groups))
        ids = sorted(shared, key=lambda x: (str(type(x)), x))[:prompts]
        if not ids:
            continue
        any_bench = True
        out += [f"## {bench}", ""]
        for pid in ids:
            first = groups[0][1][pid][0]
            instruction = first.fields.get("instruction") or first.prompt or ""
            out += [f"### Prompt {pid}: {_cut(' '.join(str(instruction).split()), 200)}", ""]
            for label, g in groups:
                s = g[pid][0]
                out += [
                    f"**{label}** ({s.num_tokens} tokens, finish: {s.finish_reason})",
                    "",
                    "```text",
                    _cut(s.completion, chars),
                    "```",
                    "",
                ]
    return "\n".join(out) + "\n" if any_bench else None


def report(
    runs_dir: Path,
    name: str,
    out_dir: Path,
    paper_numbers: Path | None = None,
    allow_mixed: bool = False,
    columns: dict[str, str] | None = None,
    figures: list[str] | None = None,
    allow_missing: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the csv/md/tex of ``runs_dir``, its samples file and the figures ``figures`` (None: every one with
    data); ``settings``: overrides of ``quality``, ``ts2_alpha``, ``judge``, ``frontier``, ``samples`` of
    conf/report.yaml. Every error in the tables is raised before anything is written."""
    columns = columns or dict(OmegaConf.load(Path(CONF_DIR) / "report.yaml").columns)
    check_output_dir(out_dir, "out_dir")
    check_name(name, "name")
    cfg = settings_of(settings)
    rule = QualityRule.from_config(cfg["quality"])
    figure_names(figures)  # an unknown figure is an error before anything is written
    runs = collect(runs_dir)
    controls = [r for r in runs if r.control]
    trained = [r for r in runs if not r.control]
    if not trained:
        raise FileNotFoundError(
            f"runs_dir={runs_dir} holds only judge controls ({', '.join(r.name for r in controls)}): train into it."
        )
    groups = group_runs(trained, cfg["ts2_alpha"])
    chosen = claim_groups(groups)
    df, pub = T.frame(runs, groups), T.load_paper(paper_numbers)
    scales = sorted(set(df.loc[df["control"].isna(), "scale"]))
    key = scale_key(scales)  # tiny / small / paper: the title's label (ts2.conf.SCALE_LABELS)
    small = key in ("tiny", "small")  # our CPU scales: the poster's Llama values beside, for orientation only
    model = "llama31_8b" if small else str(trained[0].model)
    title = f"Table 1 ({name}) — {scale_label(key)}"
    check = check_judge({r.control: [r.metrics] for r in controls})
    gate = check if cfg["judge"].get("require_controls", True) else None
    samples_name, sm = f"{name}_samples.md", cfg["samples"]
    samples_md = samples_markdown(
        title,
        [(g.label + (f", seed {g.runs[0].seed}" if len(g.runs) > 1 else ""), g.runs[0].path) for g in groups]
        + [(r.method.name, r.path) for r in sorted(controls, key=lambda r: r.method.order)],
        list(sm.get("benchmarks") or []),
        int(sm.get("prompts", 3)),
        int(sm.get("chars", 300)),
    )
    notes = [
        f"Generated by `python -m ts2.report runs_dir={runs_dir} name={name}` from {len(trained)} run folders"
        + (f" and {len(controls)} judge-control folders." if controls else "."),
        f"Scale: {'; '.join(scales)}.",
        *([n] if (n := T.model_note(trained)) else []),
        *([n] if (n := T.judge_note(trained + controls)) else []),
        T.judge_header(controls, check)
        + (
            ""
            if gate is not None
            else " (judge.require_controls=false: win-rate claims are judged regardless)"
        ),
        rule.header(),
        "Rows: the seed runs of one configuration are pooled (configs differing in `seed` alone); other settings "
        "make separate rows, named in the label. Cells: value [95% CI] (percentile bootstrap over prompts; with "
        "several seed runs, two-level: seed runs, then prompts).",
        f"What the models write: [{samples_name}]({samples_name}) (three answers per row and control)."
        if samples_md is not None
        else "What the models write: no sample files under the run folders.",
    ]
    if small and pub.get(model):
        notes.append(
            f"(p X): the poster's {model} value, beside the {key}-scale number for orientation only."
        )
    if line := diversity_text_note(trained):
        notes.append(line)
    n_max = df.loc[df["control"].isna(), "alpaca_eval/n_max"] if "alpaca_eval/n_max" in df else None
    if n_max is not None and n_max.notna().any():
        notes.append(
            f"WR@N = best-of-{int(n_max.max())} reward-model win rate (%) vs the "
            "AlpacaEval-2 reference; diversity scores ×100 (PAPER.md §4)."
        )
    table = T.build_table(groups, [T.Column(k, h) for k, h in columns.items()], title, notes, allow_mixed)
    results = {g.key: [r.metrics for r in g.runs] for g in groups}
    T.annotate(table, groups, pub.get(model) or {}, results, chosen["ce"].key if "ce" in chosen else None)
    table.footer = T.seed_noise(groups, table.columns)
    for col, by_method in (pub.get(model) or {}).items():
        df[f"paper:{col}"] = df["method"].map(by_method)
    scale = f"{key} scale"
    mt = pub.get("mt_bench_101") or {}
    answer_cols, cut_notes = T.answer_columns(trained)
    sections = [
        *claims_section(paper_numbers, chosen, scale, rule, gate),
        *frontier_section(chosen, cfg["frontier"], name),
        *T.controls_section(controls, check),
        *T.sub_table(
            "The answers: length, EOS and length-controlled diversity",
            groups,
            answer_cols,
            notes=[
                "tokens: generated tokens per answer (EOS included); words: nltk word tokens (the N-gram metric's); "
                "EOS %: answers that ended by EOS or a stop string; @cutK: the diversity of the answers cut after "
                "their first K word tokens, so length cannot drive it.",
                *cut_notes,
            ],
        ),
        *T.sub_table(
            "Diversity of other strings (secondary text modes)",
            groups,
            T.secondary_columns(trained),
            notes=[
                "paper: the official string (the chat-templated prompt + answer, PAPER.md §4); the table's own "
                "columns score the text named in each metrics file (details.diversity.texts)."
            ],
        ),
        *T.sub_table(
            "MT-Bench-101 (judge score 1–10; overall = mean of the 13 tasks)",
            groups,
            {"mt_bench_101/overall": "Avg.", **{f"mt_bench_101/{t}": t for t in mt.get("tasks", [])}},
            {
                m: {
                    "mt_bench_101/overall": mt["avg"][m],
                    **{f"mt_bench_101/{t}": v for t, v in mt[m].items()},
                }
                for m in mt.get("avg", {})
            },
            f"poster ({mt.get('model', 'paper')})",
        ),
        *T.sub_table(
            "OpenLLM, official generative protocol (accuracy %, majority vote / any correct)",
            groups,
            T.openllm_columns(trained),
        ),
        *T.sub_table(
            "OpenLLM, lm-eval-harness protocol (Open LLM Leaderboard v1 settings)",
            groups,
            T.harness_columns(trained),
        ),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "tex": out_dir / f"{name}.tex"}
    df.to_csv(paths["csv"], index=False)
    paths["md"].write_text(T.to_markdown(table) + ("\n" + "\n".join(sections) if sections else ""))
    paths["tex"].write_text(T.to_latex(table))
    if samples_md is not None:
        paths["samples"] = out_dir / samples_name
        paths["samples"].write_text(samples_md)
    fr = cfg["frontier"]
    options = FigureOptions(title, allow_missing, fr["quality"], tuple(fr.get("diversity") or ()), name=name)
    drawn = write_figures(trained, out_dir, figures, options)
    paths.update({f"figure:{p.name}": p for p in drawn})
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


@hydra.main(config_path=CONF_DIR, config_name="report", version_base="1.3")
@cli.task
def main(cfg: DictConfig) -> None:
    check_config(cfg, "report")
    paper = Path(cfg.paper_numbers) if cfg.paper_numbers else None
    figures = None if cfg.figures is None else list(cfg.figures)
    report(
        Path(cfg.runs_dir),
        cfg.name,
        Path(cfg.out_dir),
        paper,
        bool(cfg.allow_mixed),
        dict(cfg.columns),
        figures,
        bool(cfg.allow_missing),
        {
            k: OmegaConf.to_container(cfg[k], resolve=True)
            for k in ("quality", "ts2_alpha", "judge", "frontier", "samples")
            if k in cfg
        },
    )


if __name__ == "__main__":
    cli.run(main, interrupted=cli.RERUN, check_overrides=True)
