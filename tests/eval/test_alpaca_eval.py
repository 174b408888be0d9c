"""Tests for `ts2.eval.alpaca_eval`: hand-computed best-of-n win rates, bootstrap CI, sample-file validation,
reference-reward mapping (all 805), caches, the standard AlpacaEval-2 hand-off and the diversity hand-off."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import ts2.eval.alpaca_eval as ae
from ts2.paths import data_dir

AE_DIR = data_dir() / "alpaca_eval"
INSTR = [
    json.loads(line)["instruction"]
    for line in open(AE_DIR / "alpaca_eval_instructions.jsonl", encoding="utf-8")
]


def sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def templated(instruction: str) -> str:
    return f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"


def write_samples(
    path: Path, table: dict[int, list[str]], *, extra: list[dict] | None = None, **overrides
) -> Path:
    """Sample file in the sampling stage's format: one line per (prompt, sample)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for pid, completions in table.items():
            for j, c in enumerate(completions):
                row = {
                    "prompt_id": pid,
                    "sample_idx": j,
                    "prompt": templated(INSTR[pid]),
                    "completion": c,
                    "finish_reason": "stop",
                    "num_tokens": len(c.split()),
                    "instruction": INSTR[pid],
                }
                row.update(overrides)
                fh.write(json.dumps(row) + "\n")
        for row in extra or []:
            fh.write(json.dumps(row) + "\n")
    return path


class FloatScorer:
    """Reward = the completion parsed as a float; counts the items it scores."""

    fingerprint = "float-scorer-v1"
    quirk = True

    def __init__(self) -> None:
        self.calls = 0

    def score(self, instructions, responses, templated_prompts=None, *, desc=""):
        self.calls += len(responses)
        return np.array([float(r) for r in responses])


# Hand example: 3 prompts x 4 samples and reference rewards.
REWARDS = {0: [1.0, 3.0, 0.0, 2.0], 1: [-1.0, -2.0, 0.5, 0.0], 2: [2.0, 2.0, 2.0, 2.0]}
REF = {0: 1.0, 1: 0.0, 2: 3.0}
EXPECTED = {  # best of the first n: n=1 -> (1, -1, 2), n=2 -> (3, -1, 2), n=4 -> (3, 0.5, 2)
    1: 100 * (sig(0.0) + sig(-1.0) + sig(-1.0)) / 3,
    2: 100 * (sig(2.0) + sig(-1.0) + sig(-1.0)) / 3,
    4: 100 * (sig(2.0) + sig(0.5) + sig(-1.0)) / 3,
}


def test_grid():
    assert ae.best_of_n_grid(32) == [1, 2, 4, 8, 16, 32]
    assert ae.best_of_n_grid(6) == [1, 2, 4, 6]
    assert ae.best_of_n_grid(1) == [1]
    with pytest.raises(ValueError):
        ae.best_of_n_grid(0)


def test_win_rate_hand_computed():
    r = np.array([REWARDS[i] for i in range(3)])
    ref = np.array([REF[i] for i in range(3)])
    got = ae.win_rates(r, ref, [1, 2, 4])
    assert got == pytest.approx(EXPECTED, abs=1e-12)
    assert EXPECTED[1] == pytest.approx(
        100 * (0.5 + 2 / (1 + math.e)) / 3
    )  # sanity of the expectation itself


def test_best_of_n_monotone_and_extreme_values():
    rng = np.random.default_rng(3)
    r, ref = rng.normal(size=(50, 16)), rng.normal(size=50)
    wr = ae.win_rates(r, ref, ae.best_of_n_grid(16))
    vals = [wr[n] for n in sorted(wr)]
    assert all(b >= a for a, b in zip(vals, vals[1:], strict=False)) and vals[-1] > vals[0]
    big = ae.per_prompt_win(np.array([[800.0], [-800.0]]), np.zeros(2), 1)  # no overflow
    assert big.tolist() == [100.0, 0.0]


