"""The real Hydra configs compose, and each method id means what PAPER.md says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException

from ts2.conf import CONF_DIR, main, method_ids, methods, scale_of
from ts2.objective import make_loss

METHODS = method_ids()  # read from conf/method/ (the list is typed once, there)


def test_methods_describe_themselves_as_the_eight_table_1_rows(capsys):
    """conf/method/*.yaml give the row label and order of Table 1 (PAPER.md §5, left to right as printed)."""
    assert [(m.id, m.name, m.order) for m in methods()] == [
        ("ce", "CE", 1),
        ("ce_wd", "CE+WD", 2),
        ("neft", "NEFT", 3),
        ("gem", "GEM", 4),
        ("ce_ls", "CE+LS", 5),
        ("sparsemax", "Sparsemax", 6),
        ("entmax15", "1.5-entmax", 7),
        ("ts2", "TS²", 8),
    ]
    assert sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml")) == sorted(METHODS)
    assert main(["methods"]) == 0  # what experiments/table1/run.sh sweeps
    assert capsys.readouterr().out == "ce,ce_wd,neft,gem,ce_ls,sparsemax,entmax15,ts2\n"


def test_models_declare_their_scale(compose):
    assert {p.stem: scale_of(p.stem) for p in (Path(CONF_DIR) / "model").glob("*.yaml")} == {
        p.stem: (
            "tiny" if p.stem.startswith("tiny") else "small" if p.stem.startswith("smollm2") else "paper"
        )
        for p in (Path(CONF_DIR) / "model").glob("*.yaml")
    }
    assert scale_of(compose(["experiment=paper_qwen2_7b"]).model) == "paper"
    assert scale_of("no_such_model") == scale_of(None) == "unspecified"


@pytest.mark.parametrize("method", METHODS)
def test_method_composes_and_its_loss_runs(compose, method):
    cfg = compose([f"method={method}"])
    assert cfg.method.id == method
    fn, _ = make_loss(cfg.loss)
    logits = torch.randn(5, 11, requires_grad=True)
    loss = fn(logits, torch.tensor([0, 3, -100, 10, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_method_settings_are_the_documented_values(compose):
    expect = {
        "ce": ("ce", {}),
        "ce_wd": ("ce", {"weight_decay": 0.1}),
        "neft": ("ce", {"neftune_noise_alpha": 5.0}),
        "gem": ("gem", {}),
        "ce_ls": ("ce_ls", {}),
        "sparsemax": ("sparsemax", {}),
        "entmax15": ("entmax15", {}),
        "ts2": ("ts2", {}),
    }
    for method, (loss_id, train) in expect.items():
        cfg = compose([f"method={method}"])
        assert cfg.loss.id == loss_id, method
        for k, v in train.items():
            assert cfg.train[k] == v, (method, k)
        if method not in ("ce_wd",):
            assert cfg.train.weight_decay == 0.0  # paper recipe: no weight decay
        if method != "neft":
            assert cfg.train.neftune_noise_alpha is None
    gem = compose(["method=gem"]).loss
    assert (gem.beta, gem.h) == (0.7, "logsigmoid")
    ts2 = compose(["method=ts2"]).loss
    assert (ts2.alpha, ts2.clamp, ts2.temperature) == (0.25, 0.99, 1.0)
    assert compose(["method=ce_ls"]).loss.epsilon == 0.1


def test_sweep_override_reaches_the_loss(compose):
    loss, _ = make_loss(compose(["method=ts2", "loss.alpha=1.5", "loss.clamp=null"]).loss)
    assert (loss.alpha, loss.clamp, loss.temperature) == (1.5, None, 1.0)


def test_paper_experiments_compose_without_loading_anything(compose):
    cfg = compose(["experiment=paper_llama31_8b", "method=ts2"])
    assert cfg.model.name_or_path == "meta-llama/Llama-3.1-8B"
    assert cfg.model.chat_template_from == "meta-llama/Llama-3.1-8B-Instruct"
    assert (cfg.data.hub_name, cfg.data.split) == ("HuggingFaceH4/ultrafeedback_binarized", "train_sft")
    t = cfg.train
    assert (t.learning_rate, t.num_train_epochs, t.adam_beta2, t.warmup_ratio) == (2e-5, 3, 0.95, 0.03)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.bf16) == (4, 4, True)
    assert cfg.model.max_length == 2048 and cfg.seed == 1234
    assert compose(["experiment=paper_qwen2_7b"]).model.id == "qwen2_7b"


def test_unknown_method_lists_the_choices(compose):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose(["method=nope"])
    msg = str(err.value)
    assert "nope" in msg and all(m in msg for m in METHODS)


def test_unknown_loss_lists_the_choices(compose):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose(["loss=nope"])
    assert "ts2_adaptive" in str(err.value)


def test_negative_alpha_is_a_clear_error(compose):
    with pytest.raises(ValueError, match=r"loss=ts2.*alpha"):
        make_loss(compose(["method=ts2", "loss.alpha=-0.1"]).loss)
