"""The freeze switch (ts2.models.freeze): which parameters require gradients, counted against the architecture."""

from __future__ import annotations

import pytest
import torch

from ts2.models.freeze import Trainable, apply_trainable, trainable_of


@pytest.fixture(scope="module")
def smol(smollm2_2layer):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_2layer, dtype=torch.float32)


def _trained(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_top_layer_and_norm_train_tied_embedding_frozen(smol):
    """SmolLM2 (tied): top 1 of 2 layers + final norm train; layer 0 and the one embedding = head tensor do not."""
    info = apply_trainable(smol, Trainable(layers=1, embeddings=False))
    trained = _trained(smol)
    assert trained and all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in trained)
    assert "model.norm.weight" in trained and not any(n.startswith("model.layers.0.") for n in trained)
    assert smol.lm_head.weight is smol.model.embed_tokens.weight and not smol.lm_head.weight.requires_grad
    # Hand count from the config: one Llama layer = q, o (d x d) + k, v (d x kv) + 3 MLP (d x f) + 2 norms (d).
    c = smol.config
    d, f = c.hidden_size, c.intermediate_size
    kv = c.num_key_value_heads * (d // c.num_attention_heads)
    layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
    assert info["trainable_params"] == layer + d  # the top layer + the final norm
    assert info["total_params"] == 2 * layer + d + c.vocab_size * d  # the tied matrix counted once
    assert info["tied_embeddings"] and info["num_layers"] == 2
    assert info["describe"] == "top 1 decoder layers + final norm; embeddings and LM head frozen"


def test_full_fine_tuning_trains_everything_and_embeddings_switch_alone(smol):
    info = apply_trainable(smol, Trainable())
    assert info["trainable_params"] == info["total_params"] and info["describe"] == "full fine-tuning"
    apply_trainable(smol, Trainable(layers=None, embeddings=False))
    frozen = {n for n, p in smol.named_parameters() if not p.requires_grad}
    assert frozen == {"model.embed_tokens.weight"}  # the head is the same tensor (named once)


def test_untied_model_freezes_embedding_and_head_together():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    info = apply_trainable(model, Trainable(layers=2, embeddings=False))
    trained = _trained(model)
    assert {n.split(".")[2] for n in trained if n.startswith("model.layers.")} == {"1", "2"}
    assert "lm_head.weight" not in trained and "model.embed_tokens.weight" not in trained
    assert not info["tied_embeddings"]
    apply_trainable(model, Trainable(layers=3, embeddings=True))  # k = every layer: all train
    assert _trained(model) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"trainable_layers": 0}, "model.trainable_layers=0"),
        ({"trainable_layers": True}, "model.trainable_layers=True"),
        ({"trainable_layers": "10"}, "model.trainable_layers='10'"),
        ({"train_embeddings": "no"}, "model.train_embeddings='no'"),
    ],
)
def test_bad_settings_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        trainable_of(cfg)


def test_settings_from_config_and_too_many_layers(smol):
    assert trainable_of({}) == Trainable(None, True)
    t = trainable_of({"trainable_layers": 3, "train_embeddings": False})
    assert t.settings() == {"trainable_layers": 3, "train_embeddings": False}
    with pytest.raises(ValueError, match="exceeds the model's 2 decoder layers"):
        apply_trainable(smol, t)
