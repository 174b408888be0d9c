"""What a chat template writes around a turn (ts2.models.chat), read off Llama-3.1's shape and SmolLM2's ChatML."""

from __future__ import annotations

import pytest

from ts2.models.chat import end_of_turn_token, role_header

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_llama31_shape_headers_are_the_official_literals(tiny_tokenizer):
    # the strings the official scripts remove: what the Llama-3.1 header leaves once special tokens are dropped
    assert role_header(tiny_tokenizer, "user") == "user\n\n"
    assert role_header(tiny_tokenizer, "assistant") == "assistant\n\n"
    assert end_of_turn_token(tiny_tokenizer) == "<|eot_id|>"


def test_smollm2_chatml_headers_and_end_of_turn(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert role_header(tok, "user") == "user\n"
    assert role_header(tok, "assistant") == "assistant\n"
    assert end_of_turn_token(tok) == "<|im_end|>" == tok.eos_token


def test_a_template_that_hides_the_content_is_refused(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: [redacted]\n{% endfor %}"
    with pytest.raises(ValueError, match="verbatim"):
        role_header(tok, "user")
