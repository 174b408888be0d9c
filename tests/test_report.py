"""``ts2.report`` on hand-made run folders: every cell traceable to its prompts and samples, and marked when
it comes from a partial benchmark, an unfinished training run or a differently sized run (issue #10 case 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from ts2.report import report

SIZE = {"num_prompts": 30, "num_samples": 240}


def make_run(
    root: Path,
    name: str,
    method: dict,
    status: str = "finished",
    ces: tuple[float, ...] = (3.0, 2.5),
    metrics: dict[str, dict] | None = None,
    config: dict | None = None,
) -> Path:
    """A run folder as ts2.train / ts2.evaluate write it: run.json, config.yaml, train log, metrics files."""
    run = root / name
    (run / "metrics").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"method": method["id"], "model": "tiny", "status": status}))
    cfg = {"method": method, "model": {"id": "tiny"}, **(config or {})}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    log = [{"step": i + 1, "loss": ce, "ce": ce} for i, ce in enumerate(ces)]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if status == "finished":
        (run / "train_summary.json").write_text(json.dumps({"global_step": len(ces), "last_loss": ces[-1]}))
    for bench, m in (metrics or {}).items():
        body = {"benchmark": bench, "scale": "tiny-scale", "complete": True, **SIZE, **m}
        (run / "metrics" / f"{bench}.json").write_text(json.dumps(body))
    return run


CE = {"id": "ce", "name": "CE", "order": 1}
TS2 = {"id": "ts2", "name": "TS²", "order": 8}


def _tree(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_cells_carry_value_ci_sizes_and_rows_follow_the_saved_method_config(tmp_path):
    runs = tmp_path / "runs"
    ae = {
        "metrics": {"win_rate@1": 40.0, "win_rate@8": 55.125, "ngram": 12.5},
        "ci": {"win_rate@1": [35.5, 44.25]},
    }
    make_run(runs, "b", {"id": "ts2", "name": "Sparsemax+ (ours)", "order": 0}, metrics={"alpaca_eval": ae})
    make_run(runs, "a", CE, metrics={"alpaca_eval": {"metrics": {"win_rate@1": 30.0, "win_rate@8": 41.0}}})
    paths = report(runs, "t", tmp_path / "out")
    md = paths["md"].read_text()
    # The saved config names and orders the rows (order 0 puts the renamed ts2 first).
    rows = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows[0].startswith("| Sparsemax+ (ours) | 40.00 [35.50, 44.25] | 55.12 | 12.50 | 2.50 |")
    assert rows[1] == "| CE | 30.00 | 41.00 | missing | 2.50 |"
    assert "Sizes: alpaca_eval: 30 prompts, 240 samples." in md
    df = pd.read_csv(paths["csv"])
    ts2 = df.set_index("method").loc["ts2"]
    assert (ts2["alpaca_eval/n_prompts"], ts2["alpaca_eval/n_samples"], ts2["alpaca_eval/complete"]) == (
        30,
        240,
        True,
    )
    assert (ts2["alpaca_eval/win_rate@1/ci_lo"], ts2["alpaca_eval/win_rate@1/ci_hi"]) == (35.5, 44.25)
    assert ts2["alpaca_eval/win_rate@max"] == 55.125 and ts2["status"] == "finished"
    tex = paths["tex"].read_text()
    assert r"Sparsemax+ (ours) & 40.00 [35.50, 44.25] & 55.12 & 12.50 & 2.50 \\" in tex


def test_missing_partial_and_unfinished_results_are_marked_with_a_legend(tmp_path):
    """The four silent cases of issue #10 item 4: no metrics, one benchmark missing, a killed training, partial."""
    runs = tmp_path / "runs"
    full = {"alpaca_eval": {"metrics": {"win_rate@1": 30.0}}, "creative_poem": {"metrics": {"ngram": 20.0}}}
    make_run(runs, "ce", CE, metrics=full)
    make_run(runs, "nometrics", {"id": "gem", "name": "GEM", "order": 4})
    make_run(
        runs,
        "onebench",
        {"id": "neft", "name": "NEFT", "order": 3},
        metrics={"creative_poem": full["creative_poem"]},
    )
    make_run(runs, "killed", TS2, status="running", ces=(3.0,), metrics=full)
    partial = {
        "alpaca_eval": {"metrics": {"win_rate@1": 25.0}, "complete": False},
        "creative_poem": full["creative_poem"],
    }
    make_run(runs, "partial", {"id": "ce_wd", "name": "CE+WD", "order": 2}, metrics=partial)
    paths = report(runs, "t", tmp_path / "out")
    md = paths["md"].read_text()
    assert "| method | WR@1 | WR@N | Poem N-gram | train CE |" in md
    assert "| CE | 30.00 | 30.00 | 20.00 | 2.50 |" in md
    assert "| CE+WD | 25.00† | 25.00† | 20.00 | 2.50 |" in md
    assert "| NEFT | missing | missing | 20.00 | 2.50 |" in md
    assert "| GEM | missing | missing | missing | 2.50 |" in md
    assert "| TS² ‡ | 30.00‡ | 30.00‡ | 20.00‡ | 3.00‡ |" in md  # its train CE is the dead run's step-1 value
    for line in ("† = partial", "‡ = the training run did not finish", "missing = the run has no result"):
        assert line in md
    tex = paths["tex"].read_text()
    assert r"TS$^2$ $^\ddagger$ & 30.00$^\ddagger$" in tex and r"% $^\dagger$ = partial" in tex
    df = pd.read_csv(paths["csv"]).set_index("run")
    assert df.loc["killed", "status"] == "running" and not df.loc["partial", "alpaca_eval/complete"]
    assert pd.isna(df.loc["nometrics", "alpaca_eval/n_prompts"])


