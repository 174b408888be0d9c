"""Assistant-only labels, truncation, and the accounting of bad rows (conf/data/*.yaml)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from ts2.data.sft import IGNORE_INDEX, BadRow, build_sft_dataset, tokenize_conversation

CONV = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, like grass."},
]


def _labelled_text(tok, ex):
    return tok.decode(
        [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE_INDEX]
    )


def test_only_assistant_turns_are_labelled(tiny_tokenizer):
    ex = tokenize_conversation(CONV, tiny_tokenizer, max_length=4096)
    assert _labelled_text(tiny_tokenizer, ex) == "Blue.<|eot_id|>Green, like grass.<|eot_id|>"
    # every labelled token is the token itself, and the prompt text is never labelled
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ex["input_ids"], ex["labels"], strict=True))
    full = tiny_tokenizer.decode(ex["input_ids"])
    assert full == tiny_tokenizer.apply_chat_template(CONV, tokenize=False)
    assert "Cutting Knowledge Date" in full  # the Llama-3.1-style system block is always emitted


def test_truncation_keeps_prefix_and_drops_fully_truncated_rows(tiny_tokenizer):
    full = tokenize_conversation(CONV, tiny_tokenizer, max_length=4096)
    n_prompt = full["labels"].index(next(lab for lab in full["labels"] if lab != IGNORE_INDEX))
    cut = tokenize_conversation(CONV, tiny_tokenizer, max_length=n_prompt + 2)
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 2]
    assert sum(lab != IGNORE_INDEX for lab in cut["labels"]) == 2
    with pytest.raises(BadRow, match="truncated"):
        tokenize_conversation(CONV, tiny_tokenizer, max_length=n_prompt)


def _cfg(tmp_path, rows, **kw):
    f = tmp_path / "ultrafeedback" / "toy_train.jsonl"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    base = dict(
        source="local",
        local_dir=str(tmp_path),
        local_glob="ultrafeedback/*train*.jsonl",
        prompt_field="prompt",
        response_field="chosen",
        shuffle_seed=None,
        limit=None,
        strict=False,
    )
    return OmegaConf.create({**base, **kw})


BAD_ROWS = [
    {"prompt": "ok?", "chosen": "Yes.", "source_index": 1},
    {"prompt": "missing answer", "source_index": 2},
    {"prompt": "empty answer", "chosen": "   ", "source_index": 3},
    {"prompt": 7, "chosen": "wrong prompt type", "source_index": 4},
    "{not json",
    {"prompt": "fine too", "chosen": "Sure.", "source_index": 6},
]


def test_bad_rows_are_skipped_counted_and_listed(tmp_path, tiny_tokenizer):
    data = build_sft_dataset(_cfg(tmp_path, BAD_ROWS), tiny_tokenizer, max_length=512)
    assert len(data.examples) == 2
    ids = {s["id"]: s["reason"] for s in data.skipped}
    assert set(ids) == {"toy_train/2", "toy_train/3", "toy_train/4", "toy_train.jsonl:5"}
    assert ids["toy_train/2"].startswith("bad_type")  # content None
    assert ids["toy_train/3"].startswith("empty_answer")
    assert "invalid JSON" in ids["toy_train.jsonl:5"]
    out = data.write_skipped(tmp_path)
    assert len(out.read_text().splitlines()) == 4


def test_strict_mode_names_the_row(tmp_path, tiny_tokenizer):
    with pytest.raises(BadRow, match=r"data row toy_train/2: .*strict"):
        build_sft_dataset(_cfg(tmp_path, BAD_ROWS, strict=True), tiny_tokenizer, max_length=512)


def test_empty_after_filtering_is_an_error(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match="empty after filtering"):
        build_sft_dataset(_cfg(tmp_path, BAD_ROWS[1:4]), tiny_tokenizer, max_length=512)


def test_local_subset_loads_from_the_data_dir(compose, tiny_tokenizer):
    cfg = compose(["data.limit=50"])
    data = build_sft_dataset(cfg.data, tiny_tokenizer, cfg.model.max_length)
    assert len(data.examples) + len(data.skipped) == 50
    assert all(len(e["input_ids"]) <= cfg.model.max_length for e in data.examples)


def test_smollm2_chatml_labels_answer_and_im_end_only(smollm2_tokenizer):
    """SmolLM2's own ChatML template (default system line): each answer and its <|im_end|> are labelled; the
    newline the template writes after <|im_end|> and every prompt token are not."""
    tok = smollm2_tokenizer
    ex = tokenize_conversation(CONV, tok, max_length=4096)
    assert (
        tok.decode(ex["input_ids"])
        == tok.apply_chat_template(CONV, tokenize=False)
        == (
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
            "<|im_start|>user\nAnother one?<|im_end|>\n<|im_start|>assistant\nGreen, like grass.<|im_end|>\n"
        )
    )
    assert _labelled_text(tok, ex) == "Blue.<|im_end|>Green, like grass.<|im_end|>"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ends = [i for i, t in enumerate(ex["input_ids"]) if t == im_end]
    assert [ex["labels"][i + 1] for i in ends] == [IGNORE_INDEX] * len(ends)  # the "\n" after each turn


def test_hub_rows_come_in_the_official_datasets_shuffle_order(monkeypatch):
    """data.source=hub: the pinned revision reaches load_dataset and the rows follow ``Dataset.shuffle(seed=42)``
    (numpy PCG64 permutation, the official code's call), not Python's random.shuffle (the local subset's)."""
    import random
    from pathlib import Path

    import datasets
    import numpy as np

    from ts2.data.sft import load_conversations

    n = 50
    rows = [
        {
            "prompt_id": f"p{i}",
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
        }
        for i in range(n)
    ]
    calls = []

    def fake_load_dataset(name, split, revision=None):
        calls.append((name, split, revision))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "data" / "ultrafeedback.yaml")
    got = [rid.split("/")[1] for rid, _ in load_conversations(cfg)]
    assert (
        calls == [("HuggingFaceH4/ultrafeedback_binarized", "train_sft", cfg.revision)]
        and len(cfg.revision) == 40
    )
    official = datasets.Dataset.from_list(rows).shuffle(seed=42)["prompt_id"]
    assert got == official == [f"p{i}" for i in np.random.default_rng(42).permutation(n)]
    python_order = [f"p{i}" for i in range(n)]
    random.Random(42).shuffle(python_order)
    assert got != python_order  # the order the hub path used before: a different permutation
