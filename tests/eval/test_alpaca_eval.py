"""Tests for `ts2.eval.alpaca_eval`: best-of-n end to end on a hand example (cache, rescoring, missing samples), the
real tiny RM, and the benchmark scorer's ScoreResult (win rates, diversity, CIs, per-prompt values)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

import ts2.eval.alpaca_eval as ae
from tests.eval._alpaca import (
    AE_DIR,
    DIVERSITY,
    EXPECTED,
    INSTR,
    REF,
    REWARDS,
    FloatScorer,
    sig,
    templated,
    write_samples,
)
from ts2.eval.alpaca_data import FSFAIRX_REF_REWARDS_FILE
from ts2.sampling.store import read_samples


def test_evaluate_end_to_end_with_hand_example(tmp_path):
    path = write_samples(
        tmp_path / "run" / "samples" / "alpaca_eval.jsonl", {i: [str(x) for x in REWARDS[i]] for i in REWARDS}
    )
    scorer = FloatScorer()
    res = ae.evaluate_alpaca_eval(
        path, rm=scorer, ref_rewards=REF, n_max=4, prompt_ids=[0, 1, 2], n_bootstrap=200
    )
    assert res["win_rate"] == pytest.approx(EXPECTED, abs=1e-12)
    assert set(res["ci95"]) == {1, 2, 4}
    assert res["num_prompts"] == 3 and res["num_samples"] == 12
    assert res["complete"] is True and res["missing"] == []
    assert scorer.calls == 12
    cache = tmp_path / "run" / "scores" / "alpaca_eval_rewards-float-scorer-v1.jsonl"
    assert res["scores_path"] == str(cache) and len(cache.read_text().splitlines()) == 12
    again = ae.evaluate_alpaca_eval(
        path, rm=scorer, ref_rewards=REF, n_max=4, prompt_ids=[0, 1, 2], n_bootstrap=200
    )
    assert scorer.calls == 12 and again["win_rate"] == res["win_rate"]  # all rewards came from the cache
    # the default expects all 805 prompts: the same file is then incomplete and says so
    part = ae.evaluate_alpaca_eval(path, rm=scorer, ref_rewards=REF, n_max=4, n_bootstrap=50)
    assert part["complete"] is False and "802 of 805" in part["missing"][0]
    assert part["win_rate"] == pytest.approx(EXPECTED, abs=1e-12)


def test_edited_samples_are_rescored(tmp_path):
    path = write_samples(tmp_path / "samples" / "alpaca_eval.jsonl", {0: ["1.0", "2.0"]})
    scorer = FloatScorer()
    ae.evaluate_alpaca_eval(path, rm=scorer, ref_rewards={0: 0.0}, n_max=2, prompt_ids=[0], n_bootstrap=10)
    write_samples(path, {0: ["1.0", "5.0"]})
    res = ae.evaluate_alpaca_eval(
        path, rm=scorer, ref_rewards={0: 0.0}, n_max=2, prompt_ids=[0], n_bootstrap=10
    )
    assert scorer.calls == 3
    assert res["win_rate"][2] == pytest.approx(100 * sig(5.0))


def test_fewer_than_n_samples_limits_n_and_flags_incomplete(tmp_path):
    table = {0: ["1", "2", "3", "4"], 1: ["0", "1"], 2: ["5", "5", "5", "5"]}
    path = write_samples(tmp_path / "s.jsonl", table)
    res = ae.evaluate_alpaca_eval(
        path, rm=FloatScorer(), ref_rewards=REF, n_max=4, prompt_ids=[0, 1, 2], n_bootstrap=10
    )
    assert res["complete"] is False and res["n_evaluated"] == 2
    assert sorted(res["win_rate"]) == [1, 2]
    assert "prompt 1: 2" in res["missing"][0] and "only for n <= 2" in res["note"]
    want2 = 100 * (sig(2 - 1.0) + sig(1 - 0.0) + sig(5 - 3.0)) / 3
    assert res["win_rate"][2] == pytest.approx(want2)


def test_shipped_reference_file_needs_the_quirk(tmp_path):
    path = write_samples(tmp_path / "s.jsonl", {0: ["1"]})
    scorer = FloatScorer()
    scorer.quirk = False
    with pytest.raises(ValueError, match="quirk"):
        ae.evaluate_alpaca_eval(
            path, rm=scorer, ref_rewards=FSFAIRX_REF_REWARDS_FILE, n_max=1, prompt_ids=[0]
        )


def test_with_tiny_rm_scorer(tmp_path, monkeypatch):
    """The real scorer end to end: reference answers scored (ref_rewards='score') by an untrained tiny RM."""
    from transformers import AutoTokenizer

    from ts2.models.reward_model import RewardScorer
    from ts2.models.tiny import TinySpec, build_tiny_model
    from ts2.models.tiny_rm import TinyRMSpec, init_rm_model

    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path / "cache"))
    tok = AutoTokenizer.from_pretrained(build_tiny_model(TinySpec()))
    scorer = RewardScorer(
        init_rm_model(TinyRMSpec(), tok),
        tok,
        user_text="instruction",
        max_length=64,
        batch_size=4,
        progress=False,
    )
    path = write_samples(
        tmp_path / "samples" / "alpaca_eval.jsonl", {0: ["Sure.", "Broadway actors."], 5: ["A", "B"]}
    )
    res = ae.evaluate_alpaca_eval(
        path, rm=scorer, ref_rewards="score", n_max=2, prompt_ids=[0, 5], n_bootstrap=20
    )
    outputs = json.loads((AE_DIR / "gpt4_1106_preview_model_outputs.json").read_text(encoding="utf-8"))
    r = scorer.score([INSTR[0]] * 2 + [INSTR[5]] * 2, ["Sure.", "Broadway actors.", "A", "B"]).reshape(2, 2)
    ref = scorer.score([INSTR[0], INSTR[5]], [outputs[0]["output"], outputs[5]["output"]])
    want = 100 * np.mean([sig(r[k].max() - ref[k]) for k in range(2)])
    assert res["win_rate"][2] == pytest.approx(want, abs=1e-6)
    assert (
        res["complete"] and res["rm"] == scorer.fingerprint and res["ref_rewards"].startswith("scored with")
    )


def test_paper_detok_rm_scores_samples_with_the_detokenised_prompt(tmp_path, monkeypatch):
    """rm.user_text=paper_detok (the paper default): each sample's RM user turn is its chat-templated prompt
    detokenised with the policy tokenizer (the leftover system text stays), while the reference answers keep
    the bare instruction; checked against an instruction-mode scorer fed the hand-built user turns."""
    from transformers import AutoTokenizer

    from ts2.models.reward_model import RewardScorer
    from ts2.models.tiny import TinySpec, build_tiny_model
    from ts2.models.tiny_rm import TinyRMSpec, init_rm_model

    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path / "cache"))
    tok = AutoTokenizer.from_pretrained(build_tiny_model(TinySpec()))
    model = init_rm_model(TinyRMSpec(), tok)
    paper = RewardScorer(model, tok, max_length=96, batch_size=4, progress=False)  # default: paper_detok
    plain = RewardScorer(model, tok, user_text="instruction", max_length=96, batch_size=4, progress=False)
    table = {0: ["Sure.", "Broadway actors."], 5: ["A", "B"]}
    path = tmp_path / "run" / "samples" / "alpaca_eval.jsonl"
    path.parent.mkdir(parents=True)
    rows = [
        {
            "prompt_id": i,
            "sample_idx": j,
            "prompt": tok.apply_chat_template(
                [{"role": "user", "content": INSTR[i]}], tokenize=False, add_generation_prompt=True
            ),
            "completion": c,
            "instruction": INSTR[i],
        }
        for i, cs in table.items()
        for j, c in enumerate(cs)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="policy model's tokenizer"):
        ae.evaluate_alpaca_eval(path, rm=paper, ref_rewards="score", n_max=2, prompt_ids=[0, 5])
    res = ae.evaluate_alpaca_eval(
        path, rm=paper, ref_rewards="score", n_max=2, prompt_ids=[0, 5], n_bootstrap=20, detokenizer=tok
    )
    leftover = "system\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    outputs = json.loads((AE_DIR / "gpt4_1106_preview_model_outputs.json").read_text(encoding="utf-8"))
    r = plain.score(
        [leftover + INSTR[0]] * 2 + [leftover + INSTR[5]] * 2, ["Sure.", "Broadway actors.", "A", "B"]
    ).reshape(2, 2)
    ref = plain.score([INSTR[0], INSTR[5]], [outputs[0]["output"], outputs[5]["output"]])
    want = {n: 100 * np.mean([sig(r[k, :n].max() - ref[k]) for k in range(2)]) for n in (1, 2)}
    assert res["win_rate"] == pytest.approx(want, abs=1e-6)
    assert res["user_text"] == "paper_detok" and res["rm"] == paper.fingerprint != plain.fingerprint
    assert res["rm_detokenizer"] == tok.name_or_path


def _cfg(tmp_path, **metrics):
    return OmegaConf.create(
        {
            "limit": 3,
            "samples_dir": str(tmp_path / "run" / "samples"),
            "metrics_dir": str(tmp_path / "run" / "metrics"),
            "eval": {
                "id": "alpaca_eval",
                "metrics": {
                    "n_max": 4,
                    "n_bootstrap": 200,
                    "diversity": True,
                    "diversity_n": None,
                    "standard_ae2": False,
                    **metrics,
                },
            },
            "rm": {"ref_rewards": REF},
            "diversity": DIVERSITY,
        }
    )


def test_score_returns_win_rates_diversity_cis_and_per_prompt_values(tmp_path, monkeypatch):
    from ts2.eval.diversity import DiversityConfig, diversity_report

    texts = {0: ["1.0 a b", "3.0 c", "0.0 a", "2.0 d e"], 1: ["-1 x", "-2 x y", "0.5 z", "0 x"]}
    texts[2] = ["2 same words", "2 same words", "2 same words", "2 same words"]
    path = write_samples(tmp_path / "run" / "samples" / "alpaca_eval.jsonl", texts)

    class FirstWordScorer(FloatScorer):
        def score(self, instructions, responses, templated_prompts=None, *, desc=""):
            return np.array([float(r.split()[0]) for r in responses])

    monkeypatch.setattr(ae, "as_scorer", lambda rm: FirstWordScorer())
    res = ae.score(read_samples(path), _cfg(tmp_path))
    assert res.complete and res.num_prompts == 3 and res.num_samples == 12 and res.prompt_ids == [0, 1, 2]
    assert {k: res.metrics[f"win_rate@{k}"] for k in (1, 2, 4)} == pytest.approx(EXPECTED, abs=1e-12)
    want = diversity_report(
        [[templated(INSTR[i]) + c for c in texts[i]] for i in range(3)], DiversityConfig()
    )
    assert {k: res.metrics[k] for k in want} == pytest.approx(want, abs=1e-9)
    for name, value in res.metrics.items():
        lo, hi = res.ci[name]
        assert lo <= value <= hi, name
        assert np.mean(res.per_prompt[name]) == pytest.approx(value, abs=1e-9)
    assert res.per_prompt["win_rate@1"] == pytest.approx([100 * sig(0.0), 100 * sig(-1.0), 100 * sig(-1.0)])
    assert res.per_prompt["ngram"][2] < res.per_prompt["ngram"][0]  # four identical samples: least diverse
    assert res.details["diversity"]["n"] == 4 and res.details["rm"] == "float-scorer-v1"
    # a prompt with fewer samples: n stops at 2, the result is marked incomplete with a note
    write_samples(path, {**texts, 1: texts[1][:2]})
    short = ae.score(read_samples(path), _cfg(tmp_path, diversity=False))
    assert not short.complete and sorted(short.metrics) == ["win_rate@1", "win_rate@2"]
    assert "only for n <= 2" in short.note


def test_score_with_paper_diversity_text_uses_the_policy_tokenizer(tmp_path, monkeypatch, tiny_tokenizer):
    from ts2.eval.diversity import DiversityConfig, diversity_report, paper_text

    tok = tiny_tokenizer
    tok.save_pretrained(tmp_path / "model")
    texts = {i: [f"{k}.0 answer {i} {k}" for k in range(4)] for i in range(3)}
    path = write_samples(tmp_path / "run" / "samples" / "alpaca_eval.jsonl", texts)
    meta = {"complete": True, "model": {"model_path": str(tmp_path / "model"), "model": "tiny"}}
    path.with_suffix(".meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(ae, "as_scorer", lambda rm: FloatScorer())
    monkeypatch.setattr(
        FloatScorer,
        "score",
        lambda self, x, y, t=None, *, desc="": np.array([float(r.split()[0]) for r in y]),
    )
    cfg = _cfg(tmp_path)
    cfg.diversity.text = "paper"
    res = ae.score(read_samples(path), cfg)
    want = diversity_report(
        [[paper_text(tok, templated(INSTR[i]), c) for c in texts[i]] for i in range(3)], DiversityConfig()
    )
    assert {k: res.metrics[k] for k in want} == pytest.approx(want, abs=1e-9)
    d = res.details["diversity"]
    assert d["text"] == "paper" and "alpaca_eval.meta.json" in d["tokenizer"]
    assert d["sent_bert_note"].startswith("offline default")
