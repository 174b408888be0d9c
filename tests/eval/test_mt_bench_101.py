"""MT-Bench-101: prompts, judge prompts, aggregation (hand-computed and the poster's averages) and the whole
scorer against the loopback judge server of test_judge.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.eval.test_judge import JudgeServer
from ts2.eval.judge import JudgeConfigError
from ts2.eval.mt_bench_101 import TASKS, aggregate, judge_messages, load_rubrics, overall_from_tasks, score
from ts2.sampling.prompts import mt_bench_101
from ts2.sampling.store import Sample

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------- poster
def test_poster_averages_are_the_mean_of_the_13_tasks():
    pub = yaml.safe_load((REPO / "experiments/table1/paper_numbers.yaml").read_text())["mt_bench_101"]
    assert tuple(pub["tasks"]) == TASKS
    got = {m: overall_from_tasks(pub[m]) for m in ("ce", "gem", "ts2")}
    # PAPER.md §5: 5.9862 -> 5.99, 6.2392 -> 6.24, 6.6531 -> 6.65
    assert got["ce"] == pytest.approx(77.82 / 13) and got["gem"] == pytest.approx(81.11 / 13)
    assert got["ts2"] == pytest.approx(86.49 / 13)
    assert {m: round(v, 2) for m, v in got.items()} == pub["avg"] == {"ce": 5.99, "gem": 6.24, "ts2": 6.65}


def test_overall_needs_all_13_tasks():
    with pytest.raises(ValueError, match=r"missing \['PI'\]"):
        overall_from_tasks({t: 5.0 for t in TASKS[:-1]})


# ----------------------------------------------------------------------------------------------- aggregation
def test_aggregate_min_over_turns_mean_over_dialogues_mean_over_tasks():
    # CM: dialogue 1 turns (7, 4) -> 4, dialogue 2 (9) -> 9: task 6.5. SI: (3, 8, 5) -> 3. Other 11 tasks: 10.
    ratings = [("CM", 1, 7), ("CM", 1, 4), ("CM", 2, 9), ("SI", 3, 3), ("SI", 3, 8), ("SI", 3, 5)]
    ratings += [(t, 100 + i, 10) for i, t in enumerate(TASKS[2:])]
    agg = aggregate(ratings)
    assert agg["tasks"]["CM"] == 6.5 and agg["tasks"]["SI"] == 3.0
    assert agg["dialogues"][("CM", 1)] == 4 and agg["all_tasks"]
    assert agg["overall"] == pytest.approx((6.5 + 3 + 110) / 13)
    part = aggregate(ratings[:6])  # two tasks only: the mean over them, flagged
    assert part["overall"] == pytest.approx(4.75) and not part["all_tasks"]
    assert math.isnan(aggregate([])["overall"])
    with pytest.raises(ValueError, match="Unknown MT-Bench-101 task 'XX'"):
        aggregate([("XX", 1, 5)])
    with pytest.raises(ValueError, match="not an integer in 1..10"):
        aggregate([("CM", 1, 11)])


# ----------------------------------------------------------------------------------------------- prompts
def test_real_data_has_3615_judged_turns_of_4208():
    records = mt_bench_101()  # the shared data directory
    assert len(records) == 4208
    assert sum(r.fields["judged"] for r in records) == 3615
    first = {r.fields["task"] for r in records if r.fields["turn"] == 1 and not r.fields["judged"]}
    assert first == {"FR", "CR", "AR", "SA", "SC", "CM"}
    r = next(r for r in records if r.prompt_id == "1_3")  # dialogue 1 (GR), turn 3: golden history
    assert [m["role"] for m in r.messages] == ["user", "assistant"] * 2 + ["user"]
    assert r.messages[1]["content"] == r.fields["history"][0]["bot"]
    assert r.fields["reference"].startswith("Based on the updated information")


def test_judge_prompt_shows_reference_only_for_mr_and_gr():
    rub = load_rubrics()
    hist = [{"user": "What is 2+2?", "bot": "4."}]
    gr = judge_messages(rub, "GR", hist, "And times 3?", "It is 12.", "GOLDEN 12")
    cm = judge_messages(rub, "CM", hist, "What did I ask?", "You asked 2+2.", "GOLDEN CM")
    assert "GOLDEN 12" in gr[1]["content"] and "<reference solution" in gr[1]["content"]
    assert "GOLDEN CM" not in cm[1]["content"] and "<reference solution" not in cm[1]["content"]
    assert "General Reasoning" in gr[0]["content"] and "Context Memory" in cm[0]["content"]
    assert "User: What is 2+2?\n\nAssistant: 4." in gr[1]["content"] and "It is 12." in gr[1]["content"]
    assert "[[N]]" in gr[0]["content"]
    first = judge_messages(rub, "SI", [], "Do X", "Done", None)
    assert "(no earlier turns)" in first[1]["content"]


# ----------------------------------------------------------------------------------------------- scorer
# One dialogue per task (two for MR). Each turn's completion carries the rating the loopback judge returns;
# "ref" -> 9 only if the judge prompt shows the reference (MR/GR), else 2. First turns of skip-first tasks
# say score=1: were they judged, their dialogue's min would be 1.
#   task  ratings (first-turn of skip tasks in brackets)  dialogue min  task
#   CM  [1] 6 8 -> 6      SI 7 5 -> 5      AR [1] 9 -> 9     TS 4 6 -> 4      CC 8 -> 8
#   CR  [1] 7 3 -> 3      FR [2] 10 -> 10  SC [1] 6 -> 6     SA [1] 5 -> 5
#   MR  d1: ref(9) 7 -> 7, d2: 5 6 -> 5: task 6            GR ref(9) -> 9   IC 3 8 -> 3   PI 9 7 -> 7
# overall = (6+5+9+4+8+3+10+6+5+6+9+3+7)/13 = 81/13; 28 turns, 6 unjudged first turns: 22 judged.
SCRIPT = {
    "CM": [["1", "6", "8"]],
    "SI": [["7", "5"]],
    "AR": [["1", "9"]],
    "TS": [["4", "6"]],
    "CC": [["8"]],
    "CR": [["1", "7", "3"]],
    "FR": [["2", "10"]],
    "SC": [["1", "6"]],
    "SA": [["1", "5"]],
    "MR": [["ref", "7"], ["5", "6"]],
    "GR": [["ref"]],
    "IC": [["3", "8"]],
    "PI": [["9", "7"]],
}
EXPECTED_TASKS = {
    "CM": 6,
    "SI": 5,
    "AR": 9,
    "TS": 4,
    "CC": 8,
    "CR": 3,
    "FR": 10,
    "SC": 6,
    "SA": 5,
    "MR": 6,
    "GR": 9,
    "IC": 3,
    "PI": 7,
}


def _mark(s: str) -> str:
    return (
        "MARK{ref}" if s == "ref" else ("MARK{" + s + "}" if not s[0].isdigit() else "MARK{score=" + s + "}")
    )


def make_data(tmp_path: Path, script=SCRIPT) -> tuple[Path, dict[str, str]]:
    """A tiny mtbench101.jsonl (golden turns) and the model's answer per prompt_id."""
    data = tmp_path / "data"
    (data / "mt_bench_101").mkdir(parents=True)
    lines, answers, did = [], {}, 0
    for task, dialogues in script.items():
        for turns in dialogues:
            did += 1
            hist = [
                {"user": f"{task} question {t}", "bot": f"golden answer {did}.{t}"}
                for t in range(1, len(turns) + 1)
            ]
            lines.append(json.dumps({"task": task, "id": did, "history": hist}))
            for t, mark in enumerate(turns, 1):
                answers[f"{did}_{t}"] = f"My answer. {_mark(mark)}"
    (data / "mt_bench_101" / "mtbench101.jsonl").write_text("\n".join(lines) + "\n")
    return data, answers


