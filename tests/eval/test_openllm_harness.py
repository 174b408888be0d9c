"""OpenLLM harness protocol: local lm-eval task files, a real lm-eval run on the tiny model, metrics file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ts2.eval.openllm_harness import HARNESS_TASKS, render_tasks, summarize
from ts2.paths import data_dir

SUBJECTS = ["abstract_algebra", "virology"]


def test_rendered_task_files_point_at_the_data(tmp_path):
    out = render_tasks(data_dir(), tmp_path, list(HARNESS_TASKS), SUBJECTS)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "utils.py",
            "ts2_arc_challenge.yaml",
            "ts2_hellaswag.yaml",
            "ts2_mmlu.yaml",
            "ts2_truthfulqa_mc2.yaml",
            "ts2_winogrande.yaml",
            "ts2_gsm8k.yaml",
            "truthfulqa_mc.jsonl",
        ]
        + [f"ts2_mmlu_{s}.yaml" for s in SUBJECTS]
    )
    for p in out.glob("*.yaml"):
        assert "@" not in p.read_text().replace("@function", ""), p  # every placeholder filled
    arc = (out / "ts2_arc_challenge.yaml").read_text()
    assert f"{data_dir()}/openllm/arc_challenge/ARC-Challenge-Test.jsonl" in arc and "num_fewshot: 25" in arc
    assert json.loads((out / "ts2_mmlu.yaml").read_text())["task"] == [f"ts2_mmlu_{s}" for s in SUBJECTS]
    rows = [json.loads(x) for x in (out / "truthfulqa_mc.jsonl").read_text().splitlines()]
    assert len(rows) == 817
    assert rows[0]["question"].startswith("What is the smallest country in the world")
    assert rows[0]["mc2_targets"]["labels"] == [1, 0, 0, 0] and rows[0]["mc1_targets"]["labels"][0] == 1


def test_bad_task_names_subjects_and_data_dirs(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['arc'\]"):
        render_tasks(data_dir(), tmp_path, ["arc"])
    with pytest.raises(ValueError, match=r"unknown subject\(s\) \['astrology'\]"):
        render_tasks(data_dir(), tmp_path, ["mmlu"], ["astrology"])
    with pytest.raises(FileNotFoundError, match="TS2_DATA_DIR"):
        render_tasks(tmp_path / "nowhere", tmp_path, ["gsm8k"])
    (tmp_path / "d" / "openllm" / "gsm8k").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="gsm8k/train.jsonl does not exist"):
        render_tasks(tmp_path / "d", tmp_path, ["gsm8k"])


def test_summarize_uses_the_leaderboard_metric_of_each_task():
    res = {
        "ts2_arc_challenge": {"acc,none": 0.1, "acc_norm,none": 0.5, "acc_norm_stderr,none": 0.01},
        "ts2_hellaswag": {"acc_norm,none": 0.25, "acc_norm_stderr,none": "N/A"},
        "ts2_mmlu": {"acc,none": 0.4},
        "ts2_truthfulqa_mc2": {"acc,none": 0.35},
        "ts2_winogrande": {"acc,none": 0.6},
        "ts2_gsm8k": {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.9},
    }
    metrics, ci = summarize({"results": res}, list(HARNESS_TASKS))
    assert metrics["arc_challenge"] == 50.0 and metrics["gsm8k"] == pytest.approx(10.0)
    assert metrics["average"] == pytest.approx((50 + 25 + 40 + 35 + 60 + 10) / 6)
    assert ci == {"arc_challenge": pytest.approx((48.04, 51.96))}
    partial, _ = summarize({"results": res}, ["arc_challenge"])
    assert "average" not in partial
    with pytest.raises(KeyError, match="exact_match,strict-match"):
        summarize({"results": {"ts2_gsm8k": {"acc,none": 1.0}}}, ["gsm8k"])


def _mc2_reference(model_path: str, docs: list[dict]) -> float:
    """mc2 of ``docs`` computed here with transformers alone: Σ_true p / Σ p, p = exp(sum of continuation
    log-probs of " " + answer after the QA-primer prompt), true = answers before the first false one."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.spec_from_file_location(
        "h_utils", Path(__file__).parents[2] / "evaluation/openllm/harness/utils.py"
    )
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    values = []
    for doc in docs:
        ctx = utils.truthfulqa_text(doc)
        lls = []
        for answer in doc["mc2_targets"]["choices"]:
            whole = tok(ctx + " " + answer, add_special_tokens=False).input_ids
            n_ctx = len(tok(ctx, add_special_tokens=False).input_ids)
            with torch.no_grad():
                logp = model(torch.tensor([whole[:-1]])).logits.log_softmax(-1)[0]
            lls.append(sum(logp[i - 1, whole[i]].item() for i in range(n_ctx, len(whole))))
        split = doc["mc2_targets"]["labels"].index(0)
        p = [math.exp(x) for x in lls]
        values.append(sum(p[:split]) / sum(p))
    return sum(values) / len(values)


def test_harness_runs_on_the_tiny_model_and_writes_metrics(compose, tmp_path, monkeypatch):
    """Real lm-eval (hf backend, CPU) on the random-init tiny model, 2 documents per task, through
    ``ts2.evaluate``; TruthfulQA mc2 is checked against a direct transformers computation. No
    ``eval.harness.device``: the default must pick what the machine has, as the README's command does."""
    from ts2.evaluate import evaluate_bench
    from ts2.models import resolve_model_path

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model_path = resolve_model_path({"tiny": {}})
    metrics_dir = tmp_path / "metrics"
    cfg = compose(
        [
            "eval=openllm_harness",
            "limit=2",
            f"metrics_dir={metrics_dir}",
            f"eval.harness.model_path={model_path}",
            "eval.harness.dtype=float32",
            f"eval.harness.mmlu_subjects=[{','.join(SUBJECTS)}]",
            "+eval.harness.gen_kwargs.max_gen_toks=16",
        ],
        config_name="evaluate",
    )
    dest = evaluate_bench(cfg)
    out = json.loads(dest.read_text())
    assert dest == metrics_dir / "openllm_harness.json"
    assert set(out["metrics"]) == set(HARNESS_TASKS) | {"average"}
    assert all(0.0 <= v <= 100.0 for v in out["metrics"].values())
    assert out["complete"] is False and "limit=2" in out["note"] and "2 of 57 subjects" in out["note"]
    tasks = out["details"]["tasks"]
    assert {t: v["num_fewshot"] for t, v in tasks.items()} == {
        "arc_challenge": 25,
        "hellaswag": 10,
        "mmlu": 5,
        "truthfulqa": 0,
        "winogrande": 5,
        "gsm8k": 5,
    }
    assert tasks["mmlu"]["documents"] == 4 and tasks["gsm8k"]["documents"] == 2
    # 2 documents per task: accuracies are multiples of 50 (MMLU: of 25, the mean of two subjects)
    for t in ("arc_challenge", "hellaswag", "winogrande", "gsm8k"):
        assert out["metrics"][t] in (0.0, 50.0, 100.0)
    rows = [
        json.loads(x)
        for x in (metrics_dir / ".cache/openllm_harness/tasks/truthfulqa_mc.jsonl").read_text().splitlines()
    ]
    assert out["metrics"]["truthfulqa"] == pytest.approx(100 * _mc2_reference(model_path, rows[:2]), rel=1e-4)
