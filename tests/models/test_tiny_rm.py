"""Tests for `ts2.models.tiny_rm`: Bradley–Terry training lowers the training loss (checked against the seeded
initial model), and the reported held-out accuracy matches an independent, unpadded per-pair computation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ts2.models.tiny import TinySpec, main
from ts2.models.tiny_rm import TinyRMSpec, build_tiny_rm, init_rm_model
from ts2.paths import data_dir

# The small random-init backbone keeps these tests fast (the default RM starts from the pretrained base).
SPEC = TinyRMSpec(
    base=TinySpec(),
    max_train_pairs=48,
    max_eval_pairs=30,
    epochs=5,
    batch_size=8,
    max_length=64,
    learning_rate=1e-2,
)


def read_pairs(name: str, limit: int) -> list[tuple[str, str, str]]:
    """Pairs straight from the jsonl (identical chosen/rejected left out: they cannot be ordered)."""
    out = []
    for line in open(data_dir() / "ultrafeedback" / name, encoding="utf-8"):
        row = json.loads(line)
        if row["chosen"] != row["rejected"]:
            out.append((row["prompt"], row["chosen"], row["rejected"]))
        if len(out) == limit:
            break
    return out


def direct_ids(tok, prompt: str, response: str, max_length: int) -> list[int]:
    """The quirk rendering written with the tokenizer's own template call, then the last max_length tokens."""
    conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"][-max_length:]


def direct_reward(model, ids: list[int]) -> float:
    """One unpadded forward; the score head read at the last token (quirk: after the empty assistant header)."""
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([ids])).last_hidden_state
        return float(model.score(h)[0, -1, 0])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("cache")
        mp.setenv("TS2_CACHE_DIR", str(cache))
        path = build_tiny_rm(SPEC)
        yield path, cache


def test_folder_layout_and_report(built):
    path, cache = built
    assert path == cache / "models" / f"tiny-rm-{SPEC.fingerprint()}"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tiny-rm-")]  # no temp folder left
    ev = json.loads((path / "rm_eval.json").read_text())
    assert ev["scale"] == "tiny" and "tiny-scale" in ev["note"]
    assert ev["num_eval_pairs"] == 30 and ev["num_train_pairs"] == 48
    build = json.loads((path / "rm_build.json").read_text())
    assert len(build["train_losses"]) == SPEC.epochs * math.ceil(48 / SPEC.batch_size)


def test_training_lowers_the_bradley_terry_loss(built):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, _ = built
    tok = AutoTokenizer.from_pretrained(path)
    trained = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert trained.config.num_labels == 1 and trained.config.pad_token_id == tok.pad_token_id
    init = init_rm_model(SPEC, tok).eval()  # same seed: the starting point of training

    pairs = read_pairs("uf_binarized_subset_train1000.jsonl", 48)
    encoded = [
        (direct_ids(tok, p, c, SPEC.max_length), direct_ids(tok, p, r, SPEC.max_length)) for p, c, r in pairs
    ]

    def bt(model) -> float:
        losses = []
        for c, r in encoded:
            d = direct_reward(model, c) - direct_reward(model, r)
            losses.append(math.log1p(math.exp(-d)))  # -log sigmoid(d)
        return sum(losses) / len(losses)

    before, after = bt(init), bt(trained)
    assert before == pytest.approx(math.log(2), abs=0.05)
    assert after < before - 0.2


def test_reported_accuracy_matches_direct_computation(built):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, _ = built
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    pairs = read_pairs("uf_binarized_subset_eval200.jsonl", 30)
    margins = [
        direct_reward(model, direct_ids(tok, p, c, SPEC.max_length))
        - direct_reward(model, direct_ids(tok, p, r, SPEC.max_length))
        for p, c, r in pairs
    ]
    assert min(abs(m) for m in margins) > 1e-5  # no near-ties that padding noise could flip
    want = sum(m > 0 for m in margins) / len(margins)
    assert json.loads((path / "rm_eval.json").read_text())["pairwise_accuracy"] == pytest.approx(
        want, abs=1e-12
    )


def test_cached_and_deterministic(built, monkeypatch):
    path, cache = built
    monkeypatch.setenv("TS2_CACHE_DIR", str(cache))
    stamp = (path / "rm_eval.json").stat().st_mtime_ns
    assert build_tiny_rm(SPEC) == path and (path / "rm_eval.json").stat().st_mtime_ns == stamp
    from safetensors.torch import load_file

    first = load_file(path / "model.safetensors")
    again = build_tiny_rm(SPEC, force=True)
    second = load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_build_says_what_it_builds_where_and_shows_its_progress(built, monkeypatch, caplog, capsys):
    """Issue #22: the first evaluate was silent for ~3 min while it trained the tiny RM."""
    import dataclasses
    import logging

    _, cache = built  # the random-init backbone is already there
    monkeypatch.setenv("TS2_CACHE_DIR", str(cache))
    caplog.set_level(logging.INFO, logger="ts2.tiny_rm")
    spec = dataclasses.replace(SPEC, max_train_pairs=16, max_eval_pairs=4, epochs=1)
    path = build_tiny_rm(spec)
    report = json.loads((path / "rm_eval.json").read_text())
    assert caplog.messages == [
        "building the tiny reward model once (Bradley-Terry, 1 epoch(s) on <data_dir>/ultrafeedback/*train*.jsonl, "
        "from the random-init backbone; about 2.5 min of one CPU core for the default spec), cached in "
        f"{path} for every later run",
        f"tiny reward model built in {report['train_seconds']:.0f} s: held-out pairwise accuracy "
        f"{report['pairwise_accuracy']:.3f} -> {path}",
    ]
    bar = capsys.readouterr().err
    assert "tiny RM training" in bar and "2/2" in bar  # 16 pairs / batch 8 x 1 epoch = 2 steps
    caplog.clear()
    assert build_tiny_rm(spec) == path and caplog.messages == []  # found in the cache: nothing to say


def test_spec_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown tiny RM spec key"):
        TinyRMSpec.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="max_length"):
        TinyRMSpec(max_length=0)
    assert TinyRMSpec.from_dict({"base": {"hidden_size": 32}}).base.hidden_size == 32
    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No preference file matches"):
        build_tiny_rm(TinyRMSpec(train_glob="ultrafeedback/*nothing*.jsonl"))


@pytest.mark.slow
def test_default_build_prints_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path))
    main(["rm"])
    out = capsys.readouterr().out
    assert "tiny-scale RM: held-out pairwise accuracy" in out and "199 UltraFeedback pairs" in out