def make_samples(data: Path, answers: dict[str, str]) -> list[Sample]:
    return [
        Sample(r.prompt_id, 0, "templated prompt", answers[r.prompt_id], "stop", 5, dict(r.fields))
        for r in mt_bench_101(data_dir=str(data))
    ]


def make_cfg(data: Path, tmp_path: Path, **judge) -> OmegaConf:
    base = OmegaConf.load(REPO / "conf/eval/mt_bench_101.yaml")
    cfg = OmegaConf.create({"limit": None, "metrics_dir": str(tmp_path / "metrics"), "eval": base})
    cfg.eval.prompts.data_dir = str(data)
    cfg.eval.metrics.judge.update(
        dict(
            model="judge-test",
            timeout_s=5.0,
            backoff_s=0.01,
            backoff_max_s=0.05,
            max_retries=2,
            concurrency=4,
            **judge,
        )
    )
    return cfg


@pytest.fixture
def server(monkeypatch):
    with JudgeServer(max_requests=300, max_seconds=60) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield srv


def test_scorer_end_to_end_with_the_loopback_judge(server, tmp_path):
    data, answers = make_data(tmp_path)
    samples = make_samples(data, answers)
    cfg = make_cfg(data, tmp_path)
    res = score(samples, cfg)
    assert res.complete and res.note is None
    assert res.details["tasks"] == EXPECTED_TASKS
    assert res.metrics["overall"] == pytest.approx(81 / 13)
    assert res.details["judged_turns"] == 22 and res.num_prompts == 22 and res.num_samples == 28
    assert res.details["unparsed"] == 0 and res.details["failed"] == 0
    assert server.total == 22  # exactly the judged turns; unjudged first turns never reach the judge
    assert res.details["judge_stats"]["http_calls"] == 22
    # the cache (default <metrics_dir>/.cache/judge/) makes a rerun free
    assert (tmp_path / "metrics/.cache/judge/mt_bench_101.jsonl").is_file()
    again = score(samples, cfg)
    assert server.total == 22 and again.metrics == res.metrics
    assert (
        again.details["judge_stats"]["http_calls"] == 0 and again.details["judge_stats"]["cache_hits"] == 22
    )


