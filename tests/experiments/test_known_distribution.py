"""Tests for the known-distribution testbed (`experiments/known_distribution/testbed.py` and its command `run.py`):
the exact metrics on hand-built distributions and against Monte-Carlo sampling, the task construction, the methods'
settings and loss against the Trainer's objective, NEFT, the outputs that never overwrite another configuration's
(issue 22), a micro end-to-end run; slow tier: the committed results reproduced for one seed, and a reduced run."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from experiments.known_distribution import run as kd_run
from experiments.known_distribution.testbed import (
    ExperimentConfig,
    TaskSpec,
    _answer_loss,
    answer_metrics,
    build_task,
    check_outputs,
    config_of,
    make_model,
    method_setup,
    quick_config,
    run_experiment,
    t_ci,
    write_outputs,
    zipf,
)

from ts2.conf import method_ids

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "results" / "known_distribution"
MICRO = ExperimentConfig(  # seconds: 2 categories x 2 valid answers, 5 pre-training steps
    methods=("ce", "neft"),
    seeds=(0, 1),
    spec=TaskSpec(n_categories=2, k_valid=2, n_items=6, n_sft_items=3, n_pool=8),
    pretrain_steps=5,
    batch_size=2,
    paper_epochs=1,
    extended_epochs=2,
    eval_every=2,
)

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


@pytest.mark.parametrize("method", ["ce", "ts2"])
def test_answer_loss_is_the_trainers_objective(method):
    """The testbed's loss on the answer and end-of-turn tokens = ts2.train's objective (CausalLMObjective) on the
    same sequences with every other label ignored."""
    from ts2.objective import CausalLMObjective

    spec = TaskSpec()
    task = build_task(spec, seed=0)
    model = make_model(spec, seed=0)
    seqs = torch.from_numpy(task.sft[:16])
    loss_fn = method_setup(method).loss_fn
    labels = seqs.clone()
    labels[:, :4] = -100  # BOS, category, item, SEP: prompt tokens
    objective = CausalLMObjective(loss_fn)
    objective.log_ce_now = False
    want = objective(model(input_ids=seqs), labels)
    assert _answer_loss(model, seqs, loss_fn).item() == pytest.approx(want.item(), rel=1e-6)


def test_micro_run_neft_and_outputs(tmp_path, monkeypatch):
    """A micro run end to end: every epoch end evaluated; NEFT (transformers' hook, as the Trainer) changes
    training but not the evaluation before it, and is removed afterwards; the outputs are written, rewritten by
    the same configuration, and refused to another."""
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    res = run_experiment(MICRO, log=lambda s: None)
    by = {(r["seed"], r["method"], r["regime"]): r["records"] for r in res["runs"]}
    ce, neft = by[(0, "ce", "extended")], by[(0, "neft", "extended")]
    assert ce[0] == neft[0]  # same base, evaluated in eval mode: no noise
    assert ce[-1]["seen"]["kl"] != neft[-1]["seen"]["kl"]  # the noise changed training
    # 6 SFT rows, batch 2: 3 steps per epoch; evaluated every 2 steps and at each epoch end (steps 2, 3, 4, 6)
    assert [r["epoch"] for r in ce] == pytest.approx([0, 2 / 3, 1, 4 / 3, 2])
    assert res["hyperparameters"]["neft"]["neft_alpha"] == 5.0
    paths = write_outputs(res, tmp_path, suffix="_micro")
    assert {p.name for p in paths.values()} == {
        "results_micro.json", "summary_micro.md", "known_distribution_micro.png", "known_distribution_micro_paper.png"
    }  # fmt: skip
    assert json.loads(paths["json"].read_text())["config"]["seeds"] == [0, 1]
    write_outputs(res, tmp_path, suffix="_micro")  # the same configuration may replace its files
    other = {**res, "config": config_of(dataclasses.replace(MICRO, seeds=(0,)))}
    with pytest.raises(
        ValueError, match=r"results_micro.json holds a run of another configuration \(differing: seeds\)"
    ):
        write_outputs(other, tmp_path, suffix="_micro")


def _committed_copy(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / "known_distribution").mkdir(parents=True)
    for name in ("results.json", "results_mode.json"):
        shutil.copy(COMMITTED / name, out / "known_distribution" / name)
    return out


def test_a_variant_never_overwrites_the_committed_results(tmp_path, monkeypatch):
    """Issue 22: `--sft-answer mode --seeds 3` used to overwrite results/known_distribution/results.json. The
    variant's default suffix is "_mode", and the 5-seed results_mode.json there is refused before any training."""
    out = _committed_copy(tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "known_distribution").iterdir()}
    monkeypatch.setattr(kd_run, "run_experiment", lambda cfg: pytest.fail("trained although refused"))
    with pytest.raises(SystemExit):
        kd_run.main(["--sft-answer", "mode", "--seeds", "3", "--out", str(out)])
    assert {p.name: p.read_bytes() for p in (out / "known_distribution").iterdir()} == before
    with pytest.raises(
        ValueError, match=r"results_mode.json holds a run of another configuration \(differing: seeds\)"
    ):
        check_outputs(
            config_of(
                dataclasses.replace(ExperimentConfig(), seeds=(0, 1, 2), spec=TaskSpec(sft_answer="mode"))
            ),
            out,
            "_mode",
        )
    # the committed configurations themselves are accepted (make known-distribution reruns them in place)
    check_outputs(config_of(ExperimentConfig()), out)
    check_outputs(config_of(ExperimentConfig(spec=TaskSpec(sft_answer="mode"))), out, "_mode")
    # with a suffix of its own the variant runs, and writes only its own names
    seen = {}
    monkeypatch.setattr(kd_run, "run_experiment", lambda cfg: {"config": config_of(cfg)})
    monkeypatch.setattr(
        kd_run, "write_outputs", lambda res, o, suffix: seen.update(res=res, out=o, suffix=suffix) or {}
    )
    kd_run.main(["--sft-answer", "mode", "--seeds", "3", "--out", str(out), "--suffix", "_mode3"])
    assert seen["suffix"] == "_mode3" and list(seen["res"]["config"]["seeds"]) == [0, 1, 2]
    assert seen["res"]["config"]["spec"]["sft_answer"] == "mode"
    assert {p.name: p.read_bytes() for p in (out / "known_distribution").iterdir()} == before


@pytest.mark.slow
def test_committed_results_reproduce_for_one_seed(tmp_path):
    """The moved code (package losses, transformers' NEFT hook, ts2.models.tiny's loop) reproduces the committed
    results/known_distribution/results.json exactly: seed 0, CE, NEFT and TS², the paper regime (every record)."""
    cfg = dataclasses.replace(
        ExperimentConfig(), methods=("ce", "neft", "ts2"), seeds=(0,), extended_epochs=1
    )
    res = json.loads(json.dumps(run_experiment(cfg, log=lambda s: None)))
    committed = json.loads((COMMITTED / "results.json").read_text())
    from experiments.known_distribution.testbed import _rounded

    for r in res["runs"]:
        if r["regime"] == "paper":
            ref = next(
                x
                for x in committed["runs"]
                if (x["seed"], x["method"], x["regime"]) == (0, r["method"], "paper")
            )
            assert _rounded(r["records"]) == ref["records"], r["method"]


@pytest.mark.slow
def test_reduced_experiment_end_to_end(tmp_path, monkeypatch):
    """Reduced run (2 seeds, 3 methods): outputs exist, and single-answer SFT with CE collapses toward the
    SFT answer (its probability rises and coverage of the valid set falls) when every prompt's SFT answer is
    the mode."""
    import dataclasses

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
