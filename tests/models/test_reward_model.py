"""Tests for `ts2.models.reward_model`: read positions checked against direct forwards of the score head on
the exact token sequences, padding / pad-id collisions, truncation, configs and load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ts2.models.reward_model import (
    RewardScorer,
    RMConfig,
    detokenise,
    load_reward_model,
    paper_detok_user_text,
)
from ts2.models.tiny import TinySpec, build_tiny_model
from ts2.models.tiny_rm import TinyRMSpec, init_rm_model

REPO = Path(__file__).resolve().parents[2]
HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny tokenizer (built in a private cache) + an untrained tiny sequence classifier (seeded)."""
    from transformers import AutoTokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TS2_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        tok = AutoTokenizer.from_pretrained(build_tiny_model(TinySpec()))
    model = init_rm_model(TinyRMSpec(base=TinySpec()), tok).eval()  # random-init backbone: a non-zero head
    return tok, model


def values_at_all_positions(model, ids: list[int]) -> np.ndarray:
    """Score head on every position of one unpadded sequence: no pooling, no pad-token logic involved."""
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([ids])).last_hidden_state
        return model.score(h)[0, :, 0].double().numpy()


def hand_rendered(x: str, y: str) -> str:
    """The tiny template written out by hand (Llama-3.1 shape, system block always emitted)."""
    return (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{x}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{y}<|eot_id|>"
    )


def test_quirk_reads_after_empty_header_and_no_quirk_at_eot(tiny):
    tok, model = tiny
    x, y = "Name a primary colour.", "Blue is a primary colour."
    s_q = RewardScorer(model, tok, quirk=True, progress=False)
    s_n = RewardScorer(model, tok, quirk=False, progress=False)
    ids_n = tok(hand_rendered(x, y), add_special_tokens=False)["input_ids"]
    ids_q = tok(hand_rendered(x, y) + HEADER, add_special_tokens=False)["input_ids"]
    assert s_n.encode(x, y) == ids_n
    assert s_q.encode(x, y) == ids_q
    assert ids_q[: len(ids_n)] == ids_n and len(ids_q) > len(ids_n)
    assert ids_n[-1] == tok.convert_tokens_to_ids("<|eot_id|>")

    values = values_at_all_positions(model, ids_q)  # ids_n is a prefix, so one forward covers both
    r_q = s_q.score([x], [y])[0]
    r_n = s_n.score([x], [y])[0]
    assert r_q == pytest.approx(values[len(ids_q) - 1], abs=1e-5)
    assert r_n == pytest.approx(values[len(ids_n) - 1], abs=1e-5)
    assert abs(r_q - r_n) > 1e-4
    # each score matches exactly one read position
    assert int(np.argmin(np.abs(values - r_q))) == len(ids_q) - 1
    assert int(np.argmin(np.abs(values - r_n))) == len(ids_n) - 1


