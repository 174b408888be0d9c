"""OpenLLM scoring (official protocol): both parsers, majority vote, any-correct — hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ts2.eval.openllm import (
    gold_answer,
    gold_number_paper,
    majority,
    parse_answer,
    score,
    score_questions,
)
from ts2.sampling.store import Sample

REPO = Path(__file__).resolve().parents[2]
GOOD = "The answer is: C. This is a good choice."


@pytest.mark.parametrize(
    ("text", "numeric", "expected"),
    [
        ("Let me think. The answer is: B.", False, "B"),
        ("the answer is (c)", False, "C"),
        ("The answer is: A ... wait, the answer is: D", False, "D"),  # the last one counts
        ("I am not sure.", False, None),
        (GOOD, False, "C"),  # strict: only "The answer is: X" counts
        ("C. This is a good choice.", False, None),
        ("So the answer is: $1,234.", True, "1234"),
        ("The answer is: 3.50", True, "3.5"),
        ("The answer is -7", True, "-7"),
        ("The answer is: seven", True, None),
        ("The answer is: **18**", True, None),
        ("the answer is 1,234,567", True, "1234567"),
    ],
)
def test_strict_parser(text, numeric, expected):
    assert parse_answer(text, numeric=numeric, parser="strict") == expected


CHOICES = ["London", "Paris", "Rome"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "C" is found first, but the article "a" of "a good choice" is a later standalone letter (case-
        # insensitive, followed by a space): the official last-hit rule reads A.
        (GOOD, "A"),
        ("C. This is a good choice.", "A"),
        ("The answer is: B", "B"),  # the "answer is" form may end the text
        ("So it is B", None),  # a bare letter must be followed by space . ) : , or $ -- not the end
        ("I pick (B) here", "B"),
        ("The answer is: **B**", None),  # "*" follows the letter: neither form matches ...
        ("The answer is: **Paris**", "B"),  # ... and then the choice text decides
        ("Maybe D, or rather the answer is E.", "E"),
        ("I'd say B. e.g. the capital", "E"),  # "e." is a standalone letter too
        ("I think it is paris or rome", "B"),  # no letter: the first choice (in choice order) found
        ("No idea.", None),
    ],
)
def test_paper_parser_multiple_choice(text, expected):
    assert parse_answer(text, numeric=False, parser="paper", choices=CHOICES) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is: **18**", "18"),
        ("Step 1: 3+4=7. the answer is 7 apples", "7"),
        ("The answer is 1,234,567", "1234"),  # one separator only, then commas dropped
        ("The answer is $18.00", "18.00"),  # a string: != gold "18"
        ("The answer is: 5. Wait, the answer is 6", "6"),  # the text after the LAST "The answer is"
        ("THE ANSWER IS 5", None),  # only "The answer is" / "the answer is"
        ("So we get 42.", None),
        ("The answer is 1/2", "1/2"),
    ],
)
def test_paper_parser_gsm8k(text, expected):
    assert parse_answer(text, numeric=True, parser="paper") == expected


def test_gsm8k_gold_comma_quirk():
    assert gold_number_paper("2,125") == "2" and gold_number_paper("-3.5") == "-3.5"
    assert gold_answer("2125", numeric=True, parser="paper", reference_raw="2,125") == "2"
    assert gold_answer("2125", numeric=True, parser="strict", reference_raw="2,125") == "2125"


def test_unknown_parser():
    with pytest.raises(ValueError, match="expected one of"):
        parse_answer("x", numeric=False, parser="lenient")


def test_majority_breaks_ties_by_first_appearance():
    assert majority(["A", "B", "B", None]) == "B"
    assert majority(["A", "B"]) == "A"
    assert majority([None, None]) is None


# gold, answers            @1 maj / any     @4 maj / any
# A: A B A -               yes / yes        A(2)  yes / yes
# C: B C B C               no  / no         tie B first: no / yes
# D: - - D E               no  / no         tie D first: yes / yes
QUESTIONS = [("A", ["A", "B", "A", None]), ("C", ["B", "C", "B", "C"]), ("D", [None, None, "D", "E"])]


def test_score_questions_hand_computed():
    metrics, details, per = score_questions(QUESTIONS)
    assert details["ns"] == [1, 4] and details["num_samples"] == 12
    assert metrics["majority@1"] == pytest.approx(100 / 3)
    assert metrics["any@1"] == pytest.approx(100 / 3)
    assert metrics["majority@4"] == pytest.approx(200 / 3)
    assert metrics["any@4"] == pytest.approx(100.0)
    assert metrics["parse_rate"] == pytest.approx(75.0)
    assert per["majority@4"] == [100.0, 0.0, 100.0]


def _cfg(bench: str, **metrics) -> OmegaConf:
    """The benchmark's composed eval config (conf/eval/openllm/_base.yaml + the task file), metrics overridden."""
    from hydra import compose, initialize_config_dir

    from ts2.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        composed = compose("evaluate", overrides=[f"eval={bench}"])
    cfg = OmegaConf.create({"eval": OmegaConf.to_container(composed.eval)})
    cfg.eval.metrics.update(metrics)
    return cfg