def test_runs_of_different_sizes_are_an_error_unless_allowed_then_marked(tmp_path):
    runs = tmp_path / "runs"
    for name, method, n in (
        ("a", CE, 30),
        ("b", TS2, 30),
        ("c", {"id": "gem", "name": "GEM", "order": 4}, 2),
    ):
        make_run(
            runs, name, method, metrics={"creative_poem": {"metrics": {"ngram": 10.0}, "num_prompts": n}}
        )
    before = _tree(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"creative_poem was scored on different sizes.*GEM \[c\]: 2 prompts.*allow_mixed=true",
    ):
        report(runs, "t", tmp_path / "out")
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()  # nothing written
    md = report(runs, "t", tmp_path / "out", allow_mixed=True)["md"].read_text()
    assert "| GEM | 10.00§ |" in md and "| CE | 10.00 |" in md and "§ = scored on a different number" in md


def test_paper_values_significance_marks_and_claim_lines(tmp_path):
    """Beside each tiny value the poster's; `*` where the paired difference to CE excludes 0; one line per claim."""
    runs = tmp_path / "runs"
    ids = [0, 1, 2, 3]

    def ae(ngram: list[float], wr: list[float]) -> dict:
        return {
            "metrics": {"ngram": sum(ngram) / 4, "win_rate@1": sum(wr) / 4, "win_rate@8": sum(wr) / 4},
            "per_prompt": {"ngram": ngram, "win_rate@8": wr},
            "prompt_ids": ids,
        }

    fit = {
        "metrics": {"heldout_ce": 2.15},
        "per_prompt": {"heldout_ce": [2.0, 2.1, 2.2, 2.3]},
        "prompt_ids": ids,
    }
    make_run(
        runs, "ce", CE, metrics={"alpaca_eval": ae([10, 12, 11, 13], [50, 40, 60, 50]), "heldout_ce": fit}
    )
    make_run(
        runs, "ts2", TS2, metrics={"alpaca_eval": ae([12, 14, 13, 15], [52, 38, 62, 48]), "heldout_ce": fit}
    )
    paper = tmp_path / "paper.yaml"
    paper.write_text(
        "llama31_8b:\n  alpaca_eval/ngram: {ce: 17.78, ts2: 23.78}\n"
        "claims:\n"
        "  - {text: ngram up, metric: alpaca_eval/ngram, a: ts2, b: ce, relation: greater}\n"
        "  - {text: wr not down, metric: alpaca_eval/win_rate@max, a: ts2, b: ce, relation: at_least}\n"
        "  - {text: story, metric: creative_story/ngram, a: ts2, b: ce, relation: greater}\n"
    )
    md = report(runs, "t", tmp_path / "out", paper_numbers=paper)["md"].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| TS² |"))
    # TS² N-gram is CE's + 2 on every prompt: significant, and the poster's 23.78 stands beside it.
    assert "| 13.50* (p 23.78) |" in row
    assert "| 11.50 (p 17.78) |" in next(line for line in md.splitlines() if line.startswith("| CE |"))
    # equal fit on held-out CE (TOST: gap 0 inside ±0.1), so the N-gram claim is decided by its CI
    assert "**reproduced** at tiny scale — ngram up: TS² − CE = +2.00 [+2.00, +2.00] (4 prompts" in md
    assert "held-out CE TS² − CE = +0.00 nats/token [+0.00, +0.00] (90% CI, 4 prompts) — equivalent" in md
    assert "ref-LM log-lik: not measured: no per-prompt ref_lm/ref_lm for ts2, ce" in md
    # no judge control was scored: the win-rate claim cannot count
    assert (
        "**inconclusive: the judge was not checked on controls** at tiny scale — wr not down: TS² − CE = +0.00"
        in md
    )
    assert "the judge is NOT CHECKED" in md and "## Judge controls" in md
    assert "**not measured** at tiny scale — story: no per-prompt values of creative_story/ngram." in md
    assert "* = differs from CE" in md and "(p X) = the poster's value" in md


