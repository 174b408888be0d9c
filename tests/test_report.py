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
) -> Path:
    """A run folder as ts2.train / ts2.evaluate write it: run.json, config.yaml, train log, metrics files."""
    run = root / name
    (run / "metrics").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"method": method["id"], "model": "tiny", "status": status}))
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"method": method, "model": {"id": "tiny"}}))
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
        ValueError, match=r"creative_poem was scored on different sizes.*c: 2 prompts.*allow_mixed=true"
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

    make_run(runs, "ce", CE, metrics={"alpaca_eval": ae([10, 12, 11, 13], [50, 40, 60, 50])})
    make_run(runs, "ts2", TS2, metrics={"alpaca_eval": ae([12, 14, 13, 15], [52, 38, 62, 48])})
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
    assert "**reproduced** at tiny scale — ngram up: TS² − CE = +2.00 [+2.00, +2.00] (4 prompts" in md
    assert "**inconclusive** at tiny scale — wr not down: TS² − CE = +0.00" in md
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
    with pytest.raises(
        ValueError, match=r"alpha_sweep.csv is the α sweep figure's table; choose another name="
    ):
        report(runs, "alpha_sweep", tmp_path / "out", figures=["alpha_sweep"])
    assert not (tmp_path / "out").exists()
