"""The whole chain on the tiny model: train -> sample -> evaluate -> report (same code as paper scale)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
EVALS = "[alpaca_eval,creative_poem,humaneval]"
SUBSET = ["eval.sample.limit=3", "eval.sample.n=4", "eval.sample.max_new_tokens=16"]


def _run(module: str, *args: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, f"{module} failed:\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    _run(
        "ts2.train",
        "-m",
        "method=ce,ts2",
        "debug=cpu",
        "train.save_final_model=true",
        "name=t1",
        f"paths.runs_dir={root}",
    )
    runs = sorted(p for p in (root / "t1").iterdir() if (p / "run.json").is_file())
    assert [json.loads((r / "run.json").read_text())["method"] for r in runs] == ["ce", "ts2"]
    for run in runs:
        _run("ts2.sample", f"run_dir='{run}'", f"eval={EVALS}", *SUBSET)
        _run("ts2.evaluate", f"run_dir='{run}'", f"eval={EVALS}", *SUBSET, "rm=tiny")
    _run("ts2.report", f"runs_dir={root / 't1'}", "name=t1", f"out_dir={root / 'results'}")
    return root, runs


def test_every_stage_writes_its_files(table):
    root, runs = table
    for run in runs:
        for bench in ("alpaca_eval", "creative_poem", "humaneval"):
            lines = (run / "samples" / f"{bench}.jsonl").read_text().splitlines()
            assert len(lines) == 3 * 4
            m = json.loads((run / "metrics" / f"{bench}.json").read_text())
            assert m["complete"] and m["num_prompts"] == 3 and m["limit"] == 3
            assert m["scale"].startswith("tiny-scale")  # tiny numbers are labelled as such
        ae = json.loads((run / "metrics" / "alpaca_eval.json").read_text())
        assert set(ae["metrics"]) >= {
            "win_rate@1",
            "win_rate@2",
            "win_rate@4",
            "ngram",
            "self_bleu",
            "sent_bert",
        }
        wr = [ae["metrics"][f"win_rate@{n}"] for n in (1, 2, 4)]
        assert all(0 < w < 100 for w in wr) and wr == sorted(wr)  # best-of-n cannot get worse with n


def test_rescoring_reuses_the_cached_sent_bert_embeddings(table):
    _, runs = table
    metrics = runs[0] / "metrics"
    cached = sorted((metrics / ".cache" / "sent_bert").glob("*.npy"))
    assert len(cached) >= 3  # alpaca_eval, creative_poem and humaneval texts: one chunk each at this size
    original = (metrics / "creative_poem.json").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    try:
        _run(
            "ts2.evaluate",
            f"run_dir='{runs[0]}'",
            "eval=creative_poem",
            *SUBSET,
            "diversity.self_bleu_mode=all_refs",
        )
        before = json.loads(original)["metrics"]
        after = json.loads((metrics / "creative_poem.json").read_text())["metrics"]
    finally:  # the report test compares the tables with this file
        (metrics / "creative_poem.json").write_text(original)
    assert after["sent_bert"] == before["sent_bert"] and after["ngram"] == before["ngram"]
    assert after["self_bleu"] != before["self_bleu"]  # the other mode was really computed
    assert sorted((metrics / ".cache" / "sent_bert").glob("*.npy")) == cached  # nothing encoded again
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes


def test_report_tables_match_the_metrics_files(table):
    root, runs = table
    out = root / "results"
    df = pd.read_csv(out / "t1.csv")
    assert list(df["method"]) == ["ce", "ts2"]
    for run, (_, row) in zip(runs, df.iterrows(), strict=True):
        ae = json.loads((run / "metrics" / "alpaca_eval.json").read_text())["metrics"]
        assert row["alpaca_eval/win_rate@4"] == pytest.approx(ae["win_rate@4"])
        assert row["alpaca_eval/win_rate@max"] == pytest.approx(ae["win_rate@4"])
    md = (out / "t1.md").read_text()
    assert "TINY-SCALE" in md and "| TS² |" in md and "| CE |" in md
    assert (out / "t1.tex").read_text().count(r"\\") >= 3
    assert (out / "figures" / "bon_curves.png").stat().st_size > 1000  # the win rate against n
    assert not (out / "t1_winrate.png").exists()  # drawn once, by the bon_curves figure


def test_evaluate_refuses_missing_and_incomplete_samples(table, tmp_path):
    root, runs = table
    res = subprocess.run(
        [sys.executable, "-m", "ts2.evaluate", f"run_dir='{tmp_path}'", "eval=creative_poem"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0 and "python -m ts2.sample" in res.stderr
    samples = tmp_path / "samples"
    samples.mkdir()
    src = runs[0] / "samples"
    (samples / "creative_poem.jsonl").write_text((src / "creative_poem.jsonl").read_text())
    meta = json.loads((src / "creative_poem.meta.json").read_text())
    meta["complete"] = False
    (samples / "creative_poem.meta.json").write_text(json.dumps(meta))
    res = subprocess.run(
        [sys.executable, "-m", "ts2.evaluate", f"run_dir='{tmp_path}'", "eval=creative_poem"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0 and "allow_incomplete=true" in res.stderr
