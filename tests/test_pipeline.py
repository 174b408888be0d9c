"""The whole chain on the tiny model, through experiments/table1/run.sh (make reproduce-table1) at debug sizes: every
stage (the GGUF conversion, the judge, training jobs with a second seed and TS²'s two α rows, sampling and scoring,
the reference-LM score on a 2-layer SmolLM2, a temperature frontier, judge controls, the report), then a rerun that
skips all of it (same code as paper scale)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_SH = REPO / "experiments" / "table1" / "run.sh"
EVALUATE = ["rm=tiny", "rm.tiny.epochs=1", "rm.tiny.max_train_pairs=32", "+rm.tiny.max_eval_pairs=16",
            "diversity.text=response", "diversity.secondary=[paper]",
            "diversity.length_cut=8"]  # fmt: skip
SUBSET = ["eval.sample.limit=3", "eval.sample.n=4", "eval.sample.max_new_tokens=16"]


def _run(module: str, *args: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, f"{module} failed:\n{res.stderr[-3000:]}"


def _quoted(items: list[str]) -> str:
    return "[" + ",".join(f'"{x}"' for x in items) + "]"  # a Hydra list of strings that hold "="


def _table1(root: Path, smollm2_2layer: Path) -> subprocess.CompletedProcess:
    """run.sh with TS² at debug sizes (~3 min on 2 idle cores, each command's start-up the main cost): 3 prompts x 4
    samples of 16 tokens of 3 benchmarks; two rows (α = 0.25, and the selected α = 1 with two seeds); a 1-epoch judge
    on 32 pairs; ref_lm on the 2-layer SmolLM2; a frontier point at T = 1.0 of the selected row's first seed; the
    shuffled and base-model controls. The cache is the test's own, but for the converted SmolLM2 (built by the
    conftest fixture)."""
    from ts2.paths import cache_dir

    cache = root / "cache"
    if not cache.is_dir():
        cache.mkdir()
        (cache / "gguf").symlink_to(cache_dir() / "gguf")
    overrides = [
        "debug=cpu", f"paths.runs_dir={root / 'runs'}", "pipeline.evals=[alpaca_eval,creative_poem,humaneval]",
        "pipeline.sample.prompts=3", "pipeline.sample.prompts_humaneval=3", "pipeline.sample.n=4",
        "pipeline.sample.max_new_tokens=16", "pipeline.seeds_for={methods:[ts2],seeds:2}", "pipeline.tspd_rows=4",
        f"pipeline.heldout_ce={_quoted(['eval.sample.limit=8'])}",
        f"pipeline.rm={_quoted(['quirk=false', 'epochs=1', 'max_train_pairs=32', 'max_eval_pairs=16'])}",
        f"pipeline.evaluate={_quoted(EVALUATE)}", f"+pipeline.ref_lm.ref_model_path={smollm2_2layer}",
        "pipeline.frontier={temperatures:[1.0],methods:[ts2],seeds:1}", "pipeline.controls=[shuffled,base]",
        "pipeline.token_distribution=false",
    ]  # fmt: skip
    env = {**os.environ, "PY": sys.executable, "TS2_CACHE_DIR": str(cache), "METHODS": "ts2", "RUN_NAME": "t1",
           "RESULTS_DIR": str(root / "results"), "OVERRIDES": " ".join(overrides)}  # fmt: skip
    return subprocess.run(["bash", str(RUN_SH)], env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def table(tmp_path_factory, smollm2_2layer):
    root = tmp_path_factory.mktemp("pipeline")
    res = _table1(root, smollm2_2layer)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    folders = [p for p in (root / "runs" / "t1").iterdir() if (p / "run.json").is_file()]
    runs = sorted(
        (f for f in folders if "control" not in json.loads((f / "run.json").read_text())),
        key=lambda f: (json.loads((f / "run.json").read_text())["method"], f.name),
    )
    return root, runs, res


def test_every_stage_writes_its_files(table):
    root, runs, res = table
    names = [r.name for r in runs]
    assert names == [
        "debug=cpu,experiment=table1_tiny,loss.alpha=1,method=ts2",
        "debug=cpu,experiment=table1_tiny,loss.alpha=1,method=ts2,seed=1235",
        "debug=cpu,experiment=table1_tiny,method=ts2",
    ]
    for run in runs:
        for bench in ("alpaca_eval", "creative_poem", "humaneval"):
            lines = (run / "samples" / f"{bench}.jsonl").read_text().splitlines()
            assert len(lines) == 3 * 4
            m = json.loads((run / "metrics" / f"{bench}.json").read_text())
            assert m["complete"] and m["num_prompts"] == 3 and m["limit"] == 3
            assert m["scale"].startswith("tiny-scale")  # tiny numbers are labelled as such
        ae = json.loads((run / "metrics" / "alpaca_eval.json").read_text())
        assert set(ae["metrics"]) >= {
            "win_rate@1", "win_rate@2", "win_rate@4", "ngram", "self_bleu", "sent_bert", "ngram@cut8",
            "paper_ngram", "answer_tokens", "answer_words", "ended_by_eos",
        }  # fmt: skip
        wr = [ae["metrics"][f"win_rate@{n}"] for n in (1, 2, 4)]
        assert all(0 < w < 100 for w in wr) and wr == sorted(wr)  # best-of-n cannot get worse with n
        ref = json.loads((run / "metrics" / "ref_lm.json").read_text())
        assert (ref["num_prompts"], ref["num_samples"], ref["details"]["settings"]["samples_per_prompt"]) == (
            3,
            6,
            2,
        )
        assert ref["metrics"]["ref_lm"] < 0  # a mean log-likelihood per token
        assert json.loads((run / "metrics" / "heldout_ce.json").read_text())["num_prompts"] <= 8
        assert (run / "metrics" / "tspd.json").is_file()
    # the temperature frontier of TS²'s first selected-α seed: AlpacaEval at 1.0, judged and ref-LM scored
    for t in (1.0,):
        folder = runs[0] / "frontier" / f"t{t}"
        ae = json.loads((folder / "metrics" / "alpaca_eval.json").read_text())
        assert ae["complete"] and ae["sampling"]["sample"]["temperature"] == t
        assert json.loads((folder / "metrics" / "ref_lm.json").read_text())["num_samples"] == 6
    assert not (runs[1] / "frontier").exists() and not (runs[2] / "frontier").exists()
    # the judge's controls: marked folders beside the runs, scored like them
    for kind in ("shuffled", "base"):
        folder = root / "runs" / "t1" / f"control={kind}"
        assert json.loads((folder / "run.json").read_text())["control"] == kind
        for bench in ("alpaca_eval", "ref_lm"):
            assert json.loads((folder / "metrics" / f"{bench}.json").read_text())["complete"]
    stages = pd.read_csv(root / "runs" / "t1" / "stage_times.tsv", sep="\t")
    assert set(stages["stage"]) == {"base", "gguf", "rm", "train", "sample", "evaluate", "ref_lm", "heldout_ce",
                                    "tspd", "frontier", "control", "report"}  # fmt: skip
    assert (stages["status"] != "ran").sum() == (
        stages["stage"] == "gguf"
    ).sum()  # only the cached GGUF skipped


def test_a_rerun_skips_every_finished_stage(table, smollm2_2layer):
    root, runs, _ = table
    res = _table1(root, smollm2_2layer)
    assert res.returncode == 0, res.stderr[-3000:]
    stages = pd.read_csv(root / "runs" / "t1" / "stage_times.tsv", sep="\t")
    ran = stages[stages["status"] != "skipped"]
    assert set(ran["stage"]) == {"base", "report"}  # the base's manifest check and the report run every time
    assert len(stages[stages["stage"] == "train"]) == 3 and len(stages[stages["stage"] == "frontier"]) == 3


def test_rescoring_reuses_the_cached_sent_bert_embeddings(table):
    _, runs, _ = table
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
            *EVALUATE[4:],  # the pipeline's diversity texts: the same Sent-BERT inputs
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
    root, runs, res = table
    out = root / "results" / "t1"
    df = pd.read_csv(out / "t1.csv")
    trained = df[df["control"].isna()]
    assert list(trained["method"]) == ["ts2", "ts2", "ts2"] and df["control"].dropna().tolist() == [
        "shuffled",
        "base",
    ]
    for run in runs:  # every run's row holds its own metrics file's numbers
        (row,) = [r for _, r in trained.iterrows() if r["run"] == run.name]
        ae = json.loads((run / "metrics" / "alpaca_eval.json").read_text())["metrics"]
        assert row["alpaca_eval/win_rate@4"] == pytest.approx(ae["win_rate@4"])
        assert row["alpaca_eval/win_rate@max"] == pytest.approx(ae["win_rate@4"])
        ref = json.loads((run / "metrics" / "ref_lm.json").read_text())["metrics"]
        assert row["ref_lm/ref_lm"] == pytest.approx(ref["ref_lm"])
    assert set(trained["row"]) == {"TS² (α=0.25, paper)", "TS² (α=1, selected, 2 seeds)"}
    md = (out / "t1.md").read_text()
    assert md.startswith("# Table 1 (t1) — TINY SCALE (not comparable to the paper)")
    for text in ("| TS² (α=0.25, paper) |", "| TS² (α=1, selected, 2 seeds) |", "| ref-LM |",
                 "Seed noise: TS² seed 1234 − TS² seed 1235", "## Judge controls", "Control: untuned base model",
                 "## The answers: length, EOS and length-controlled diversity", "AE paper N-gram"):  # fmt: skip
        assert text in md, text
    assert (out / "t1.tex").read_text().count(r"\\") >= 3
    assert (out / "figures" / "t1" / "bon_curves.png").stat().st_size > 1000  # the win rate against n
    assert (out / "t1_samples.md").is_file()


def test_evaluate_refuses_missing_and_incomplete_samples(table, tmp_path):
    root, runs, _ = table
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
