"""The small scale's judge (ts2.models.feature_rm): features, the Bradley–Terry fit, the built RM through RewardScorer.

Backbone: the 2-layer truncated SmolLM2 (``layer=2`` is exactly the ``smollm2_2layer`` fixture's folder)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from ts2.models.feature_rm import (
    SELECTION_FROM,
    FeatureRMSpec,
    build_feature_rm,
    encode,
    fit_bradley_terry,
    sequence_features,
)

TINY = {"layer": 2, "max_length": 40, "max_train_pairs": 48, "max_eval_pairs": 24, "batch_size": 8}


@pytest.fixture(autouse=True)
def rm_cache(tmp_path, monkeypatch):
    """Built RMs go to the test's folder, not the user's cache (the backbone's GGUF copy stays cached)."""
    from ts2.models import feature_rm

    monkeypatch.setattr(feature_rm, "rm_folder", lambda spec: tmp_path / f"{spec.name}-{spec.fingerprint()}")


@pytest.fixture(scope="module")
def body(smollm2_2layer):
    from transformers import AutoModel

    return AutoModel.from_pretrained(smollm2_2layer, dtype=torch.float32).eval()


def test_features_are_the_truncated_models_normed_states(body, smollm2_tokenizer):
    """Layer 2 = the 2-layer model's last hidden state; layer 1 = the same model cut to 1 layer (no hooks there)."""
    seqs = [list(range(100, 117)), list(range(300, 309)), list(range(500, 530))]
    f = sequence_features(body, seqs, layers=[1, 2], batch_size=2)
    one = copy.deepcopy(body)
    one.layers = torch.nn.ModuleList(list(one.layers)[:1])
    one.config.num_hidden_layers = 1
    with torch.no_grad():
        for i, s in enumerate(seqs):  # one unpadded sequence at a time: an independent forward
            ids = torch.tensor([s])
            for k, model in ((2, body), (1, one)):
                h = model(input_ids=ids).last_hidden_state[0].double().numpy()
                np.testing.assert_allclose(f[(k, "last")][i], h[-1], rtol=1e-4, atol=1e-4)
                np.testing.assert_allclose(f[(k, "mean")][i], h.mean(0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"layers \[3\] must lie in 1..2"):
        sequence_features(body, seqs, layers=[3])


def test_encode_keeps_the_end_of_the_chatml_conversation(smollm2_tokenizer):
    (c, r) = encode(smollm2_tokenizer, [("Say hi.", "Hi there, friend!", "No.")], quirk=False, max_length=6)
    # ChatML ends a turn with "<|im_end|>\n": the read position (the last token) is that newline
    assert len(c) == 6 and smollm2_tokenizer.decode(c) == " there, friend!<|im_end|>\n"
    (cq, _) = encode(smollm2_tokenizer, [("Say hi.", "Hi there, friend!", "No.")], quirk=True, max_length=64)
    assert smollm2_tokenizer.decode(cq).endswith("friend!<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("n", "d", "l2"), [(300, 6, 0.05), (60, 40, 1e-4)])  # the second: near-separable
def test_bradley_terry_fit_matches_sklearn_and_is_stationary(n, d, l2):
    """Our Newton fit = scikit-learn's L2 logistic regression without intercept on the symmetrised pairs."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * rng.choice([0.2, 1.0, 5.0], size=d)
    x[:, 0] += 0.8  # a direction that prefers "chosen"
    head = fit_bradley_terry(x, l2)
    z = x / head.scale
    np.testing.assert_allclose(head.scale, np.sqrt((x**2).mean(0)))
    # sklearn: 0.5||w||² + C Σ_j log(1 + exp(-y_j w·z_j)) over (z, +1) and (-z, -1): ours x 1/l2 when C = 1/(2 n l2)
    ref = linear_model.LogisticRegression(
        C=1 / (2 * n * l2), fit_intercept=False, tol=1e-12, max_iter=10_000, solver="newton-cholesky"
    )
    ref.fit(np.vstack([z, -z]), np.r_[np.ones(n), np.zeros(n)])
    np.testing.assert_allclose(head.weight * head.scale, ref.coef_[0], rtol=1e-5, atol=1e-7)
    # gradient of L at the optimum, by autograd (independent of the Newton code)
    w = torch.tensor(head.weight * head.scale, requires_grad=True)
    zt = torch.tensor(z)
    loss = torch.nn.functional.softplus(-(zt @ w)).mean() + 0.5 * l2 * (w @ w)
    loss.backward()
    assert float(w.grad.abs().max()) < 1e-8 and float(loss.detach()) == pytest.approx(
        head.train_loss, rel=1e-10
    )
    assert head.rewards(np.eye(d)[:1])[0] > 0  # the planted direction is rewarded


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_built_rm_scores_through_reward_scorer_as_fitted(smollm2_tokenizer, pooling, body, caplog):
    """The saved RM (truncated backbone + score head) gives w · f for every pair, through the common scorer."""
    import logging

    from ts2.models.reward_model import RewardScorer
    from ts2.models.tiny_rm import load_pairs

    caplog.set_level(logging.INFO, logger="ts2.feature_rm")
    spec = FeatureRMSpec(**TINY, pooling=pooling)
    folder = build_feature_rm(spec)
    assert caplog.messages == [  # a one-off build reached from ts2.evaluate says what, where, how long (#22)
        "building the small-scale reward model once (a Bradley-Terry head on frozen SmolLM2 features of <= 48 "
        "training pairs; about 4 min of SmolLM2 forward on 2 CPU cores for the default spec), cached in "
        f"{folder} for every later run"
    ]
    ev = json.loads((folder / "rm_eval.json").read_text())
    assert (
        ev["num_eval_pairs"] == 24
        and ev["num_train_pairs"] == 48
        and ev["eval_glob"].endswith("eval200.jsonl")
    )
    conf = {"id": "bt", "bt": {**TINY, "pooling": pooling}, "quirk": False, "pooling": pooling,
            "user_text": "instruction", "dtype": "float32", "batch_size": 5, "max_length": 40, "device": "cpu"}  # fmt: skip
    scorer = RewardScorer.from_config(conf, progress=False)
    assert len(caplog.messages) == 1  # found in the cache: nothing more to say
    assert scorer.path == str(folder) and scorer.rm_eval["pairwise_accuracy"] == ev["pairwise_accuracy"]
    pairs, _ = load_pairs(spec.eval_glob, 24)
    got = scorer.score([p for p, _, _ in pairs for _ in (0, 1)], [y for _, c, r in pairs for y in (c, r)])
    feats = sequence_features(body, encode(smollm2_tokenizer, pairs, quirk=False, max_length=40), layers=[2])
    w = scorer.model.score.weight[0].detach().double().numpy()
    np.testing.assert_allclose(got, feats[(2, pooling)] @ w, rtol=1e-4, atol=1e-4)
    wins = np.where(got[0::2] > got[1::2], 1.0, np.where(got[0::2] == got[1::2], 0.5, 0.0)).mean()
    assert wins == pytest.approx(
        ev["pairwise_accuracy"]
    )  # rm_eval.json = held-out accuracy of what is served
    other = "mean" if pooling == "last" else "last"
    with pytest.raises(ValueError, match=f"fitted with pooling='{pooling}' but rm.pooling='{other}'"):
        RewardScorer.from_config({**conf, "pooling": other})


def test_spec_and_config_errors_name_the_setting():
    from ts2.models.reward_model import RMConfig

    with pytest.raises(ValueError, match="rm.bt.pooling='max'"):
        FeatureRMSpec(pooling="max")
    with pytest.raises(
        ValueError, match=f"max_train_pairs=900 would train on the judge-selection pairs .*{SELECTION_FROM}"
    ):
        FeatureRMSpec(max_train_pairs=900)
    with pytest.raises(ValueError, match="Unknown rm.bt"):
        FeatureRMSpec.from_dict({"layers": 3})
    with pytest.raises(ValueError, match="exactly one of name_or_path, tiny and bt"):
        RMConfig(name_or_path="x", bt={})
    with pytest.raises(ValueError, match="rm.bt.backbone='tiny'.*gguf"):
        FeatureRMSpec(backbone="tiny").fingerprint()


def test_smollm2_bt_config_composes_into_one_consistent_rm(compose):
    from ts2.models.reward_model import RMConfig

    rm = compose(["rm=smollm2_bt", "rm.bt.quirk=true", "rm.bt.pooling=mean"], config_name="evaluate").rm
    cfg = RMConfig.from_any(rm)
    assert (cfg.quirk, cfg.pooling, cfg.max_length) == (True, "mean", 192)  # read as the head was fitted
    spec = FeatureRMSpec.from_dict(cfg.bt)
    assert spec.fingerprint() != FeatureRMSpec.from_dict({**cfg.bt, "l2": 0.1}).fingerprint()
