"""Reference-LM quality score (ts2.eval.ref_lm) on the 2-layer SmolLM2 copy (real weights of its first layers):
the batched, chunked score equals a plain ``model(...)`` log-softmax computed by hand, per prompt and through
``ts2.evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ts2.eval.ref_lm import answer_logprobs, encode_pairs, score
from ts2.sampling.store import Sample

INSTRUCTIONS = [
    "Write a short poem about the sea.",
    "Explain in one sentence why the sky is blue, and keep it simple for a child of seven years.",
    "Name a colour.",
]
ANSWERS = [
    "The sea is wide and deep and blue,\nit sings a song both old and new.",
    "Sunlight scatters off the air, and blue light scatters the most.",
    "",
]


@pytest.fixture(scope="module")
def smol(smollm2_2layer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(smollm2_2layer, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(smollm2_2layer)


def by_hand(model, tok, instruction: str, answer: str, end: bool) -> float:
    """One unpadded forward of the whole templated text; mean log-softmax of the answer (+ <|im_end|>) tokens."""
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    ctx = tok(prompt, add_special_tokens=False)["input_ids"]
    ans = tok(answer, add_special_tokens=False)["input_ids"] + (
        [tok.convert_tokens_to_ids("<|im_end|>")] if end else []
    )
    with torch.no_grad():
        logp = model(torch.tensor([ctx + ans])).logits[0].log_softmax(-1)
    return float(np.mean([logp[len(ctx) + j - 1, t].item() for j, t in enumerate(ans)]))


def test_score_equals_a_plain_forward_by_hand(smol):
    model, tok = smol
    ended = [False, True, True]  # the empty answer is scored by p(<|im_end|> | context)
    means, counts = answer_logprobs(
        model, tok, INSTRUCTIONS, ANSWERS, ended=ended, batch_size=2, chunk_size=5, progress=False
    )
    for i, (x, a, e) in enumerate(zip(INSTRUCTIONS, ANSWERS, ended, strict=True)):
        assert means[i] == pytest.approx(by_hand(model, tok, x, a, e), abs=1e-5)
    assert counts.tolist() == [len(tok(a)["input_ids"]) + e for a, e in zip(ANSWERS, ended, strict=True)]
    assert counts[2] == 1 and means[2] < 0
    nan, zero = answer_logprobs(model, tok, ["Hi"], [""], progress=False)  # nothing to score
    assert np.isnan(nan[0]) and zero[0] == 0


def test_short_context_and_answer_cap(smol):
    model, tok = smol
    [(ctx, ans)] = encode_pairs(
        tok, INSTRUCTIONS[1:2], ANSWERS[1:2], context_tokens=5, answer_tokens=4, ended=True
    )
    full = tok(INSTRUCTIONS[1], add_special_tokens=False)["input_ids"]
    post = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert (
        ctx[-len(post) - 5 :] == full[-5:] + post
    )  # the instruction's last 5 tokens, then the template's tail
    assert ctx[:3] == tok("<|im_start|>system\n", add_special_tokens=False)["input_ids"]
    assert ans == tok(ANSWERS[1], add_special_tokens=False)["input_ids"][:4]  # capped: no end-of-turn token
    with pytest.raises(ValueError, match="must be >= 1"):
        encode_pairs(tok, ["x"], ["y"], context_tokens=0)


def test_full_model_ranks_a_sentence_above_shuffled_words_above_random_tokens(smollm2_full):
    """The meaningful check needs the full 30-layer model (the 2-layer copy scores even fluent text below the
    uniform distribution's -10.8 nats). Measured: -2.6, -7.7 and -14.6 nats per token."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_full, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_full)
    sentence = "The cat sat on the mat and looked out of the window at the rain."
    words = sentence.split()
    random.Random(0).shuffle(words)
    n = len(tok(sentence)["input_ids"])
    noise = tok.decode(np.random.default_rng(0).integers(100, 49000, size=n).tolist())
    means, _ = answer_logprobs(
        model, tok, ["Describe a cat."] * 3, [sentence, " ".join(words), noise], progress=False
    )
    assert means[0] > -4 and means[0] > means[1] + 2 and means[1] > means[2] + 2  # nats per token


def _samples():
    rows = [(0, 0, ANSWERS[0], "stop"), (0, 1, ANSWERS[1], "length"), (1, 0, ANSWERS[2], "stop")]
    return [
        Sample(pid, j, "templated", a, fr, 3, {"instruction": INSTRUCTIONS[pid], "dataset": "x"}, line=k + 1)
        for k, (pid, j, a, fr) in enumerate(rows)
    ]


def test_scorer_per_prompt_means_and_evaluate_end_to_end(smol, smollm2_2layer, compose, tmp_path):
    from ts2.evaluate import evaluate_bench

    model, tok = smol
    samples = _samples()
    cfg = compose(
        ["eval=ref_lm", f"eval.metrics.ref_model_path={smollm2_2layer}", "eval.metrics.answer_tokens=64",
         "eval.metrics.context_tokens=256", f"samples_dir={tmp_path}", f"metrics_dir={tmp_path}/m", "limit=2"],
        config_name="evaluate",
    )  # fmt: skip
    res = score(samples, cfg)
    p0 = [
        by_hand(model, tok, INSTRUCTIONS[0], ANSWERS[0], True),
        by_hand(model, tok, INSTRUCTIONS[0], ANSWERS[1], False),
    ]
    p1 = by_hand(model, tok, INSTRUCTIONS[1], ANSWERS[2], True)
    assert res.prompt_ids == [0, 1]
    assert res.per_prompt["ref_lm"] == pytest.approx([np.mean(p0), p1], abs=1e-5)
    assert res.metrics["ref_lm"] == pytest.approx((np.mean(p0) + p1) / 2, abs=1e-5)
    lo, hi = res.ci["ref_lm"]
    assert lo <= res.metrics["ref_lm"] <= hi
    assert res.details["reference_lm"]["model"] == "smollm2_135m"
    assert "not the original bf16 release" in res.details["reference_lm"]["weights"]
    # ts2.evaluate reads the AlpacaEval sample file (eval.samples) and writes metrics/ref_lm.json
    with open(tmp_path / "alpaca_eval.jsonl", "w") as fh:
        for s in samples:
            fh.write(json.dumps(s.to_dict()) + "\n")
    out = json.loads(evaluate_bench(cfg).read_text())
    assert out["benchmark"] == "ref_lm" and out["metrics"]["ref_lm"] == pytest.approx(res.metrics["ref_lm"])
    bad = [Sample(0, 0, "t", "a", "stop", 1, {"dataset": "x"}, line=7)]
    with pytest.raises(ValueError, match="line 7.*instruction_field"):
        score(bad, cfg)


def test_samples_per_prompt_scores_the_first_k_samples_only(smol, smollm2_2layer, compose, tmp_path):
    """The budget knob (pipeline.ref_lm.samples_per_prompt): prompt 0 is scored on its sample 0 alone, by hand."""
    model, tok = smol
    overrides = [f"eval.metrics.ref_model_path={smollm2_2layer}", "eval.metrics.answer_tokens=64",
                 "eval.metrics.context_tokens=256", f"samples_dir={tmp_path}", "limit=2"]  # fmt: skip
    cfg = compose(["eval=ref_lm", *overrides, "eval.metrics.samples_per_prompt=1"], config_name="evaluate")
    res = score(_samples(), cfg)
    assert res.num_samples == 2 and res.details["settings"]["samples_per_prompt"] == 1
    assert res.per_prompt["ref_lm"] == pytest.approx(
        [
            by_hand(model, tok, INSTRUCTIONS[0], ANSWERS[0], True),
            by_hand(model, tok, INSTRUCTIONS[1], ANSWERS[2], True),
        ],
        abs=1e-5,
    )
    bad = compose(["eval=ref_lm", *overrides, "eval.metrics.samples_per_prompt=0"], config_name="evaluate")
    with pytest.raises(ValueError, match=r"eval.metrics.samples_per_prompt=0 must be a number >= 1"):
        score(_samples(), bad)