def test_unparsed_and_failing_turns_are_reported(server, tmp_path):
    script = dict(SCRIPT, IC=[["3", "malformed"]], PI=[["9", "always-500"]])
    data, answers = make_data(tmp_path, script)
    res = score(make_samples(data, answers), make_cfg(data, tmp_path, parse_retries=1))
    assert res.details["unparsed"] == 1 and res.details["unparsed_ids"] == ["13_2"]
    assert res.details["failed"] == 1 and res.details["failed_ids"] == ["14_2"]
    assert (
        server.hits["malformed"] == 2 and server.hits["always-500"] == 3
    )  # 1 + parse_retries; 1 + max_retries
    # IC keeps its parsed turn (3); PI's only dialogue has a failed turn: no PI score, result incomplete
    assert res.details["tasks"]["IC"] == 3 and "PI" not in res.metrics
    assert not res.complete and "INCOMPLETE" in res.note and "judge failed on 1 turns" in res.note
    assert res.metrics["overall"] == pytest.approx((81 - 7) / 12)


def test_missing_samples_make_the_result_incomplete(server, tmp_path):
    data, answers = make_data(tmp_path)
    samples = [s for s in make_samples(data, answers) if s.prompt_id != "1_3"]  # CM's last judged turn
    res = score(samples, make_cfg(data, tmp_path))
    assert not res.complete and res.details["missing"] == 1 and "CM" not in res.details["tasks"]
    assert "1 judged turns have no sample" in res.note


def test_scorer_errors_are_clear(tmp_path, monkeypatch):
    data, answers = make_data(tmp_path)
    samples = make_samples(data, answers)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeConfigError, match="set OPENAI_BASE_URL and OPENAI_API_KEY"):
        score(samples, make_cfg(data, tmp_path))
    bad = [Sample(s.prompt_id, 0, "p", "c", "stop", 1, {**s.fields, "task": "ZZ"}) for s in samples[:1]]
    with pytest.raises(ValueError, match="unknown task 'ZZ'"):
        score(bad, make_cfg(data, tmp_path))
    bare = [Sample(s.prompt_id, 0, "p", "c", "stop", 1, {}) for s in samples[:1]]
    with pytest.raises(ValueError, match="missing field"):
        score(bare, make_cfg(data, tmp_path))
    cfg = make_cfg(data, tmp_path)
    cfg.eval.prompts.data_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        score(samples, cfg)
    cfg = make_cfg(data, tmp_path)
    cfg.eval.metrics.rubrics = str(tmp_path / "none.yaml")
    with pytest.raises(FileNotFoundError, match="rubric file"):
        score(samples, cfg)


def test_sample_then_evaluate_writes_the_metrics_file(compose, server, tmp_path):
    """`ts2.sample` (tiny model, 4 new tokens) then `ts2.evaluate` against the loopback judge: the metrics
    file agrees with an aggregation done here from the sample file and the judge's rule."""
    from tests.eval.test_judge import length_rating
    from ts2.evaluate import evaluate_bench
    from ts2.sample import run
    from ts2.sampling import read_samples

    data, _ = make_data(tmp_path)
    common = [f"eval.prompts.data_dir={data}"]
    samples_dir = tmp_path / "samples"
    [path] = run(
        [
            compose(
                [
                    "sampler.torch_threads=1",
                    "eval=mt_bench_101",
                    "model=tiny",
                    "sample.max_new_tokens=4",
                    f"out_dir={samples_dir}",
                    *common,
                ],
                config_name="sample",
            )
        ]
    )
    judge = [
        "eval.metrics.judge.model=judge-test",
        "eval.metrics.judge.timeout_s=5",
        "eval.metrics.judge.concurrency=2",
    ]
    cfg = compose(
        [
            "eval=mt_bench_101",
            f"samples_dir={samples_dir}",
            f"metrics_dir={tmp_path / 'metrics'}",
            *common,
            *judge,
        ],
        config_name="evaluate",
    )
    out = json.loads(evaluate_bench(cfg).read_text())

    dialogue: dict = {}
    for s in read_samples(path):
        if s["judged"]:
            key = (s["task"], s["dialogue_id"])
            dialogue[key] = min(length_rating(s.completion), dialogue.get(key, 10))
    tasks = {t: [v for (tk, _), v in dialogue.items() if tk == t] for t in TASKS}
    expected = {t: sum(v) / len(v) for t, v in tasks.items()}
    assert out["complete"] is True and out["details"]["tasks"] == pytest.approx(expected)
    assert out["metrics"]["overall"] == pytest.approx(sum(expected.values()) / 13)
    assert out["details"]["judged_turns"] == 22 and out["details"]["unparsed"] == 0
    assert server.total == 22