def test_bootstrap_ci_contains_estimate_is_seeded_and_matches_normal_width():
    rng = np.random.default_rng(0)
    per = {1: rng.uniform(0, 100, size=805), 2: rng.uniform(20, 100, size=805)}
    ci = ae.bootstrap_ci(per, n_resamples=1000, seed=7)
    assert ci == ae.bootstrap_ci(per, n_resamples=1000, seed=7)
    assert ci != ae.bootstrap_ci(per, n_resamples=1000, seed=8)
    for n, v in per.items():
        lo, hi = ci[n]
        assert lo < v.mean() < hi
        normal = 2 * 1.959964 * v.std(ddof=1) / math.sqrt(v.size)  # CLT width, independent of the bootstrap
        assert (hi - lo) == pytest.approx(normal, rel=0.15)


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


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            {"prompt_id": 805, "sample_idx": 0, "completion": "x", "instruction": "y"},
            "not an AlpacaEval index",
        ),
        ({"prompt_id": -1, "sample_idx": 0, "completion": "x"}, "not an AlpacaEval index"),
        ({"prompt_id": True, "sample_idx": 0, "completion": "x"}, "not an AlpacaEval index"),
        (
            {"prompt_id": 3, "sample_idx": 0, "completion": "x", "instruction": "Something else"},
            "does not match AlpacaEval prompt 3",
        ),
        (
            {"prompt_id": 3, "sample_idx": 0, "completion": "x", "prompt": "no instruction here"},
            "does not contain",
        ),
        ({"prompt_id": 3, "sample_idx": 0, "completion": "x"}, "needs an 'instruction'"),
        ({"prompt_id": 3, "sample_idx": -2, "completion": "x", "instruction": INSTR[3]}, "sample_idx"),
        ({"prompt_id": 3, "sample_idx": 0, "instruction": INSTR[3]}, "missing field 'completion'"),
        ({"prompt_id": 3, "sample_idx": 0, "completion": 7, "instruction": INSTR[3]}, "not a string"),
        (
            {"prompt_id": 0, "sample_idx": 0, "completion": "dup", "instruction": INSTR[0]},
            "duplicate .* first at line 1",
        ),
    ],
)
def test_malformed_rows_name_the_line(tmp_path, row, match):
    path = write_samples(tmp_path / "s.jsonl", {0: ["1"]}, extra=[row])
    with pytest.raises(ValueError, match=match) as info:
        ae.read_samples(path)
    assert f"{path}:2:" in str(info.value)


def test_missing_and_unparseable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ae.evaluate_alpaca_eval(tmp_path / "none.jsonl", rm=FloatScorer(), ref_rewards=REF)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt_id": 0, "sample_idx": 0, "completion": "1", "instruction": INSTR[0]})
        + "\n{oops\n"
    )
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid JSON"):
        ae.read_samples(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no samples"):
        ae.read_samples(empty)


def test_string_ids_and_prompt_only_rows_are_accepted(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"prompt_id": "12", "sample_idx": 0, "completion": "0.0", "prompt": templated(INSTR[12])})
        + "\n"
    )
    s = ae.read_samples(path)
    assert list(s.by_prompt) == [12] and s.prefix_count(12) == 1
    row = {"prompt_id": 12, "sample_idx": 0, "completion": "x", "instruction": "  " + INSTR[12] + "\n"}
    path.write_text(json.dumps(row) + "\n")  # surrounding whitespace (a stripped copy) still matches
    assert ae.read_samples(path).prefix_count(12) == 1


def test_reference_rewards_file_maps_all_805_prompts():
    ref = ae.load_reference_rewards()  # checks idx and instruction of every line
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
        ae.load_reference_rewards(p)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    with pytest.raises(ValueError, match=r"no reward for 1 prompt\(s\), e.g. idx \[804\]"):
        ae.load_reference_rewards(p)


def test_shipped_reference_file_needs_the_quirk(tmp_path):
    path = write_samples(tmp_path / "s.jsonl", {0: ["1"]})
    scorer = FloatScorer()
    scorer.quirk = False
    with pytest.raises(ValueError, match="quirk"):
        ae.evaluate_alpaca_eval(
            path, rm=scorer, ref_rewards=ae.FSFAIRX_REF_REWARDS_FILE, n_max=1, prompt_ids=[0]
        )


def test_reference_answers_scored_with_other_rm_are_cached_and_resumable(tmp_path, monkeypatch):
    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path / "cache"))

    class LenScorer(FloatScorer):
        fingerprint = "len-scorer-v1"

        def score(self, instructions, responses, templated_prompts=None, *, desc=""):
            self.calls += len(responses)
            return np.array([len(x) + 0.001 * len(r) for x, r in zip(instructions, responses, strict=True)])

    outputs = json.loads((AE_DIR / "gpt4_1106_preview_model_outputs.json").read_text(encoding="utf-8"))
    s = LenScorer()
    got = ae.score_reference_rewards(s, [4, 1, 2], chunk=2)
    want = {i: len(outputs[i]["instruction"]) + 0.001 * len(outputs[i]["output"]) for i in (1, 2, 4)}
    assert {i: got[i] for i in (1, 2, 4)} == pytest.approx(want)
    assert np.isnan(got[0]) and s.calls == 3
    cache = tmp_path / "cache" / "rewards" / "len-scorer-v1.jsonl"
    assert len(cache.read_text().splitlines()) == 3
    with open(cache, "a") as fh:  # an interrupted append
        fh.write('{"key": 7, "dig')
    with pytest.warns(UserWarning, match="torn last line"):
        again = ae.score_reference_rewards(s, [1, 2, 4, 5])
    assert s.calls == 4 and again[5] == pytest.approx(
        len(outputs[5]["instruction"]) + 0.001 * len(outputs[5]["output"])
    )
    assert [json.loads(x)["key"] for x in cache.read_text().splitlines()] == [1, 2, 4, 5]
    with open(cache, "a") as fh:  # a complete row whose newline was lost
        fh.write('{"key": 9, "digest": "stale", "reward": 0.0}')
    ae.score_reference_rewards(s, [6])
    assert [json.loads(x)["key"] for x in cache.read_text().splitlines()] == [1, 2, 4, 5, 9, 6]