def test_mt_bench_and_openllm_get_their_own_tables_beside_the_poster(tmp_path):
    runs = tmp_path / "runs"
    mt = {"metrics": {"overall": 4.5, "CM": 4.0, "SI": 5.0}, "ci": {}}
    ol = {"metrics": {"majority@1": 25.0, "majority@4": 50.0, "any@4": 75.0}}
    make_run(runs, "ts2", TS2, metrics={"mt_bench_101": mt, "openllm_gsm8k": ol})
    paper = tmp_path / "paper.yaml"
    paper.write_text(
        "mt_bench_101:\n  model: llama31_8b\n  tasks: [CM, SI]\n  avg: {ts2: 6.65}\n  ts2: {CM: 5.96, SI: 4.76}\n"
    )
    md = report(runs, "t", tmp_path / "out", paper_numbers=paper)["md"].read_text()
    assert "## MT-Bench-101" in md and "| method | Avg. | CM | SI |" in md
    assert "| TS² | 4.50 | 4.00 | 5.00 |" in md and "| poster (llama31_8b): ts2 | 6.65 | 5.96 | 4.76 |" in md
    assert "## OpenLLM, official generative protocol" in md
    assert (
        "| method | gsm8k maj@1 | gsm8k maj@4 | gsm8k any@4 |" in md
        and "| TS² | 25.00 | 50.00 | 75.00 |" in md
    )


