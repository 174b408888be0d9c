"""wandb for sample/evaluate (`ts2.tracking`): the stages reopen the training run's wandb run, checked from the
offline run files (the .wandb record log), not from what the code meant to log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ts2.tracking import bon_rows, evaluation_summary, offline_logged, tspd_rows, wandb_id, wandb_settings

REPO = Path(__file__).resolve().parents[1]


def _run(module: str, *args: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, f"{module} failed:\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wb")
    _run(
        "ts2.train",
        "method=ts2",
        "debug=cpu",
        "logger=wandb",
        "train.save_final_model=true",
        "train.max_steps=2",
        "train.logging_steps=1",
        "train.save_steps=100",
        "data.limit=16",
        "name=wb",
        f"paths.runs_dir={root}",
    )
    (run,) = [p for p in (root / "wb").iterdir() if (p / "run.json").is_file()]
    subset = ["eval.sample.limit=2", "eval.sample.n=2", "eval.sample.max_new_tokens=8"]
    _run("ts2.sample", f"run_dir='{run}'", "eval=alpaca_eval", *subset)
    _run("ts2.evaluate", f"run_dir='{run}'", "eval=alpaca_eval", *subset, "rm=tiny")
    return run


def test_sample_and_evaluate_log_into_the_training_runs_wandb_run(wandb_run):
    logged = offline_logged(wandb_run)
    assert [x["job_type"] for x in logged] == ["train", "sample", "evaluate"]
    # One wandb run: the id ts2.train derived from the folder, shared by the three stages.
    assert {x["id"] for x in logged} == {wandb_id(wandb_run)}
    train, sample, evaluate = (x["summary"] for x in logged)
    assert "train/loss" in train  # the Trainer's own logging went to the same run
    assert {"ts2", "tiny", "seed=1234"} <= set(logged[1]["tags"]) and logged[1]["group"] == "wb"

    # sample: the table of the first prompts with their N=2 samples, and the sizes.
    assert sample["samples/alpaca_eval/_type"] == "table-file"
    assert sample["samples/alpaca_eval/nrows"] == 4 and sample["samples/alpaca_eval/ncols"] == 6
    table = json.loads((logged[1]["file"].parent / "files" / sample["samples/alpaca_eval/path"]).read_text())
    lines = [json.loads(x) for x in (wandb_run / "samples" / "alpaca_eval.jsonl").read_text().splitlines()]
    assert table["columns"][:4] == ["prompt_id", "sample_idx", "prompt", "completion"]
    assert sorted(r[3] for r in table["data"]) == sorted(x["completion"] for x in lines)
    assert sample["sample/alpaca_eval/num_samples"] == 4 and sample["sample/alpaca_eval/complete"] is True

    # evaluate: every metric of the metrics file with its CI, and the best-of-n table + line plot.
    m = json.loads((wandb_run / "metrics" / "alpaca_eval.json").read_text())
    for k, v in m["metrics"].items():
        if isinstance(v, (int, float)):
            assert evaluate[f"eval/alpaca_eval/{k}"] == pytest.approx(v)
    assert evaluate["eval/alpaca_eval/win_rate@2/ci_lo"] == pytest.approx(m["ci"]["win_rate@2"][0])
    assert evaluate["eval/alpaca_eval/num_prompts"] == 2
    assert evaluate["eval/alpaca_eval/bon/nrows"] == 2  # n = 1, 2
    assert evaluate["eval/alpaca_eval/bon_curve_table/_type"] == "table-file"


def _folder(tmp_path: Path, backend: str) -> Path:
    run = tmp_path / "r"
    run.mkdir(parents=True)
    cfg = {
        "name": "exp",
        "seed": 3,
        "method": {"id": "ts2"},
        "model": {"id": "tiny"},
        "loss": {"alpha": 0.5},
        "logger": {"backend": backend, "project": "p", "entity": None, "group": "${name}", "tags": ["x"]},
    }
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return run


def test_settings_follow_the_training_run_unless_forced(tmp_path):
    run = _folder(tmp_path, "wandb")
    s = wandb_settings(run, None)
    assert s["id"] == wandb_id(run) and s["resume"] == "allow" and s["dir"] == str(run.resolve())
    # a relative run_dir gives the absolute dir (a wandb service of a parent process has another cwd)
    assert wandb_settings(os.path.relpath(run), None)["dir"] == str(run.resolve())
    assert s["group"] == "exp" and s["project"] == "p"
    assert s["tags"] == ["ts2", "tiny", "alpha=0.5", "seed=3", "x"]
    assert wandb_settings(run, False) is None
    other = _folder(tmp_path / "b", "none")
    assert wandb_settings(other, None) is None and wandb_settings(other, True)["id"] == wandb_id(other)
    assert wandb_settings(None, True) is None  # no run folder: nothing to reopen (a warning says so)


@pytest.mark.parametrize(
    ("overrides", "alpha_tag"),
    [
        (["method=ts2", "loss.alpha=0"], "alpha=0"),
        (["method=ts2", "loss.alpha=0.25"], "alpha=0.25"),
        (["method=ts2", "loss.alpha=1"], "alpha=1"),
        (["method=ts2", "loss.alpha=2"], "alpha=2"),
        (["method=ce"], None),
    ],
    ids=["alpha=0", "alpha=0.25", "alpha=1", "alpha=2", "no-alpha"],
)
def test_every_stage_opens_wandb_with_the_same_settings(compose, tmp_path, monkeypatch, overrides, alpha_tag):
    """Issue #18: the training (live config) and sample/evaluate (the folder's saved config.yaml) wandb.init
    arguments are equal, so a filter on ``alpha=`` finds every stage (training once tagged ``alpha=1`` while
    the later stages tagged ``alpha=1.0``)."""
    import logging

    import wandb

    from ts2 import runs, tracking

    cfg = compose(["debug=cpu", "logger=wandb", "name=exp", *overrides])
    run_dir = tmp_path / "run"
    handler = runs.start(runs.claim(run_dir, cfg), cfg, {"method": cfg.method.id})  # writes config.yaml
    logging.getLogger().removeHandler(handler)
    handler.close()
    calls: list[dict] = []
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or kw)
    monkeypatch.setattr(wandb, "finish", lambda: None)
    tracking.init_wandb(cfg, run_dir)
    for stage in ("sample", "evaluate"):
        with tracking.stage_run(run_dir, stage) as run:
            assert run is not None  # the saved logger.backend is wandb: the stage reopens the run
    assert [c["job_type"] for c in calls] == ["train", "sample", "evaluate"]
    keys = ("project", "entity", "group", "tags", "id", "name", "dir", "resume")
    train, sample, evaluate = ({k: c[k] for k in keys} for c in calls)
    assert train == sample == evaluate
    assert train["id"] == wandb_id(run_dir) and train["group"] == "exp" and train["name"] == "run"
    alpha = [t for t in train["tags"] if t.startswith("alpha=")]
    assert alpha == ([alpha_tag] if alpha_tag else [])
    assert train["tags"][:2] == [cfg.method.id, cfg.model.id] and f"seed={cfg.seed}" in train["tags"]


def test_summary_and_tables_of_metrics_files():
    ae = {
        "benchmark": "alpaca_eval",
        "complete": True,
        "num_prompts": 5,
        "num_samples": 20,
        "metrics": {"win_rate@1": 40.0, "win_rate@4": 55.5, "ngram": 12.0, "note": "x"},
        "ci": {"win_rate@1": [30.0, 50.0], "win_rate@4": [45.0, 60.0]},
    }
    s = evaluation_summary(ae)
    assert s == {
        "eval/alpaca_eval/win_rate@1": 40.0,
        "eval/alpaca_eval/win_rate@4": 55.5,
        "eval/alpaca_eval/ngram": 12.0,
        "eval/alpaca_eval/win_rate@1/ci_lo": 30.0,
        "eval/alpaca_eval/win_rate@1/ci_hi": 50.0,
        "eval/alpaca_eval/win_rate@4/ci_lo": 45.0,
        "eval/alpaca_eval/win_rate@4/ci_hi": 60.0,
        "eval/alpaca_eval/num_prompts": 5,
        "eval/alpaca_eval/num_samples": 20,
        "eval/alpaca_eval/complete": True,
    }
    assert bon_rows(ae) == [[1, 40.0, 30.0, 50.0], [4, 55.5, 45.0, 60.0]]
    tspd = {
        "benchmark": "tspd",
        "metrics": {
            "tail@2/mean": 0.3,
            **{f"tail@2/q{q}": int(q) / 100 for q in ("05", "25", "50", "75", "95")},
        },
        "ci": {"tail@2/mean": [0.25, 0.35]},
    }
    assert tspd_rows(tspd) == [["tail@2", 0.3, 0.25, 0.35, 0.05, 0.25, 0.5, 0.75, 0.95]]
