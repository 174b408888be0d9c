"""Tests for `ts2.evaluate`: coverage against the prompt builder, dispatch to the benchmark's scorer and the
metrics file (today's keys plus ci, per_prompt, prompt_ids), and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ts2 import evaluate as ev
from ts2.sampling.store import Sample, SampleFileError


def builder(ids):
    """Stands in for a benchmark's prompt builder."""
    return [SimpleNamespace(prompt_id=i) for i in ids]


def _cfg(ids, limit=None):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "limit": limit,
            "eval": {"id": "b", "prompts": {"_target_": "tests.test_evaluate.builder", "ids": ids}},
        }
    )


def test_coverage_keeps_expected_prompts_and_says_what_is_missing():
    samples = [Sample(pid, 0, "p", "c") for pid in (0, "1", 7)]  # "1" written as a string still matches 1
    kept, info = ev.coverage(samples, _cfg([0, 1, 2, 3, 7], limit=3))
    assert [s.prompt_id for s in kept] == [0, "1"]
    assert info == {
        "complete": False,
        "expected_prompts": 3,
        "note": "INCOMPLETE: 1 of 3 expected prompts have no samples (e.g. [2])",
        "ignored_prompts": 1,  # prompt 7 is past the limit
    }
    kept, info = ev.coverage(samples[:2], _cfg([0, 1]))
    assert len(kept) == 2 and info == {"complete": True, "expected_prompts": 2}
    with pytest.raises(SampleFileError, match=r"f.jsonl:9: prompt_id 'zzz' is not a prompt of eval=b"):
        ev.coverage(
            [*samples, Sample("zzz", 0, "p", "c", line=9)], _cfg([0, 1, 2, 3, 7], limit=3), Path("f.jsonl")
        )


POEMS = [["a red rose", "a blue sky", "green grass grows"], ["the sea", "the wide sea", "waves"]]


def _write(path, groups):
    rows = [
        {
            "prompt_id": p,
            "sample_idx": j,
            "prompt": f"<p{p}>",
            "completion": c,
            "finish_reason": "stop",
            "num_tokens": 2,
            "instruction": "x",
        }
        for p, g in enumerate(groups)
        for j, c in enumerate(g)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_evaluate_bench_writes_the_metrics_file(compose, tmp_path):
    from ts2.eval.diversity import DiversityConfig, diversity_report

    (tmp_path / "samples").mkdir()
    _write(tmp_path / "samples" / "creative_poem.jsonl", POEMS)
    cfg = compose(
        [
            f"run_dir={tmp_path}",
            "eval=creative_poem",
            "eval.sample.limit=3",
            "diversity.embedding_cache=false",
            "diversity.text=templated",  # prompt + completion as sent (the paper mode needs the run's tokenizer)
        ],
        config_name="evaluate",
    )
    dest = ev.evaluate_bench(cfg)
    out = json.loads(dest.read_text())
    assert dest == tmp_path / "metrics" / "creative_poem.json"
    want = diversity_report([[f"<p{p}>" + c for c in g] for p, g in enumerate(POEMS)], DiversityConfig())
    assert {k: out["metrics"][k] for k in want} == pytest.approx(want, abs=1e-9)
    lengths = {"answer_tokens", "answer_words", "ended_by_eos"}  # the answers' lengths (issue #19 item 1)
    assert set(out["metrics"]) == set(want) | lengths
    assert set(out["ci"]) == set(want) | lengths and out["prompt_ids"] == [0, 1]
    assert all(len(v) == 2 for v in out["per_prompt"].values())
    assert (out["num_prompts"], out["num_samples"], out["limit"]) == (2, 6, 3)
    assert out["complete"] is False and "1 of 3 expected prompts" in out["note"]  # prompt 2 has no samples
    assert out["details"]["expected_prompts"] == 3 and out["details"]["complete"] is False
    for key in (
        "benchmark",
        "scale",
        "samples_file",
        "sampling",
        "config",
        "versions",
        "git_sha",
        "evaluated_at",
    ):
        assert key in out


def test_refusals(compose, tmp_path):
    cfg = compose([f"run_dir={tmp_path}", "eval=creative_poem"], config_name="evaluate")
    with pytest.raises(FileNotFoundError, match="python -m ts2.sample"):
        ev.evaluate_bench(cfg)
    (tmp_path / "samples").mkdir()
    path = tmp_path / "samples" / "creative_poem.jsonl"
    path.write_text("")
    with pytest.raises(SampleFileError, match=rf"{path}: no samples"):
        ev.evaluate_bench(cfg)
    _write(path, POEMS)
    (tmp_path / "samples" / "creative_poem.meta.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(ValueError, match="allow_incomplete=true"):
        ev.evaluate_bench(cfg)
    assert not (tmp_path / "metrics").exists()  # nothing written by a refused run
