"""Tests for `ts2.eval.alpaca_eval2`: no key, no call; with a key the right outputs reach `alpaca_eval.evaluate`."""

from __future__ import annotations

import json

import pytest

import ts2.eval.alpaca_eval2 as ae2
from tests.eval._alpaca import AE_DIR, INSTR, FloatScorer, write_samples


def test_standard_alpaca_eval_skips_without_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = write_samples(tmp_path / "s.jsonl", {0: ["1"]})
    res = ae2.standard_alpaca_eval(path)
    assert res["status"] == "skipped: OPENAI_API_KEY not set" and res["win_rate"] is None


@pytest.mark.parametrize("which", ["first", "best"])
def test_standard_alpaca_eval_hands_correct_outputs_to_alpaca_eval(tmp_path, monkeypatch, which):
    import alpaca_eval
    import pandas as pd

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    seen = {}

    def fake_evaluate(**kw):
        seen.update(kw)
        lb = pd.DataFrame({"win_rate": [42.0], "standard_error": [1.5], "n_total": [2]}, index=[kw["name"]])
        return lb, None

    monkeypatch.setattr(alpaca_eval, "evaluate", fake_evaluate)
    path = write_samples(
        tmp_path / "samples" / "alpaca_eval.jsonl", {3: ["0.5", "2.5", "1.0"], 9: ["3.0", "-1.0", "0.0"]}
    )
    res = ae2.standard_alpaca_eval(
        path,
        which=which,
        rm=FloatScorer() if which == "best" else None,
        generator="m",
        out_dir=tmp_path / "ae2",
    )
    assert seen["output_path"] == str(tmp_path / "ae2")
    assert res["win_rate"] == 42.0 and res["status"].startswith("ok (subset: 2 of 805")
    mo, ref = seen["model_outputs"], seen["reference_outputs"]
    assert mo["instruction"].tolist() == [INSTR[3], INSTR[9]]
    assert mo["output"].tolist() == (["0.5", "3.0"] if which == "first" else ["2.5", "3.0"])
    assert set(mo["generator"]) == {"m"}
    outputs = json.loads((AE_DIR / "gpt4_1106_preview_model_outputs.json").read_text(encoding="utf-8"))
    assert ref["instruction"].tolist() == mo["instruction"].tolist()
    assert ref["output"].tolist() == [outputs[3]["output"], outputs[9]["output"]]
    assert seen["fn_metric"] == "get_winrate" and seen["sort_by"] == "win_rate"
    assert seen["annotators_config"] == "weighted_alpaca_eval_gpt4_turbo"
    assert seen["precomputed_leaderboard"] is None and seen["is_return_instead_of_print"] is True