def test_with_tiny_rm_scorer(tmp_path, monkeypatch):
    """The real scorer end to end: reference answers scored (ref_rewards='score') by an untrained tiny RM."""
    from transformers import AutoTokenizer

    from ts2.eval.reward import RewardScorer
    from ts2.models.tiny import TinySpec, build_tiny_model
    from ts2.models.tiny_rm import TinyRMSpec, init_rm_model

    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path / "cache"))
    tok = AutoTokenizer.from_pretrained(build_tiny_model(TinySpec()))
    scorer = RewardScorer(init_rm_model(TinyRMSpec(), tok), tok, max_length=64, batch_size=4, progress=False)
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


def test_standard_alpaca_eval_skips_without_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = write_samples(tmp_path / "s.jsonl", {0: ["1"]})
    res = ae.standard_alpaca_eval(path)
    assert res["status"] == "skipped: OPENAI_API_KEY not set" and res["win_rate"] is None


@pytest.mark.parametrize("which", ["first", "best"])
def test_standard_alpaca_eval_hands_correct_outputs_to_alpaca_eval(tmp_path, monkeypatch, which):
    import alpaca_eval
    import pandas as pd

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    seen = {}

    def fake_evaluate(**kw):
        seen.update(kw)
        lb = pd.DataFrame({"win_rate": [42.0], "standard_error": [1.5], "n_total": [2]}, index=[kw["name"]])
        return lb, None

    monkeypatch.setattr(alpaca_eval, "evaluate", fake_evaluate)
    path = write_samples(
        tmp_path / "samples" / "alpaca_eval.jsonl", {3: ["0.5", "2.5", "1.0"], 9: ["3.0", "-1.0", "0.0"]}
    )
    res = ae.standard_alpaca_eval(
        path,
        which=which,
        rm=FloatScorer() if which == "best" else None,
        generator="m",
        out_dir=tmp_path / "ae2",
    )
    assert seen["output_path"] == str(tmp_path / "ae2")
    assert res["win_rate"] == 42.0 and res["status"].startswith("ok (subset: 2 of 805")
    mo, ref = seen["model_outputs"], seen["reference_outputs"]
    assert mo["instruction"].tolist() == [INSTR[3], INSTR[9]]
    assert mo["output"].tolist() == (["0.5", "3.0"] if which == "first" else ["2.5", "3.0"])
    assert set(mo["generator"]) == {"m"}
    outputs = json.loads((AE_DIR / "gpt4_1106_preview_model_outputs.json").read_text(encoding="utf-8"))
    assert ref["instruction"].tolist() == mo["instruction"].tolist()
    assert ref["output"].tolist() == [outputs[3]["output"], outputs[9]["output"]]
    assert seen["fn_metric"] == "get_winrate" and seen["sort_by"] == "win_rate"
    assert seen["annotators_config"] == "weighted_alpaca_eval_gpt4_turbo"
    assert seen["precomputed_leaderboard"] is None and seen["is_return_instead_of_print"] is True


def test_chat_diversity_builds_groups_and_calls_diversity_report(tmp_path, monkeypatch):
    import ts2.eval.diversity as div

    path = write_samples(tmp_path / "s.jsonl", {1: ["a b", "c d", "e"], 4: ["x", "y", "z", "w"]})
    seen = {}

    def fake_report(groups, *, self_bleu_mode="paper", model=None, **kw):
        seen["groups"], seen["mode"], seen["kw"] = groups, self_bleu_mode, kw
        return {"ngram": 1.0, "self_bleu": 2.0, "sent_bert": 3.0}

    monkeypatch.setattr(div, "diversity_report", fake_report)
    res = ae.chat_diversity(path, text="templated")
    assert seen["groups"] == [
        [templated(INSTR[1]) + c for c in ["a b", "c d", "e"]],
        [templated(INSTR[4]) + c for c in ["x", "y", "z"]],
    ]
    assert res["n"] == 3 and res["num_prompts"] == 2 and res["ngram"] == 1.0 and seen["mode"] == "paper"
    assert seen["kw"] == {"num_workers": 1, "batch_size": 64, "cache_dir": None, "max_seq_length": None}
    ae.chat_diversity(
        path, text="response", n=2, self_bleu_mode="all_refs", num_workers=2, cache_dir=tmp_path
    )
    assert seen["groups"] == [["a b", "c d"], ["x", "y"]] and seen["mode"] == "all_refs"
    assert seen["kw"] == {"num_workers": 2, "batch_size": 64, "cache_dir": tmp_path, "max_seq_length": None}
    with pytest.raises(ValueError, match="text must be"):
        ae.chat_diversity(path, text="bare")
