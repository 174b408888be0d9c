"""Tests for `ts2.eval.reward_cache`: the shipped reference rewards map all 805 prompts; reference answers scored
with another RM are cached, resumable, and survive a torn or newline-less last line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ts2.eval.reward_cache as rc
from tests.eval._alpaca import AE_DIR, INSTR, FloatScorer


def test_reference_rewards_file_maps_all_805_prompts():
    ref = rc.load_reference_rewards()  # checks idx and instruction of every line
    assert ref.shape == (805,) and np.isfinite(ref).all()
    outputs = json.loads((AE_DIR / "gpt4_1106_preview_model_outputs.json").read_text(encoding="utf-8"))
    rows = [
        json.loads(line)
        for line in open(AE_DIR / "gpt4_1106_preview_fsfairx_rewards.jsonl", encoding="utf-8")
    ]
    assert [r["idx"] for r in rows] == list(range(805))
    assert [r["instruction"] for r in rows] == [o["instruction"] for o in outputs] == INSTR
    # statistics stated in data/SOURCES.md §7a
    assert (ref.min(), int(ref.argmin()), ref.max(), int(ref.argmax())) == (-7.25, 639, 7.125, 736)
    assert ref.mean() == pytest.approx(1.9339, abs=1e-4)


def test_reference_rewards_file_errors(tmp_path):
    rows = [
        json.loads(line)
        for line in open(AE_DIR / "gpt4_1106_preview_fsfairx_rewards.jsonl", encoding="utf-8")
    ]
    swapped = [dict(r) for r in rows]
    swapped[10]["instruction"] = rows[11]["instruction"]
    p = tmp_path / "swapped.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in swapped))
    with pytest.raises(ValueError, match=rf"{p}:11: instruction differs from AlpacaEval prompt 10"):
        rc.load_reference_rewards(p)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    with pytest.raises(ValueError, match=r"no reward for 1 prompt\(s\), e.g. idx \[804\]"):
        rc.load_reference_rewards(p)


def test_reference_answers_scored_with_other_rm_are_cached_and_resumable(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="ts2.rewards")

    class LenScorer(FloatScorer):
        fingerprint = "len-scorer-v1"

        def score(self, instructions, responses, templated_prompts=None, *, desc=""):
            self.calls += len(responses)
            return np.array([len(x) + 0.001 * len(r) for x, r in zip(instructions, responses, strict=True)])

    outputs = json.loads((AE_DIR / "gpt4_1106_preview_model_outputs.json").read_text(encoding="utf-8"))
    s = LenScorer()
    got = rc.score_reference_rewards(s, [4, 1, 2], chunk=2)
    want = {i: len(outputs[i]["instruction"]) + 0.001 * len(outputs[i]["output"]) for i in (1, 2, 4)}
    assert {i: got[i] for i in (1, 2, 4)} == pytest.approx(want)
    assert np.isnan(got[0]) and s.calls == 3
    cache = tmp_path / "cache" / "rewards" / "len-scorer-v1.jsonl"
    assert len(cache.read_text().splitlines()) == 3
    # the one-off scoring says what it scores and where it is cached (issue #22: no silent build)
    assert caplog.messages == [
        f"reference answers: scoring 3 of 3 with the reward model len-scorer-v1 (0 in the cache), appended to "
        f"{cache} as they are done"
    ]
    with open(cache, "a") as fh:  # an interrupted append
        fh.write('{"key": 7, "dig')
    with pytest.warns(UserWarning, match="torn last line"):
        again = rc.score_reference_rewards(s, [1, 2, 4, 5])
    assert caplog.messages[-1].startswith(
        "reference answers: scoring 1 of 4 with the reward model len-scorer-v1 (3 in"
    )
    assert s.calls == 4 and again[5] == pytest.approx(
        len(outputs[5]["instruction"]) + 0.001 * len(outputs[5]["output"])
    )
    assert [json.loads(x)["key"] for x in cache.read_text().splitlines()] == [1, 2, 4, 5]
    with open(cache, "a") as fh:  # a complete row whose newline was lost
        fh.write('{"key": 9, "digest": "stale", "reward": 0.0}')
    rc.score_reference_rewards(s, [6])
    assert [json.loads(x)["key"] for x in cache.read_text().splitlines()] == [1, 2, 4, 5, 9, 6]