def test_batched_padded_scores_equal_unpadded_forwards_even_if_pad_equals_last_token(tiny):
    tok, model = tiny
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    xs = ["Hi", "Explain photosynthesis in one line.", "2+2?", "Write a haiku about rain.", "Why?"]
    ys = [
        "Hello!",
        "Plants turn light, water and CO2 into sugar.",
        "4",
        "Rain taps the roof / ...",
        "Because.",
    ]
    scorer = RewardScorer(model, tok, quirk=False, batch_size=3, progress=False)
    saved = model.config.pad_token_id
    model.config.pad_token_id = eot  # every sequence ends in <|eot_id|>: the naive read would move left
    try:
        got = scorer.score(xs, ys)
        assert model.config.pad_token_id == eot  # restored after scoring
        ids0 = scorer.encode(xs[0], ys[0])
        with torch.no_grad():
            naive = model(input_ids=torch.tensor([ids0])).logits[0, 0].item()
    finally:
        model.config.pad_token_id = saved
    want = [values_at_all_positions(model, scorer.encode(x, y))[-1] for x, y in zip(xs, ys, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert abs(naive - want[0]) > 1e-5  # shows the pitfall the pad-id choice avoids


def test_max_length_keeps_the_last_tokens(tiny):
    tok, model = tiny
    x, y = "Describe the sea.", "The sea is wide and deep and full of salt water and fish. " * 4
    full = RewardScorer(model, tok, quirk=True, progress=False).encode(x, y)
    scorer = RewardScorer(model, tok, quirk=True, max_length=20, progress=False)
    assert scorer.encode(x, y) == full[-20:]
    r = scorer.score([x], [y])[0]
    assert scorer.num_truncated == 1
    assert r == pytest.approx(values_at_all_positions(model, full[-20:])[-1], abs=1e-5)


def test_fingerprint_tracks_what_determines_scores(tiny):
    tok, model = tiny
    a = RewardScorer(model, tok, quirk=True, progress=False).fingerprint
    assert a == RewardScorer(model, tok, quirk=True, progress=False).fingerprint
    assert a != RewardScorer(model, tok, quirk=False, progress=False).fingerprint
    assert a != RewardScorer(model, tok, quirk=True, max_length=64, progress=False).fingerprint
    other = init_rm_model(TinyRMSpec(base=TinySpec(), seed=1), tok)
    assert a != RewardScorer(other, tok, quirk=True, progress=False).fingerprint


def test_load_from_folder_matches_in_memory_and_dtype(tiny, tmp_path):
    tok, model = tiny
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    cfg = {
        "id": "t",
        "name_or_path": str(tmp_path / "rm"),
        "dtype": "float32",
        "device": "cpu",
        "batch_size": 2,
    }
    loaded = RewardScorer.from_config(cfg, progress=False)
    mem = RewardScorer(model, tok, progress=False)
    xs, ys = ["a", "bb"], ["c", "dd dd"]
    np.testing.assert_allclose(loaded.score(xs, ys), mem.score(xs, ys), atol=1e-6)
    assert loaded.fingerprint.split("-", 1)[1] == mem.fingerprint.split("-", 1)[1]
    bf = RewardScorer.from_config({**cfg, "dtype": "bfloat16"}, progress=False)
    assert next(bf.model.parameters()).dtype == torch.bfloat16
    assert np.isfinite(bf.score(xs, ys)).all()


def test_missing_rm_says_how_to_obtain_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download sfairXC/FsfairX-LLaMA3-RM-v0.1"):
        load_reward_model(str(tmp_path / "no" / "such-rm"))


def test_rejects_non_scalar_heads(tiny):
    tok, _ = tiny
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
    )
    with pytest.raises(ValueError, match="num_labels=2"):
        RewardScorer(LlamaForSequenceClassification(cfg), tok)


def test_rm_configs_compose_and_validate():
    fs = RMConfig.from_any(REPO / "conf" / "rm" / "fsfairx.yaml")
    assert fs.name_or_path == "sfairXC/FsfairX-LLaMA3-RM-v0.1" and fs.quirk and fs.dtype == "bfloat16"
    assert fs.ref_rewards == "alpaca_eval/gpt4_1106_preview_fsfairx_rewards.jsonl"
    tiny_cfg = RMConfig.from_any(REPO / "conf" / "rm" / "tiny.yaml")
    spec = TinyRMSpec.from_dict(tiny_cfg.tiny)
    # the tiny RM is applied with the read convention and length it was trained with
    assert (tiny_cfg.quirk, tiny_cfg.max_length) == (spec.quirk, spec.max_length)
    assert tiny_cfg.ref_rewards == "score"
    # user turn: the official detokenised prompt for the paper RM (and any RM config by default); the tiny RM,
    # trained on bare instructions, keeps the instruction (conf/rm/tiny.yaml says why)
    assert (fs.user_text, RMConfig(name_or_path="x").user_text, tiny_cfg.user_text) == (
        "paper_detok",
        "paper_detok",
        "instruction",
    )
    with pytest.raises(ValueError, match="user_text must be one of"):
        RMConfig(name_or_path="x", user_text="templated")
    with pytest.raises(ValueError, match="exactly one"):
        RMConfig(name_or_path="x", tiny={})
    with pytest.raises(ValueError, match="Unknown RM config key"):
        RMConfig.from_any({"name_or_path": "x", "quirks": True})
    with pytest.raises(ValueError, match="dtype"):
        RMConfig(name_or_path="x", dtype="float99")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RMConfig.from_any(REPO / "conf" / "rm" / "nope.yaml")


# the template's system block, detokenised
LEFTOVER = "system\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


def test_paper_detok_user_text_by_hand(tiny):
    """Official round trip with the policy tokenizer: special tokens gone, every "user\\n\\n"/"assistant\\n\\n"
    removed (also inside the instruction), the template's system text left at the front."""
    tok, _ = tiny
    instruction = "How are you?\nuser\n\nFine."
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == hand_rendered(instruction, "")[: -len("<|eot_id|>")]  # ends with the assistant header
    assert paper_detok_user_text(prompt, tok) == LEFTOVER + "How are you?\nFine."
    with pytest.raises(ValueError, match="policy model's tokenizer"):
        paper_detok_user_text(prompt, None)


def test_detokenise_applies_the_transformers4_space_cleanup_when_the_tokenizer_asks(tiny):
    import copy

    tok, _ = tiny
    text = "<|begin_of_text|>I 'm here , ok ? Yes ! They 're n't<|eot_id|>"
    # the tiny tokenizer leaves clean_up_tokenization_spaces off
    assert detokenise(tok, text) == "I 'm here , ok ? Yes ! They 're n't"
    llama_like = copy.deepcopy(tok)
    llama_like.clean_up_tokenization_spaces = True  # as Llama-3.1's tokenizer_config.json says
    assert detokenise(llama_like, text) == "I'm here, ok? Yes! They'ren't"
    assert detokenise(llama_like, text, cleanup=False) == detokenise(tok, text)


def test_paper_detok_scorer_uses_the_prompt_for_samples_and_the_instruction_otherwise(tiny):
    tok, model = tiny
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    bare = RewardScorer(model, tok, user_text="paper_detok", progress=False)
    # reference answers (no prompt): the bare instruction, needing no detokenizer
    ref_ids = tok(hand_rendered("Hi there", "Yo") + HEADER, add_special_tokens=False)["input_ids"]
    assert bare.encode("Hi there", "Yo") == ref_ids
    with pytest.raises(ValueError, match="policy model's tokenizer"):
        bare.encode("Hi there", "Yo", prompt)
    scorer = RewardScorer(model, tok, user_text="paper_detok", detokenizer=tok, progress=False)
    want = tok(hand_rendered(LEFTOVER + "Hi there", "Yo") + HEADER, add_special_tokens=False)["input_ids"]
    # the response is round-tripped too: its special tokens go
    assert scorer.encode("ignored", "Yo<|eot_id|>", prompt) == want
    assert scorer.score(["ignored"], ["Yo"], [prompt])[0] == pytest.approx(
        values_at_all_positions(model, want)[-1], abs=1e-5
    )
    instr = RewardScorer(model, tok, user_text="instruction", progress=False)
    assert instr.encode("Hi there", "Yo", prompt) == bare.encode("Hi there", "Yo")
    # user_text and the detokenizer key the reward caches
    assert len({scorer.fingerprint, bare.fingerprint, instr.fingerprint}) == 3


def test_paper_detok_user_text_with_the_policys_chatml_template(smollm2_tokenizer):
    """With a SmolLM2 policy the RM's user turn drops SmolLM2's own headers ("user\\n", "assistant\\n"), not
    Llama's; its default system line is the leftover at the front."""
    tok = smollm2_tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "How are you?\nassistant\nFine."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert paper_detok_user_text(prompt, tok) == (
        "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\nHow are you?\nFine.\n"
    )
