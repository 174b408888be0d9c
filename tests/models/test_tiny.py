"""Tests for `ts2.models.tiny`: the one tiny-Llama builder against a Llama built by hand with transformers, the one
training loop against the loop it replaced (written out here: same weights bit for bit), the BPE tokenizer, the
random-init tiny model's cache, and the one command (with the old module commands that run.sh calls)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ts2.models.tiny import (
    LLAMA_SIZES,
    TinySpec,
    build_tiny_model,
    chat_ids,
    init_llama,
    main,
    spec_from_dict,
    train_loop,
)


def test_tiny_spec_head_dim_and_pretrained_switch():
    s = TinySpec()
    assert s.hidden_size // s.num_attention_heads >= 32  # vLLM CPU attention
    assert s.num_attention_heads % s.num_key_value_heads == 0
    with pytest.raises(ValueError, match="remove \\['hidden_size'\\]"):
        TinySpec(pretrained="tiny_base", hidden_size=128)
    with pytest.raises(ValueError, match="pretrained must be"):
        TinySpec(pretrained="llama")
    with pytest.raises(ValueError, match=r"Unknown tiny model spec key\(s\) \['hidden'\]"):
        spec_from_dict(TinySpec, {"hidden": 3}, "tiny model")
    assert spec_from_dict(TinySpec, {"seed": 4}, "tiny model") == TinySpec(seed=4)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_llama_is_the_seeded_transformers_llama():
    """Causal LM and score-head variants equal a LlamaConfig + seeded constructor written out by hand."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    spec = TinySpec(hidden_size=64, num_hidden_layers=1)
    ids = {"vocab_size": 40, "bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0}
    model = init_llama(spec, seed=7, tie_word_embeddings=True, **ids)
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=1024, tie_word_embeddings=True, **ids,
    )  # fmt: skip
    torch.manual_seed(7)
    assert _same(model, LlamaForCausalLM(cfg))
    assert model.generation_config.eos_token_id == [2, 3] and model.generation_config.pad_token_id == 0
    assert {k: getattr(model.config, k) for k in LLAMA_SIZES} == {k: getattr(spec, k) for k in LLAMA_SIZES}

    rm = init_llama(spec, seed=7, num_labels=1, max_position_embeddings=16, **{**ids, "eos_token_id": 2})
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=16, num_labels=1, **{**ids, "eos_token_id": 2},
    )  # fmt: skip
    torch.manual_seed(7)
    assert isinstance(rm, LlamaForSequenceClassification) and _same(rm, LlamaForSequenceClassification(cfg))
    assert rm.config.max_position_embeddings == 16 and rm.config.num_labels == 1


def _reference_loop(model, opt, batches, lr_at, max_norm):
    """The loop of tiny_base.pretrain / tiny_rm.train_rm / known_distribution.finetune before they shared one."""
    losses = []
    for step, x in enumerate(batches):
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        losses.append((float(loss.detach()), float(gnorm)))
    model.eval()
    return losses


def test_train_loop_equals_the_loops_it_replaced():
    torch.manual_seed(0)
    batches = [torch.randn(4, 3) for _ in range(6)]
    models = []
    for _ in range(2):
        torch.manual_seed(1)
        models.append(
            torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Dropout(0.3), torch.nn.Linear(5, 2))
        )
    opts = [torch.optim.AdamW(m.parameters(), lr=1.0, betas=(0.9, 0.95), weight_decay=0.1) for m in models]
    lr_at = lambda step: 1e-2 * (step + 1)  # noqa: E731
    torch.manual_seed(2)  # dropout draws from the global RNG: the same draws in the same order
    want = _reference_loop(models[0], opts[0], batches, lr_at, 0.5)
    got, modes = [], []

    def after_step(step, loss, gnorm):
        assert not loss.requires_grad
        modes.append(models[1].training)
        got.append((float(loss), float(gnorm)))

    torch.manual_seed(2)
    train_loop(models[1], opts[1], iter(batches), lambda m, x: m(x).pow(2).mean(), max_grad_norm=0.5,
               lr_at=lr_at, after_step=after_step)  # fmt: skip
    assert got == want and _same(*models) and modes == [True] * 6 and not models[1].training
    assert opts[1].param_groups[0]["lr"] == pytest.approx(6e-2)
    assert any(g > 0.5 for _, g in got)  # clipping was exercised
    # without lr_at the learning rate is left alone; `start` numbers the steps
    steps = []
    train_loop(models[1], opts[1], iter(batches[:2]), lambda m, x: m(x).sum(), max_grad_norm=1.0, start=10,
               after_step=lambda s, loss, g: steps.append(s))  # fmt: skip
    assert steps == [10, 11] and opts[1].param_groups[0]["lr"] == pytest.approx(6e-2)


def test_tiny_model_tokenizer_and_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path))
    spec = TinySpec(vocab_size=300, num_hidden_layers=1)
    path = build_tiny_model(spec)
    assert path == tmp_path / "models" / f"tiny-llama-{spec.fingerprint()}"
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == 300 and tok.decode(tok("héllo wörld")["input_ids"]) == "héllo wörld"
    assert {"<|eot_id|>", "<|start_header_id|>", "<|pad|>"} <= set(tok.get_vocab())
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|begin_of_text|><|start_header_id|>system") and text.endswith(
        "assistant<|end_header_id|>\n\n"
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    assert _same(model, init_llama(spec, seed=0, **chat_ids(tok)))
    assert model.generation_config.eos_token_id == chat_ids(tok)["eos_token_id"]
    stamp = (path / "build.json").stat().st_mtime_ns
    assert build_tiny_model(spec) == path and (path / "build.json").stat().st_mtime_ns == stamp


def test_command(tmp_path, monkeypatch, capsys):
    """One command for the tiny artefacts; no subcommand means `model` (make tiny-model)."""
    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path))
    main([])
    path = capsys.readouterr().out.strip()
    assert path == str(tmp_path / "models" / f"tiny-llama-{TinySpec().fingerprint()}")
    main(["corpus"])
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["sources"]) == {"stdlib", "metadata"} and len(summary["fingerprint"]) == 64
    with pytest.raises(ValueError, match=r"Unknown tiny RM spec key\(s\) \['epoch'\]"):
        main(["rm", "--set", "epoch=3"])
    with pytest.raises(SystemExit):
        main(["nothing"])


@pytest.mark.parametrize("module", ["ts2.models.tiny_base", "ts2.models.tiny_rm"])
def test_old_module_commands_still_run(module):
    """experiments/table1/run.sh calls `python -m ts2.models.tiny_rm --set ...` and `-m ts2.models.tiny_base`."""
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("usage: python -m ts2.models.tiny " + module.rsplit("_", 1)[-1])