def test_figure_settings_are_checked_before_anything_is_written(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "a", CE, metrics={"alpaca_eval": {"metrics": {"win_rate@1": 30.0}}})
    with pytest.raises(ValueError, match=r"figures=\['bon', 'tspd'\]: no figure \['bon'\]"):
        report(runs, "t", tmp_path / "out", figures=["bon", "tspd"])
    for bad in ("../escape", "a/b", "", ".."):  # the name is a file stem and a figures folder: never a path
        with pytest.raises(ValueError, match=r"name=.* is not a plain name"):
            report(runs, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ issue #19
def _ae(ids, **per_prompt) -> dict:
    return {
        "metrics": {k: sum(v) / len(v) for k, v in per_prompt.items()},
        "per_prompt": per_prompt,
        "prompt_ids": list(ids),
    }


def test_seed_runs_pool_into_one_row_and_alpha_rows_stay_apart(tmp_path):
    """Two CE runs differing in the seed alone are one row (mean, two-level CI by hand) with a seed-noise line;
    two TS² runs of different α are two rows, and the claims compare the selected α's."""
    runs = tmp_path / "runs"
    ids = range(6)
    for name, seed, v in (("ce1", 1, 10.0), ("ce2", 2, 12.0)):
        make_run(runs, name, CE, metrics={"alpaca_eval": _ae(ids, ngram=[v] * 6)}, config={"seed": seed})
    for name, alpha, v in (("ts2_a", 0.25, 9.0), ("ts2_b", 1.0, 14.0)):
        make_run(
            runs,
            name,
            TS2,
            metrics={"alpaca_eval": _ae(ids, ngram=[v] * 6)},
            config={"seed": 1, "loss": {"alpha": alpha}},
        )
    paper = tmp_path / "paper.yaml"
    paper.write_text(
        "claims:\n  - {text: ngram up, metric: alpaca_eval/ngram, a: ts2, b: ce, relation: greater}\n"
    )
    settings = {"ts2_alpha": {"selected": 1.0}, "quality": {"metrics": {}}}
    md = report(runs, "t", tmp_path / "out", paper_numbers=paper, settings=settings)["md"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    # Resampling the two seeds of constant runs (10, 12) gives means 10, 11, 12 with p 1/4, 1/2, 1/4: CI [10, 12].
    assert rows[0].startswith("| CE (2 seeds) | 11.00 [10.00, 12.00] |")
    assert rows[1].startswith("| TS² (α=0.25, paper) | 9.00") and rows[2].startswith(
        "| TS² (α=1, selected) | 14.00"
    )
    assert "Seed noise: CE seed 1 − CE seed 2 = AE N-gram -2.00 [-2.00, -2.00]* (paired bootstrap" in md
    assert "ngram up: TS² (α=1, selected) − CE (2 seeds) = +3.00 [" in md and "1+2 seed runs" in md
    df = pd.read_csv(tmp_path / "out" / "t.csv").set_index("run")
    assert df.loc["ce2", "row"] == "CE (2 seeds)" and df.loc["ts2_b", "row"] == "TS² (α=1, selected)"
    # without a selected α the claims compare the paper's α row
    md2 = report(runs, "t", tmp_path / "out2", paper_numbers=paper, settings={"quality": {"metrics": {}}})[
        "md"
    ].read_text()
    assert "ngram up: TS² (α=0.25, paper) − CE (2 seeds) = -2.00" in md2


@pytest.mark.parametrize(("judge_name", "verdict"), [("noise", "INVALID"), ("sane", "VALID")])
def test_judge_controls_head_the_table_and_gate_the_win_rate_claims(
    tmp_path, tiny_tokenizer, judge_name, verdict
):
    from tests._judges import NoiseLovingJudge, SaneJudge, control_metrics

    runs = tmp_path / "runs"
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    judge = NoiseLovingJudge() if judge_name == "noise" else SaneJudge()
    wr1 = {
        k: control_metrics(runs, k, tmp_path / "tok", judge)["metrics"]["win_rate@1"]
        for k in ("reference", "shuffled", "random")
    }
    ids = range(12)
    make_run(runs, "ce", CE, metrics={"alpaca_eval": _ae(ids, **{"win_rate@1": [40.0 + i for i in ids]})})
    make_run(runs, "ts2", TS2, metrics={"alpaca_eval": _ae(ids, **{"win_rate@1": [45.0 + i for i in ids]})})
    paper = tmp_path / "paper.yaml"
    paper.write_text(
        "claims:\n  - {text: wr up, metric: alpaca_eval/win_rate@1, a: ts2, b: ce, relation: greater}\n"
    )
    paths = report(runs, "t", tmp_path / "out", paper_numbers=paper)
    md = paths["md"].read_text()
    assert f"the judge is {verdict}" in md
    assert (
        f"random tokens {wr1['random']:.2f} [" in md.splitlines()[4] + md
    )  # each control's WR@1 in the header
    rows = [
        line.split(" |")[0] for line in md.split("## The poster")[0].splitlines() if line.startswith("| ")
    ]
    assert rows == ["| method", "| CE", "| TS²"]  # controls are never rows of Table 1
    assert "## Judge controls" in md and "| Control: reference, words shuffled |" in md
    claim = next(line for line in md.splitlines() if "wr up" in line)
    if verdict == "INVALID":
        assert claim.startswith(
            "- **inconclusive: the judge failed its controls** at tiny scale — wr up: TS² − CE = +5.00"
        )
    else:
        assert claim.startswith("- **reproduced** at tiny scale — wr up: TS² − CE = +5.00 [+5.00, +5.00]")
    df = pd.read_csv(paths["csv"]).set_index("run")
    assert df.loc["control=random", "control"] == "random" and pd.isna(df.loc["ce", "control"])
    # the controls' answers are shown beside the models' (the trained runs here have no sample files)
    assert "**Control: random tokens**" in paths["samples"].read_text()


def test_samples_file_shows_three_answers_per_row_cut_to_300_characters(tmp_path):
    from tests.eval._alpaca import write_samples

    runs = tmp_path / "runs"
    for name, method, text in (("ce", CE, "short answer"), ("ts2", TS2, "x" * 400)):
        run = make_run(runs, name, method)
        write_samples(
            run / "samples" / "alpaca_eval.jsonl", {p: [f"{text} {p}", "second"] for p in (4, 0, 2, 1)}
        )
    paths = report(runs, "t", tmp_path / "out")
    assert "What the models write: [t_samples.md](t_samples.md)" in paths["md"].read_text()
    text = paths["samples"].read_text()
    assert [line for line in text.splitlines() if line.startswith("### Prompt")][0].startswith(
        "### Prompt 0: "
    )
    assert len([line for line in text.splitlines() if line.startswith("### Prompt")]) == 3  # prompts 0, 1, 2
    assert "short answer 0" in text and "second" not in text  # sample 0 only
    assert "x" * 300 + " …[cut]" in text and "x" * 301 not in text
    assert "**TS²** (2 tokens, finish: stop)" in text  # write_samples counts whitespace words as tokens


def test_answers_section_lists_lengths_and_the_length_cut(tmp_path):
    runs = tmp_path / "runs"
    ids = range(3)
    for name, method, words in (("ce", CE, 20.0), ("ts2", TS2, 12.0)):
        ae = _ae(ids, answer_words=[words] * 3, ended_by_eos=[0.0] * 3, **{"ngram@cut8": [30.0] * 3})
        ae["details"] = {"diversity": {"length_cut": {"words": 8, "answers": 24, "shorter": 3}}}
        make_run(runs, name, method, metrics={"alpaca_eval": ae})
    md = report(runs, "t", tmp_path / "out")["md"].read_text()
    assert "## The answers: length, EOS and length-controlled diversity" in md
    assert (
        "| method | AE words | AE EOS % | AE N-gram@cut8 |" in md and "| TS² | 12.00 | 0.00 | 30.00 |" in md
    )
    assert (
        "alpaca_eval: every answer cut after its first 8 word tokens; 6 of 48 answers (all runs) were shorter"
        in md
    )


def _frontier(run: Path, points: dict[float, tuple[float, float]], prompts: int = 4) -> None:
    for t, (q, d) in points.items():
        folder = run / "frontier" / f"t{t}" / "metrics"
        folder.mkdir(parents=True)
        body = {"benchmark": "alpaca_eval", **_ae(range(prompts), ngram=[d] * prompts)}
        (folder / "alpaca_eval.json").write_text(json.dumps(body))
        body = {"benchmark": "ref_lm", **_ae(range(prompts), ref_lm=[q] * prompts)}
        (folder / "ref_lm.json").write_text(json.dumps(body))


def test_diversity_at_matched_quality_interpolates_the_frontiers_by_hand(tmp_path):
    runs = tmp_path / "runs"
    _frontier(make_run(runs, "ce", CE), {0.3: (-1.0, 10.0), 0.6: (-2.0, 20.0), 1.0: (-3.0, 30.0)})
    _frontier(make_run(runs, "ts2", TS2), {0.3: (-1.5, 15.0), 0.6: (-2.5, 30.0), 1.0: (-3.5, 45.0)})
    settings = {"frontier": {"diversity": ["alpaca_eval/ngram"]}}
    paths = report(runs, "t", tmp_path / "out", settings=settings)
    md = paths["md"].read_text()
    # overlap of [-3, -1] and [-3.5, -1.5] is [-3, -1.5]: level -2.25; CE there 22.5, TS² 26.25 (by hand)
    assert (
        "- TS² − CE, alpaca_eval/ngram at ref_lm/ref_lm = -2.25: +3.75 [+3.75, +3.75]* (TS² 26.25, CE 22.50; "
        "temperatures 0.3/0.6/1 vs 0.3/0.6/1; 4 prompts, 1 seed each; 0 of 1000 resamples" in md
    )
    assert paths["figure:frontier.png"].stat().st_size > 10_000


def test_model_note_names_the_model_and_what_trained():
    from types import SimpleNamespace

    from ts2 import table as T

    def run(**model):
        return SimpleNamespace(config=OmegaConf.create({"model": model}), model=model.get("id"))

    small = dict(id="smollm2_135m", provenance="Q4_1 GGUF", trainable_layers=10, train_embeddings=False)
    assert T.model_note([run(**small), run(**small)]) == (
        "Model: smollm2_135m, Q4_1 GGUF: the top 10 decoder layers + final norm fine-tuned, the embedding matrix / "
        "LM head frozen (not the paper's full fine-tuning)."
    )
    assert T.model_note([run(id="tiny_base", trainable_layers=None, train_embeddings=True)]) == (
        "Model: tiny_base: full fine-tuning."
    )
    assert T.model_note([SimpleNamespace(config=None, model=None)]) is None
