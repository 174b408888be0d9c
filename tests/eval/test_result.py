"""Tests for `ts2.eval.result.ScoreResult`: defaults and the consistency checks of CIs and per-prompt values."""

from __future__ import annotations

import pytest

from ts2.eval.result import ScoreResult


def test_defaults_and_a_consistent_result():
    r = ScoreResult(metrics={"m": 1.0}, num_prompts=2, num_samples=4, complete=True)
    assert (r.ci, r.per_prompt, r.prompt_ids, r.details, r.note) == ({}, {}, [], {}, None)
    ok = ScoreResult(
        {"m": 1.5}, 2, 4, True, ci={"m": (1.0, 2.0)}, per_prompt={"m": [1.0, 2.0]}, prompt_ids=["a", "b"]
    )
    assert ok.per_prompt["m"] == [1.0, 2.0]


def test_inconsistent_results_are_refused():
    with pytest.raises(ValueError, match=r"\['x'\] that are not in metrics"):
        ScoreResult({"m": 1.0}, 1, 1, True, ci={"x": (0.0, 1.0)})
    with pytest.raises(ValueError, match="has 1 values for 2 prompt_ids"):
        ScoreResult({"m": 1.0}, 2, 2, True, per_prompt={"m": [1.0]}, prompt_ids=[0, 1])
