"""Tests for `ts2.models.scoring`: the pad-id choice by hand, the chat rendering against a hand-written template,
and batched right-padded scoring against one unpadded forward per sequence (independent of the pad logic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ts2.models.scoring import _safe_pad_id, render_ids, score_token_sequences
from ts2.models.tiny import TinySpec, build_tiny_model
from ts2.models.tiny_rm import TinyRMSpec, init_rm_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TS2_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        tok = AutoTokenizer.from_pretrained(build_tiny_model(TinySpec()))
    return tok, init_rm_model(TinyRMSpec(), tok).eval()


def test_safe_pad_id_by_hand():
    assert _safe_pad_id(7, {1, 2}, 10) == 7  # the preferred id when no row ends with it
    assert _safe_pad_id(2, {0, 2}, 10) == 1  # else the smallest id that ends no row
    assert _safe_pad_id(None, {0, 1, 2}, 10) == 3
    with pytest.raises(ValueError, match="No usable pad id"):
        _safe_pad_id(0, {0, 1}, 2)


def test_render_ids_is_the_template_text_tokenized_without_extra_specials(tiny):
    tok, _ = tiny
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    for quirk in (False, True):
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=quirk)
        assert (
            render_ids(tok, "Hi", "Hello!", quirk=quirk) == tok(text, add_special_tokens=False)["input_ids"]
        )
    plain, quirky = (render_ids(tok, "Hi", "Hello!", quirk=q) for q in (False, True))
    assert quirky[: len(plain)] == plain and len(quirky) > len(plain)


def test_batched_scores_equal_unpadded_forwards_in_input_order(tiny):
    tok, model = tiny
    seqs = [
        render_ids(tok, x, y, quirk=False)
        for x, y in [("a", "b"), ("Longer question here?", "Yes."), ("q", "")]
    ]
    got = score_token_sequences(model, seqs, batch_size=2, progress=False)
    with torch.no_grad():
        want = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.dtype == np.float64
    with pytest.raises(ValueError, match="Sequence 1 is empty"):
        score_token_sequences(model, [seqs[0], []], progress=False)
