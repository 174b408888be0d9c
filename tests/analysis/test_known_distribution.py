"""Tests for the known-distribution testbed `ts2.analysis.known_distribution`: the exact metrics on hand-built
distributions and against Monte-Carlo sampling, the task construction, the methods' settings, and (slow
tier) a reduced end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ts2.analysis.known_distribution import (
    TaskSpec,
    answer_metrics,
    build_task,
    method_setup,
    t_ci,
    zipf,
)
from ts2.conf import method_ids

P = np.array([[0.5, 0.3, 0.2, 0.0]])
Q = np.array([[0.75, 0.25, 0.0, 0.0]])
VALID = np.array([[True, True, False, False]])


def test_metrics_hand_computed():
    m = {k: float(v[0]) for k, v in answer_metrics(P, Q, VALID, n=2).items()}
    assert m["validity"] == pytest.approx(0.8)
    # coverage: P(a0 seen in 2 draws) = 1 - 0.5^2 = 0.75, P(a1) = 1 - 0.7^2 = 0.51; mean over the 2 valid answers.
    assert m["coverage"] == pytest.approx((0.75 + 0.51) / 2)
    assert m["kl"] == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.3))
    assert m["bon_valid"] == pytest.approx(1 - 0.2**2)
    assert m["bon_target"] == pytest.approx(0.75 * 0.75 + 0.25 * 0.51)
    assert m["entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)))


def test_metrics_edge_cases():
    # The model misses a valid answer entirely: KL is infinite, coverage counts it as never seen.
    p = np.array([[1.0, 0.0, 0.0, 0.0]])
    m = answer_metrics(p, Q, VALID, n=5)
    assert math.isinf(m["kl"][0]) and m["coverage"][0] == pytest.approx(0.5) and m["validity"][0] == 1.0
    # The model equals the truth: KL 0.
    assert answer_metrics(Q, Q, VALID, n=3)["kl"][0] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="outside the valid set"):
        answer_metrics(P, np.array([[0.5, 0.0, 0.5, 0.0]]), VALID, n=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        answer_metrics(P, Q, VALID, n=0)
    with pytest.raises(ValueError, match="sum to 1"):
        answer_metrics(P * 2, Q, VALID, n=2)


def test_coverage_and_best_of_n_against_simulation():
    """The closed forms against drawing N samples many times (independent of the formulas)."""
    rng = np.random.default_rng(0)
    p = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    valid = np.array([True, True, True, False, True, False])
    q = np.where(valid, [0.5, 0.2, 0.2, 0, 0.1, 0], 0.0)
    n, trials = 4, 200_000
    draws = rng.choice(len(p), size=(trials, n), p=p)
    seen = np.zeros((trials, len(p)), dtype=bool)
    np.put_along_axis(seen, draws, True, axis=1)
    targets = rng.choice(len(p), size=trials, p=q)
    sim = {
        "coverage": (seen[:, valid].sum(1) / valid.sum()).mean(),
        "bon_valid": seen[:, valid].any(1).mean(),
        "bon_target": seen[np.arange(trials), targets].mean(),
    }
    exact = answer_metrics(p[None], q[None], valid[None], n=n)
    for k, v in sim.items():
        assert float(exact[k][0]) == pytest.approx(v, abs=4e-3), k


def test_t_ci_hand_computed():
    m, lo, hi = t_ci([1.0, 2.0, 3.0])
    h = 4.303 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - h, 2.0 + h))
    assert math.isnan(t_ci([1.0])[1])


def test_task_construction():
    spec = TaskSpec()
    task = build_task(spec, seed=0)
    assert zipf(8, 1.0)[0] == pytest.approx(1 / sum(1 / k for k in range(1, 9)))
    np.testing.assert_allclose(task.q.sum(1), 1.0)
    np.testing.assert_allclose(task.q_pretrain.sum(1), 1.0)
    np.testing.assert_allclose((task.q_pretrain * task.valid).sum(1), 1 - spec.pretrain_noise)
    assert (task.valid.sum(1) == spec.k_valid).all()
    assert task.valid.sum(0).max() == 1  # disjoint valid sets
    cats = task.sft[:, 1] - spec.cat_offset
    assert task.valid[cats, task.sft[:, 4]].all()  # every SFT answer is valid for its prompt
    assert len(task.sft) == spec.n_categories * spec.n_sft_items
    mode = build_task(TaskSpec(sft_answer="mode"), seed=0)
    assert (mode.sft[:, 4] == mode.q[cats].argmax(1)).all()
    assert not np.array_equal(build_task(spec, 1).sft, task.sft)  # seeds change the SFT answers
    with pytest.raises(ValueError, match="exceeds n_pool"):
        TaskSpec(n_categories=20, k_valid=8, n_pool=128)


def test_methods_come_from_the_repo_configs():
    setups = {m: method_setup(m) for m in method_ids()}
    assert setups["ce_wd"].weight_decay == pytest.approx(0.1)
    assert setups["neft"].neft_alpha == pytest.approx(5.0)
    assert setups["ce"].weight_decay == 0.0 and setups["ce"].neft_alpha is None
    assert setups["ts2"].hyperparameters["alpha"] == pytest.approx(0.25)
    z, y = torch.tensor([[2.0, 1.0, -1.0, -3.0]]), torch.tensor([1])
    # CE of this row by hand: logsumexp(z) - z_y.
    ce = math.log(sum(math.exp(v) for v in (2.0, 1.0, -1.0, -3.0))) - 1.0
    assert float(setups["ce"].loss_fn(z, y)) == pytest.approx(ce, rel=1e-5)
    # Sparsemax loss by hand: sorted (2, 1, -1, -3), k* = 1 (1 + 2*1 = 3 > 3 fails), tau = 1, S = {0};
    # L = -z_y + (z_0^2 - tau^2) / 2 + 1/2 = -1 + 1.5 + 0.5 = 1.
    assert float(setups["sparsemax"].loss_fn(z, y)) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="Unknown method"):
        method_setup("nope")


def test_neft_noise_only_in_training():
    from ts2.analysis.known_distribution import _neft_hook

    emb = torch.nn.Embedding(10, 8)
    emb.register_forward_hook(_neft_hook(5.0))
    ids = torch.zeros(2, 6, dtype=torch.long)
    emb.eval()
    assert torch.equal(emb(ids), emb.weight[ids])
    emb.train()
    diff = emb(ids) - emb.weight[ids]
    bound = 5.0 / math.sqrt(6 * 8)
    assert 0 < diff.abs().max() <= bound


@pytest.mark.slow
def test_reduced_experiment_end_to_end(tmp_path, monkeypatch):
    """Reduced run (2 seeds, 3 methods): outputs exist, and single-answer SFT with CE collapses toward the
    SFT answer (its probability rises and coverage of the valid set falls) when every prompt's SFT answer is
    the mode."""
    import dataclasses

    from ts2.analysis.known_distribution import quick_config, run_experiment, write_outputs

    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    cfg = quick_config()
    cfg.spec = dataclasses.replace(cfg.spec, sft_answer="mode")
    res = run_experiment(cfg, log=lambda s: None)
    paths = write_outputs(res, tmp_path, suffix="_test")
    for p in paths.values():
        assert p.is_file()
    assert json.loads(paths["json"].read_text())["methods"] == {m: res["methods"][m] for m in cfg.methods}
    for r in res["runs"]:
        if r["method"] == "ce" and r["regime"] == "extended":
            first, last = r["records"][0], r["records"][-1]
            assert last["seen"]["p_sft"] > first["seen"]["p_sft"] + 0.1
            assert last["seen"]["coverage"] < first["seen"]["coverage"]
        epochs = [x["epoch"] for x in r["records"]]
        assert epochs[0] == 0 and epochs == sorted(epochs)
        assert {1.0, 2.0, 3.0} <= set(epochs)  # every epoch end is evaluated
    assert "pre-trained base" in paths["summary"].read_text()
