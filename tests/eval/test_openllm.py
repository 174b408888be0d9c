"""OpenLLM scoring (official protocol): answer parsing, majority vote, any-correct — hand-computed cases."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from ts2.eval.openllm import majority, parse_answer, score
from ts2.evaluate import score_openllm


@pytest.mark.parametrize(
    ("text", "numeric", "expected"),
    [
        ("Let me think. The answer is: B.", False, "B"),
        ("the answer is (c)", False, "C"),
        ("The answer is: A ... wait, the answer is: D", False, "D"),  # the last one counts
        ("I am not sure.", False, None),
        ("So the answer is: $1,234.", True, "1234"),
        ("The answer is: 3.50", True, "3.5"),
        ("The answer is -7", True, "-7"),
        ("The answer is: seven", True, None),
    ],
)
def test_parse_answer(text, numeric, expected):
    assert parse_answer(text, numeric=numeric) == expected


def test_majority_breaks_ties_by_first_appearance():
    assert majority(["A", "B", "B", None]) == "B"
    assert majority(["A", "B"]) == "A"
    assert majority([None, None]) is None


def _say(x: str | None) -> str:
    return "hmm" if x is None else f"The answer is: {x}"


# gold, samples            @1 maj / any     @4 maj / any
# A: A B A -               yes / yes        A(2)  yes / yes
# C: B C B C               no  / no         tie B first: no / yes
# D: - - D E               no  / no         tie D first: yes / yes
QUESTIONS = [("A", ["A", "B", "A", None]), ("C", ["B", "C", "B", "C"]), ("D", [None, None, "D", "E"])]


def test_score_hand_computed():
    metrics, details = score([(g, [_say(x) for x in s]) for g, s in QUESTIONS], numeric=False)
    assert details["ns"] == [1, 4] and details["num_samples"] == 12
    assert metrics["majority@1"] == pytest.approx(100 / 3)
    assert metrics["any@1"] == pytest.approx(100 / 3)
    assert metrics["majority@4"] == pytest.approx(200 / 3)
    assert metrics["any@4"] == pytest.approx(100.0)
    assert metrics["parse_rate"] == pytest.approx(75.0)


def expected_questions(n: int) -> list[SimpleNamespace]:
    """Stands in for the benchmark's prompt builder: the prompt ids the scorer expects."""
    return [SimpleNamespace(prompt_id=i) for i in range(n)]


def test_gsm8k_numbers_compare_without_separators(tmp_path):
    rows = [
        {
            "prompt_id": 0,
            "sample_idx": i,
            "prompt": "p",
            "completion": c,
            "finish_reason": "stop",
            "num_tokens": 3,
            "reference": "2125",
        }
        for i, c in enumerate(["The answer is: 2,125", "The answer is: 2", "The answer is: 2125.0"])
    ]
    path = tmp_path / "openllm_gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = OmegaConf.create(
        {
            "limit": None,
            "eval": {
                "prompts": {"_target_": "tests.eval.test_openllm.expected_questions", "n": 1},
                "metrics": {"numeric": True, "ns": [1, 4]},
            },
        }
    )
    metrics, details = score_openllm(path, cfg)
    assert details["ns"] == [1, 3] and details["complete"]
    assert metrics["majority@1"] == 100.0 and metrics["majority@3"] == 100.0 and metrics["any@3"] == 100.0


def test_missing_questions_make_the_result_incomplete(tmp_path):
    rows = [
        {
            "prompt_id": 0,
            "sample_idx": 0,
            "prompt": "p",
            "completion": "The answer is: A",
            "finish_reason": "stop",
            "num_tokens": 3,
            "reference": "A",
        }
    ]
    path = tmp_path / "openllm_arc_challenge.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    cfg = OmegaConf.create(
        {
            "limit": None,
            "eval": {
                "prompts": {"_target_": "tests.eval.test_openllm.expected_questions", "n": 3},
                "metrics": {"numeric": False, "ns": [1]},
            },
        }
    )
    metrics, details = score_openllm(path, cfg)
    assert metrics["majority@1"] == 100.0 and not details["complete"] and "2 of 3" in details["note"]
