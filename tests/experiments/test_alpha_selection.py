"""experiments/alpha_selection/run.py: the rule (lowest selection CE unless tied with α = 0.25), the selected α in
config, and a debug-size end-to-end run on the tiny model (selection rows only, never metrics/)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from experiments.alpha_selection import run as als

from ts2.eval.stats import paired_bootstrap


def _row(alpha: float, row_ce: list[float]) -> dict:
    return {"alpha": alpha, "learning_rate": 1e-3, "heldout_ce": float(np.mean(row_ce)), "_ids": list(range(len(row_ce))),
            "_row_ce": row_ce}  # fmt: skip


def test_lowest_ce_wins_only_when_its_ci_against_the_paper_alpha_excludes_zero():
    rng = np.random.default_rng(0)
    base = list(6 + rng.normal(size=40))
    paper = _row(0.25, base)
    clear = _row(1.0, [x - 0.5 + 0.01 * rng.normal() for x in base])  # 0.5 nats better on every row
    noisy = _row(2.0, [x - 0.05 + rng.normal() for x in base])  # lower mean, CI wide
    for rows, want in (([paper, clear], clear), ([paper, noisy], paper), ([clear, paper], clear)):
        als.paired_to_reference(rows, paper)
        chosen, why = als.choose(rows, paper)
        assert chosen is want, why
    assert paper["diff_vs_paper"].diff == 0 and clear["diff_vs_paper"].diff == pytest.approx(
        paired_bootstrap(clear["_row_ce"], base).diff
    )
    rows = [paper, noisy]
    als.paired_to_reference(rows, paper)
    assert "tie" in als.choose(rows, paper)[1] and not noisy["diff_vs_paper"].significant


def test_write_config_sets_the_one_selected_alpha_line(tmp_path, monkeypatch):
    (tmp_path / "experiment").mkdir()
    cfg = tmp_path / "experiment" / "table1_small.yaml"
    cfg.write_text("name: x\npipeline:\n  seeds: 1\n  selected_alpha: null   # written by alpha_selection\n")
    monkeypatch.setattr(als, "CONF_DIR", str(tmp_path))
    als.write_config("small", 1.0)
    assert cfg.read_text().splitlines()[3] == "  selected_alpha: 1   # written by alpha_selection"
    cfg.write_text("pipeline:\n  seeds: 1\n")
    with pytest.raises(ValueError, match="needs exactly one `selected_alpha:` line"):
        als.write_config("small", 1.0)


@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_the_experiment_configs_carry_the_selected_alpha_of_the_committed_selection(compose, scale):
    """selected_alpha is the α that results/alpha_selection_<scale>.csv marks chosen, or null before it has run."""
    selected = compose([f"experiment=table1_{scale}"]).pipeline.selected_alpha
    table = als.REPO / "results" / f"alpha_selection_{scale}.csv"
    if not table.exists():
        assert selected is None
        return
    chosen = [float(r["alpha"]) for r in csv.DictReader(open(table)) if r["chosen"] == "True"]
    assert len(chosen) == 1 and selected == pytest.approx(chosen[0])


def test_debug_run_scores_selection_rows_and_resumes(tmp_path):
    args = ["--scale", "tiny", "--alphas", "0.25,2", "--threads", "1", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path), "--train-extra", "model=tiny debug=cpu train.max_steps=2 data.limit=8",
            "--eval-extra", "eval.metrics.max_length=96 eval.metrics.n_bootstrap=50"]  # fmt: skip
    csv_path, md_path = als.main(args)
    rows = list(csv.DictReader(open(csv_path)))
    assert [float(r["alpha"]) for r in rows] == [0.25, 2.0] and {r["split"] for r in rows} == {"selection"}
    assert [r["chosen"] for r in rows].count("True") == 1
    for r in rows:
        m = json.loads(open(f"{r['run']}/metrics_selection/heldout_ce.json").read())
        assert m["config"]["eval"]["data"]["split"] == "selection" and m["num_prompts"] == int(r["rows"])
        assert not (tmp_path / r["run"] / "metrics").exists()  # the report rows' file is never written here
    assert "**Selected α = " in md_path.read_text()
    again = list(csv.DictReader(open(als.main(args)[0])))  # finished runs and metrics are reused
    assert [r["heldout_ce"] for r in again] == [r["heldout_ce"] for r in rows]
    assert all(float(r["train_s"]) < 30 for r in again)