def _samples(fields: dict, completions: list[str], pid=0) -> list[Sample]:
    return [Sample(pid, i, "p", c, "stop", 3, dict(fields)) for i, c in enumerate(completions)]


def test_gsm8k_scorer_both_parsers():
    # gold 2,125 (raw). paper: gold "2"; "2,125" -> "2125" (wrong), "2" (right), "**2125**" -> "2125" (wrong).
    # strict: gold 2125; "2,125" right, "2" wrong, "**2125**" unparsed, "2125.0" right.
    comps = ["The answer is: 2,125", "The answer is: 2", "The answer is: **2125**", "The answer is: 2125.0"]
    samples = _samples({"reference": "2125", "reference_raw": "2,125"}, comps)
    assert _cfg("openllm_gsm8k").eval.metrics.parser == "paper"  # the paper-compatible default
    paper = score(samples, _cfg("openllm_gsm8k", ns=[1, 2]))
    assert paper.metrics["majority@1"] == 0.0 and paper.metrics["any@2"] == 100.0
    # @4 paper answers: 2125, 2, 2125, 2125.0 -> majority 2125 (wrong); any: yes
    assert paper.metrics["majority@4"] == 0.0 and paper.metrics["any@4"] == 100.0
    assert paper.metrics["parse_rate"] == 100.0 and paper.complete and paper.details["parser"] == "paper"
    strict = score(samples, _cfg("openllm_gsm8k", ns=[1, 2], parser="strict"))
    assert strict.metrics["majority@1"] == 100.0 and strict.metrics["majority@4"] == 100.0
    assert strict.metrics["parse_rate"] == 75.0
    assert strict.prompt_ids == [0] and strict.per_prompt["majority@1"] == [100.0]


def test_mc_scorer_both_parsers_and_incomplete_groups():
    fields = {"reference": "C", "choices": ["x", "y", "z"]}
    samples = _samples(fields, [GOOD, GOOD]) + _samples(fields, ["The answer is: C"], pid=1)
    paper = score(samples, _cfg("openllm_arc_challenge"))
    strict = score(samples, _cfg("openllm_arc_challenge", parser="strict"))
    # question 0: paper reads A twice (wrong), strict C; question 1: C under both
    assert paper.metrics["majority@1"] == 50.0 and strict.metrics["majority@1"] == 100.0
    assert not paper.complete and "1..2 samples" in paper.note  # unequal sample counts: n capped at 1
    with pytest.raises(ValueError, match="no 'reference'"):
        score(_samples({"choices": []}, ["x"]), _cfg("openllm_arc_challenge"))
    with pytest.raises(ValueError, match="reference_raw"):
        score(_samples({"reference": "3"}, ["x"]), _cfg("openllm_gsm8k"))
    with pytest.raises(ValueError, match="parser='loose'"):
        score(samples, _cfg("openllm_arc_challenge", parser="loose"))
