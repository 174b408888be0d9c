"""experiments/judge_selection/run.py at debug size: the splits, the rule, the outputs, and that the reported held-out
accuracy belongs to the selected judge (tiny: random-init backbone; small: the 2-layer SmolLM2)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from experiments.judge_selection import run as js

from ts2.models.feature_rm import SELECTION_FROM
from ts2.models.tiny_rm import load_pairs


def test_splits_are_disjoint_slices():
    data = js.splits(40, max_selection=10, max_heldout=5)
    pairs, _ = load_pairs(js.TRAIN_GLOB)
    assert data.train == pairs[:40] and data.selection == pairs[SELECTION_FROM : SELECTION_FROM + 10]
    assert data.heldout == load_pairs(js.HELDOUT_GLOB, 5)[0]
    assert len(js.splits(SELECTION_FROM).selection) == len(pairs) - SELECTION_FROM == 196
    with pytest.raises(ValueError, match="reaches the selection split"):
        js.splits(SELECTION_FROM + 1)


def test_rule_is_accuracy_then_logloss_then_grid_order():
    rows = [{"sel_accuracy": 0.6, "sel_logloss": 0.60}, {"sel_accuracy": 0.7, "sel_logloss": 0.69},
            {"sel_accuracy": 0.7, "sel_logloss": 0.65}, {"sel_accuracy": 0.7, "sel_logloss": 0.65}]  # fmt: skip
    assert js.choose(rows) == 2
    # 113.5 of 199 pairs (57.0%; ties count 1/2) is the least whose Wilson interval clears 50%
    assert js.needed(199) == pytest.approx(113.5 / 199)
    m = js.pair_metrics(np.array([2.0, 1.0, 0.0, 1.0, 3.0, 3.0]))  # win, loss, tie
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["logloss"] == pytest.approx(np.mean(np.logaddexp(0, -np.array([1.0, -1.0, 0.0]))))


def test_tiny_selection_reports_the_built_chosen_rm(tmp_path, monkeypatch):
    """The chosen (read position, data limit, epochs) is rebuilt by build_tiny_rm; the script checks it scores the
    selection split exactly as recorded, and the held-out number is that RM's rm_eval.json."""
    from ts2.models import tiny_rm

    monkeypatch.setattr(tiny_rm, "rm_folder", lambda spec: tmp_path / f"{spec.name}-{spec.fingerprint()}")
    csv_path, md_path = js.main(["--scale", "tiny", "--base", "random", "--train-pairs", "12,20", "--epochs", "2",
                                 "--selection-pairs", "10", "--heldout-pairs", "8", "--max-length", "48",
                                 "--out", str(tmp_path)])  # fmt: skip
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 2 * 2 * 2  # read positions x data limits x epochs
    assert [r["chosen"] for r in rows].count("True") == 1
    md = md_path.read_text()
    assert (
        "**8 settings tried.**" in md and "on 8 pairs" in md and "selection = 10 pairs from pair 800 on" in md
    )


def test_small_selection_at_two_layers(tmp_path, monkeypatch):
    from ts2.models import feature_rm

    monkeypatch.setattr(feature_rm, "rm_folder", lambda spec: tmp_path / f"{spec.name}-{spec.fingerprint()}")
    csv_path, md_path = js.main(["--scale", "small", "--layers", "1,2", "--l2s", "0.1,1", "--train-pairs", "24",
                                 "--selection-pairs", "12", "--heldout-pairs", "10", "--max-length", "32",
                                 "--build", "--out", str(tmp_path)])  # fmt: skip
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 2 * 2 * 2 * 2  # read positions x layers x poolings x L2
    chosen = next(r for r in rows if r["chosen"] == "True")
    best = max(float(r["sel_accuracy"]) for r in rows)
    assert float(chosen["sel_accuracy"]) == best
    md = md_path.read_text()
    assert "**16 settings tried.**" in md and "on 10 pairs" in md and "layer:" in md
    yaml_lines = md.split("```yaml\n")[1].split("```")[0]
    bt = {k: json.loads(v) for k, v in (line.split(": ", 1) for line in yaml_lines.strip().splitlines())}
    assert bt["layer"] == int(chosen["layer"]) and bt["max_train_pairs"] == 24 and bt["max_length"] == 32
