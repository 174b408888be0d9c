"""`ts2.analysis.alpha_sweep` and experiments/alpha_sweep/run.sh (issue #13 item 4): the figure from synthetic
run folders through `ts2.report ... figures=[alpha_sweep]` (a PNG and a CSV; missing data refused or flagged)
and the sweep's Hydra multirun composing its 12 configs into 12 distinct run folders (in-process, nothing
trained). Its cost estimate and sampling sizes: tests/test_plan.py."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ts2.analysis import alpha_sweep as sw
from ts2.plan import multirun_configs
from ts2.records import collect

REPO = Path(__file__).resolve().parents[2]
RUN_SH = REPO / "experiments" / "alpha_sweep" / "run.sh"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _value(metric: str, alpha: float, clamp: float | None) -> float:
    """A distinct, known value per (metric, α, clamp)."""
    base = {"win_rate@1": 50.0, "win_rate@8": 60.0, "ngram": 20.0, "self_bleu": 40.0, "sent_bert": 10.0}[
        metric
    ]
    return base + 3.0 * alpha + (0.5 if clamp is None else 0.0)


def make_run(
    root: Path,
    alpha: float,
    clamp: float | None,
    *,
    metrics: bool = True,
    complete: bool = True,
    drop_ci: str | None = None,
    status: str = "finished",
) -> Path:
    run = root / f"loss.alpha={alpha:g},loss.clamp={'null' if clamp is None else clamp},method=ts2"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"loss": {"id": "ts2", "alpha": alpha, "clamp": clamp}}))
    (run / "run.json").write_text(json.dumps({"method": "ts2", "status": status, "scale": "tiny"}))
    (run / "train_log.jsonl").write_text(
        json.dumps({"step": 5, "loss": 1.0, "ce": 3.0, "entropy": 4.0, "support_size": 3.0})
        + "\n"
        + json.dumps(
            {"step": 10, "loss": 0.9, "ce": 2.8, "entropy": 3.0 - alpha, "support_size": 2.0 + alpha}
        )
        + "\n"
    )
    if metrics:
        names = ["win_rate@1", "win_rate@8", "ngram", "self_bleu", "sent_bert"]
        vals = {m: _value(m, alpha, clamp) for m in names}
        ci = {m: [v - 1.0, v + 2.0] for m, v in vals.items() if m != drop_ci}
        (run / "metrics").mkdir()
        (run / "metrics" / "alpaca_eval.json").write_text(
            json.dumps(
                {
                    "benchmark": "alpaca_eval",
                    "scale": "tiny-scale (random-init tiny model and tiny RM): pipeline check",
                    "complete": complete,
                    "note": None if complete else "3 prompts missing",
                    "metrics": vals,
                    "ci": ci,
                }
            )
        )
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "alpha_sweep_tiny"
    for clamp in sw.DEFAULT_CLAMPS:
        for alpha in sw.DEFAULT_ALPHAS:
            make_run(root, alpha, clamp)
    return root


def test_report_reads_every_run_and_draws_a_png(sweep: Path, tmp_path: Path) -> None:
    from ts2.report import report

    points = sw.collect(collect(sweep))
    assert len(points) == 12 and not any(p.missing for p in points)
    assert [(p.alpha, p.clamp) for p in points] == [
        (a, c) for c in sw.DEFAULT_CLAMPS for a in sorted(sw.DEFAULT_ALPHAS)
    ]
    p = next(p for p in points if p.alpha == 0.5 and p.clamp is None)
    assert p.metrics["ngram"] == _value("ngram", 0.5, None) == 22.0
    assert p.ci["ngram"] == (21.0, 24.0)
    assert p.train == {"entropy": 2.5, "support_size": 2.5}  # the last logged step
    assert "TINY SCALE" in sw.figure_title(points) and "FLAGGED" not in sw.figure_title(points)

    out = report(sweep, "alpha_sweep_tiny", tmp_path / "results", figures=["alpha_sweep"])
    png = out["figure:alpha_sweep.png"]
    assert png == tmp_path / "results" / "figures" / "alpha_sweep_tiny" / "alpha_sweep.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000
    assert (
        out["figure:alpha_sweep.csv"]
        == tmp_path / "results" / "figures" / "alpha_sweep_tiny" / "alpha_sweep.csv"
    )
    rows = list(csv.DictReader(out["figure:alpha_sweep.csv"].open()))
    assert len(rows) == 12
    r = next(r for r in rows if r["alpha"] == "2.0" and r["clamp"] == "0.99")
    assert (
        float(r["win_rate@8"]) == 66.0
        and float(r["win_rate@8_lo"]) == 65.0
        and float(r["win_rate@8_hi"]) == 68.0
    )


def test_missing_results_are_refused_or_flagged(sweep: Path, tmp_path: Path) -> None:
    root = sweep
    # one run never evaluated, one incomplete metrics file, one metric without CI
    import shutil

    for bad in ("loss.alpha=1,loss.clamp=null,method=ts2", "loss.alpha=0.1,loss.clamp=0.99,method=ts2"):
        shutil.rmtree(root / bad)
    make_run(root, 1.0, None, metrics=False)
    make_run(root, 0.1, 0.99, complete=False, drop_ci="sent_bert")
    with pytest.raises(ValueError, match=r"2 run\(s\) of the sweep lack results") as err:
        sw.collect(collect(root))
    msg = str(err.value)
    assert "loss.alpha=1,loss.clamp=null" in msg and "no metrics/alpaca_eval.json" in msg
    assert "incomplete (3 prompts missing)" in msg and "no CI for ['sent_bert']" in msg
    points = sw.collect(collect(root), allow_missing=True)
    flagged = [p for p in points if p.missing]
    assert {(p.alpha, p.clamp) for p in flagged} == {(1.0, None), (0.1, 0.99)}
    title = sw.figure_title(points)
    assert "FLAGGED" in title and "α=1/clamp off" in title and "α=0.1/clamp 0.99" in title
    png = sw.sweep_figure(points, tmp_path / "flagged.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    from ts2.analysis.figures import FigureOptions, alpha_sweep

    with pytest.raises(ValueError, match="lack results"):
        alpha_sweep(collect(root), tmp_path / "r", FigureOptions())
    flagged_png, _ = alpha_sweep(collect(root), tmp_path / "r", FigureOptions(allow_missing=True))
    assert flagged_png.read_bytes()[:8] == PNG_MAGIC


def test_bad_sweeps_are_clear_errors(tmp_path: Path) -> None:
    root = tmp_path / "s"
    make_run(root / "a", 0.25, 0.99)
    make_run(root / "b", 0.25, 0.99)
    with pytest.raises(ValueError, match=r"two runs with alpha=0.25, clamp=0.99"):
        sw.collect([*collect(root / "a"), *collect(root / "b")])
    with pytest.raises(ValueError, match="no run folders"):
        sw.collect([])
    ce = tmp_path / "ce" / "method=ce"
    ce.mkdir(parents=True)
    (ce / "config.yaml").write_text(yaml.safe_dump({"loss": {"id": "ce"}}))
    (ce / "run.json").write_text(json.dumps({"method": "ce", "status": "finished"}))
    with pytest.raises(ValueError, match=r"loss \('ce'\) has no alpha"):
        sw.collect(collect(tmp_path / "ce"))
    with pytest.raises(ValueError, match="no run has metric 'pass@1'"):
        sw.sweep_figure(sw.collect(collect(root / "a")), tmp_path / "x.png", metrics=["pass@1"])
    from ts2.analysis.figures import FigureOptions, NoData, alpha_sweep

    with pytest.raises(NoData, match="at least two α values"):  # one α is not a sweep: the figure is skipped
        alpha_sweep(collect(root / "a"), tmp_path / "r", FigureOptions())
    # a Table-1 folder of TS² rows (α 0.25, and α 1 with two seed runs): not a sweep, so the figure is skipped
    rows = tmp_path / "rows"
    make_run(rows, 0.25, 0.99)
    make_run(rows / "seed1", 1.0, 0.99)
    make_run(rows / "seed2", 1.0, 0.99)
    runs = [*collect(rows), *collect(rows / "seed1"), *collect(rows / "seed2")]
    with pytest.raises(NoData, match=r"one run per \(α, clamp\)"):
        alpha_sweep(runs, tmp_path / "r", FigureOptions())


def _dry_run(**env: str) -> list[str]:
    """The training overrides run.sh passes to `python -m ts2.train -m` (DRY_RUN=1 runs nothing)."""
    out = subprocess.run(
        ["bash", str(RUN_SH)],
        env={**os.environ, "DRY_RUN": "1", "PY": sys.executable, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "Estimated cost: " in out.splitlines()[0]  # the cost comes first
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("TRAIN_OVERRIDE ")]


def test_the_multirun_composes_12_configs_with_distinct_run_folders() -> None:
    from ts2.runs import default_run_dir

    overrides = _dry_run()
    assert "loss.alpha=0,0.1,0.25,0.5,1,2" in overrides and "loss.clamp=0.99,null" in overrides
    cfgs = multirun_configs(overrides)
    assert len(cfgs) == 12
    got = {(float(c.loss.alpha), c.loss.clamp) for c in cfgs}
    assert got == {(a, c) for a in sw.DEFAULT_ALPHAS for c in sw.DEFAULT_CLAMPS}
    assert all(c.method.id == "ts2" and c.loss.id == "ts2" and c.name == "alpha_sweep_tiny" for c in cfgs)
    assert all(c.model.id == "tiny_base" for c in cfgs)  # experiment=table1_tiny: the tiny Table-1 SFT
    folders = {default_run_dir(c, c.hydra.job.override_dirname) for c in cfgs}
    assert len(folders) == 12 and {f.parent for f in folders} == {Path("runs") / "alpha_sweep_tiny"}
    assert all("loss.alpha=" in f.name and "loss.clamp=" in f.name for f in folders)


def test_run_sh_knobs_reach_the_multirun() -> None:
    overrides = _dry_run(ALPHAS="0,0.5", CLAMPS="null", OVERRIDES="debug=cpu seed=7", NAME="mini")
    cfgs = multirun_configs(overrides)
    assert sorted(float(c.loss.alpha) for c in cfgs) == [0.0, 0.5]
    assert all(
        c.loss.clamp is None and c.seed == 7 and c.train.max_steps == 8 and c.name == "mini" for c in cfgs
    )


@pytest.mark.slow
def test_micro_sweep_through_the_script(tmp_path: Path) -> None:
    """run.sh end to end at debug sizes (~2.5 min on the loaded 2-core machine, hence slow): two α (a figure needs
    two), random-init tiny model and tiny RM, 2 prompts x 2 samples: trains, samples, scores, draws the figure."""
    env = {
        "OVERRIDES": "model=tiny debug=cpu train.max_steps=2 train.save_final_model=true "
        "pipeline.sample.prompts=2 pipeline.sample.n=2 pipeline.sample.max_new_tokens=8",
        "EVAL_EXTRA": "++rm.tiny.base={pretrained:null}",  # the random-init tiny RM: no pretrained base needed
        "ALPHAS": "0.25,1",
        "CLAMPS": "0.99",
        "RUNS_DIR": str(tmp_path / "runs"),
        "RESULTS": str(tmp_path / "results"),
        "NAME": "micro",
        "PY": sys.executable,
    }
    subprocess.run(["bash", str(RUN_SH)], env={**os.environ, **env}, check=True, timeout=900)
    points = [sw.read_point(run) for run in collect(tmp_path / "runs" / "micro")]
    assert sorted((p.alpha, p.clamp, p.missing) for p in points) == [(0.25, 0.99, ()), (1.0, 0.99, ())]
    assert all({"win_rate@1", "win_rate@2", "ngram", "self_bleu", "sent_bert"} <= set(p.ci) for p in points)
    assert (tmp_path / "results" / "figures" / "micro" / "alpha_sweep.png").read_bytes()[:8] == PNG_MAGIC
