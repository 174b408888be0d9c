"""Tests for `ts2.analysis.figures`: every figure of the registry drawn from run records built from known values;
a figure without data is skipped (or an error when named), a broken one fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ts2.analysis.figures import FigureOptions
from ts2.eval.tspd import quantity_names, summarize, tspd_table, write_metrics
from ts2.records import collect

from .bon_runs import heldout_metrics, make_run, make_table


def _metrics_file(tmp_path, method: str, shift: float):
    rng = np.random.default_rng(0)
    n = 60
    values = {k: rng.random(n) * 0.5 + shift for k in quantity_names()}
    res = summarize(values, np.repeat(np.arange(6), 10), n_bootstrap=50)
    res.details["model"] = {"method": method, "model": "tiny"}
    res.details["ms"] = [2, 5, 10]
    return write_metrics(res, None, tmp_path / method / "metrics" / "tspd.json"), values


def test_tspd_table_and_figure(tmp_path, monkeypatch):
    from ts2.analysis.figures import tspd

    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    runs = tmp_path / "runs"
    for m in ("ce", "ts2"):
        make_run(runs, m, m, {})
    (f_ce, v_ce), _ = _metrics_file(runs, "ce", 0.0), _metrics_file(runs, "ts2", 0.3)
    fig, table_md = tspd(collect(runs), tmp_path / "results", FigureOptions(name="t1"))
    folder = tmp_path / "results" / "figures" / "t1"  # one folder per report
    assert fig == folder / "tspd.png" and fig.stat().st_size > 20_000 and table_md == folder / "tspd_table.md"
    table = table_md.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ce") or line.startswith("| ts2")]
    assert len(rows) == 2 and "| tiny |" in rows[0]
    # The CE row's head@2 cell starts with the mean of the values it was built from.
    assert rows[0].split("|")[4].strip().startswith(f"{v_ce['head@2'].mean():.3g} [")
    copied = json.loads((folder / "tspd" / "ce.json").read_text())
    assert copied["metrics"] == json.loads(f_ce.read_text())["metrics"]
    assert tspd_table([folder / "tspd" / "ts2.json"]).count("\n| ts2") == 1


def test_load_errors_name_the_file(tmp_path):
    from ts2.eval.tspd import load_tspd

    with pytest.raises(FileNotFoundError, match="No TSPD metrics file"):
        load_tspd([tmp_path])
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"benchmark": "alpaca_eval", "metrics": {}}))
    with pytest.raises(ValueError, match="x.json is not a TSPD metrics file"):
        load_tspd([bad])


# ----------------------------------------------------------------------------------------------------
# write_figures: every figure the run folders have data for (what ts2.report draws after its tables)


@pytest.fixture
def titles(monkeypatch, tmp_path):
    """The suptitle (and axis labels) of every figure saved, by file name."""
    import ts2.analysis.figures as F

    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    seen: dict[str, str] = {}
    save = F._save

    def spy(fig, path):
        texts = [fig._suptitle.get_text() if fig._suptitle else ""]
        texts += [ax.get_xlabel() + " | " + ax.get_ylabel() for ax in fig.axes]
        seen[Path(path).name] = "\n".join(texts)
        return save(fig, path)

    monkeypatch.setattr(F, "_save", spy)
    # the token-distribution panels are drawn by its module, through the shared plotting module's `save`
    import ts2.analysis.token_distribution as TD

    monkeypatch.setattr(TD, "save", spy)
    return seen


def _token_files(results, runs_dir, runs: dict[str, str], name: str) -> None:
    """results/token_distribution/<name>/: the official panels and one json per (run folder name -> method)."""
    from ts2.analysis.token_distribution import our_panel

    src = results / "token_distribution" / name
    src.mkdir(parents=True)
    official = [
        {"method": m, "label": m.upper(), "scale": "official 8B", "tokens": ["42", "7"], "probs": [0.9, 0.1]}
        for m in ("pretrained", "ce", "ts2")
    ]
    (src / "official_8b.json").write_text(json.dumps(official))
    for run, method in runs.items():
        d = {
            "tokens": ["1", "2", "⏎"],
            "probs": [0.5, 0.3, 0.2],
            "n": 10,
            "with_digit": 9,
            "model": {"run_dir": str(runs_dir / run), "method": method, "model": "tiny"},
        }
        our_panel(d, method)  # the file is valid input of the analysis helper's panel builder
        (src / f"{run}.json").write_text(json.dumps(d))


def test_write_figures_draws_every_figure_with_data(tmp_path, titles, monkeypatch):
    import ts2.analysis.figures as F

    runs_dir = make_table(tmp_path / "runs", seeds=2)
    results = tmp_path / "results"
    # token distributions of two of these runs, and of a run elsewhere (left out of the figure)
    _token_files(results, runs_dir, {"ce_s0": "ce", "ts2_s1": "ts2", "other_run": "gem"}, "t")
    panels, real = {}, F.token_distribution_figure

    def spy(rows, out, **kw):
        panels["rows"] = rows
        return real(rows, out, **kw)

    monkeypatch.setattr(F, "token_distribution_figure", spy)
    paths = F.write_figures(
        collect(runs_dir), results, options=FigureOptions("Table 1 (t) — runs/x", name="t")
    )
    names = sorted(p.name for p in paths)
    assert names == [
        "bon_curves.png",
        "quality_diversity.png",
        "token_distribution.png",
        "tspd.png",
        "tspd_table.md",
    ]
    for p in paths:
        assert p.parent == results / "figures" / "t", p  # the report's own folder
        assert p.is_file() and (p.suffix != ".png" or p.stat().st_size > 30_000)
    for png in ("bon_curves.png", "quality_diversity.png", "token_distribution.png", "tspd.png"):
        assert "TINY SCALE" in titles[png], png
    assert "n (best of the first n samples" in titles["bon_curves.png"]
    assert "held-out CE, nats/token (lower = better fit)" in titles["quality_diversity.png"]
    assert "best-of-8 win rate (%)" in titles["quality_diversity.png"]
    # Our panels: the two runs of this table, in method order; the official 8B row below.
    ours, official = panels["rows"]
    assert [p["label"] for p in ours] == ["CE", "TS²"] and ours[0]["scale"] == "tiny scale (ours)"
    assert [p["method"] for p in official] == ["pretrained", "ce", "ts2"]
    table = (results / "figures" / "t" / "tspd_table.md").read_text()
    assert "TINY SCALE" in table and table.count("\n| ts2 #") == 2 and "ts2 #2 = run ts2_s1" in table


def test_write_figures_skips_what_has_no_data_unless_named(tmp_path, titles, caplog):
    import logging

    from ts2.analysis.figures import NoData, write_figures

    make_run(tmp_path / "runs", "ce", "ce", {"heldout_ce": heldout_metrics(2.0, 0)})
    runs = collect(tmp_path / "runs")
    with caplog.at_level(logging.INFO, logger="ts2.analysis.figures"):
        assert write_figures(runs, tmp_path / "results") == []
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 6 and not (tmp_path / "results" / "figures").exists()
    assert any("frontier skipped: no row has ref_lm/ref_lm" in s for s in skipped)
    assert any("bon_curves skipped: no run has win_rate@<n>" in s for s in skipped)
    assert any("tspd skipped: no run has metrics/tspd.json" in s for s in skipped)
    assert any("alpha_sweep skipped: the α sweep needs runs whose loss has an alpha" in s for s in skipped)
    with pytest.raises(NoData, match=r"figure bon_curves: no run has win_rate@<n>"):
        write_figures(runs, tmp_path / "results", ["bon_curves"])
    with pytest.raises(ValueError, match=r"no figure \['winrate'\]; known: \['bon_curves'"):
        write_figures(runs, tmp_path / "results", ["winrate"])


def test_a_figure_that_fails_to_draw_fails(tmp_path, titles, monkeypatch):
    """Bad data is an error naming what is wrong, not a log line: the report (and its test) fails."""
    import ts2.analysis.figures as F

    runs_dir = make_table(tmp_path / "runs", seeds=2, tspd=False)
    f = runs_dir / "ts2_s1" / "metrics" / "alpaca_eval.json"
    m = json.loads(f.read_text())
    m["per_prompt"]["win_rate@1"] = m["per_prompt"]["win_rate@1"][:3]  # corrupted: 3 values for 40 prompts
    f.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="3 values but prompt_ids has 40"):
        F.write_figures(collect(runs_dir), tmp_path / "results")

    def broken(runs, out_dir, options):  # a registered figure with a bug
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(F.FIGURES, "broken", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        F.write_figures(collect(make_table(tmp_path / "ok", tspd=False)), tmp_path / "r2", ["broken"])


def test_report_writes_the_figures_after_the_tables(tmp_path, titles):
    from ts2.report import report

    runs_dir = make_table(tmp_path / "runs", tspd=False)
    paths = report(runs_dir, "t", tmp_path / "results")
    assert paths["figure:bon_curves.png"] == tmp_path / "results" / "figures" / "t" / "bon_curves.png"
    assert paths["figure:quality_diversity.png"].is_file()
    first = paths["figure:bon_curves.png"].read_bytes()
    assert "TINY" in titles["bon_curves.png"] and "Table 1 (t)" in titles["bon_curves.png"]
    assert not (tmp_path / "results" / "t_winrate.png").exists()  # the win rate against n is bon_curves
    # Another table into the same results folder draws into its own folder: the first table's figures stay.
    other = make_table(tmp_path / "runs2", tspd=False, seeds=2)
    again = report(other, "t2", tmp_path / "results")
    assert again["figure:bon_curves.png"] == tmp_path / "results" / "figures" / "t2" / "bon_curves.png"
    assert paths["figure:bon_curves.png"].read_bytes() == first != again["figure:bon_curves.png"].read_bytes()
    only = report(runs_dir, "t3", tmp_path / "results2", figures=["quality_diversity"])
    assert [k for k in only if k.startswith("figure:")] == ["figure:quality_diversity.png"]


def test_scale_label_from_metrics_or_the_runs_model():
    from ts2.analysis.figures import scale_label
    from ts2.conf import method_info
    from ts2.records import RunRecord

    def run(model, scale):
        metrics = {"x": {"scale": scale}} if scale else {}
        return RunRecord(
            Path("r"), None, "finished", method_info("ce"), None, model, None, metrics, {}, {}, {}
        )

    assert scale_label([run("tiny", None)]) == "TINY SCALE (not comparable to the paper)"
    assert scale_label([run(None, "tiny-scale (random-init tiny model and tiny RM): ...")]).startswith("TINY")
    assert scale_label([run("llama31_8b", None)]) == "paper scale"
    small = "SMALL SCALE (SmolLM2-135M on a CPU; not comparable to the paper)"
    assert scale_label([run("smollm2_135m", None)]) == scale_label([run(None, "small")]) == small
    assert scale_label([run("smollm2_135m", None), run("tiny", None)]).startswith(
        "TINY"
    )  # the smallest present
    assert scale_label([run(None, None)]) == "scale: unspecified"


def _frontier(run: Path, points: dict, prompts: int = 5, seed: int = 0) -> None:
    """``<run>/frontier/t<T>/metrics/{ref_lm,alpaca_eval}.json``: per-prompt ref-LM and N-gram around the given means."""
    noise = np.random.default_rng(seed).normal(0, 0.01, prompts)
    for t, (q, d) in points.items():
        folder = run / "frontier" / f"t{t}" / "metrics"
        folder.mkdir(parents=True)
        for bench, per in (
            ("ref_lm", {"ref_lm": list(q + noise)}),
            ("alpaca_eval", {"ngram": list(d + 10 * noise)}),
        ):
            body = {
                "benchmark": bench,
                "metrics": {k: float(np.mean(v)) for k, v in per.items()},
                "per_prompt": per,
                "prompt_ids": list(range(prompts)),
            }
            (folder / f"{bench}.json").write_text(json.dumps(body))


def test_frontier_figure_draws_one_curve_per_row_with_three_temperatures(tmp_path, titles):
    from ts2.analysis import bon
    from ts2.analysis.figures import frontier
    from ts2.records import group_runs

    runs_dir = tmp_path / "runs"
    _frontier(make_run(runs_dir, "ce", "ce", {}), {0.3: (-1.0, 10.0), 0.6: (-2.0, 20.0), 1.0: (-3.0, 30.0)})
    _frontier(make_run(runs_dir, "ts2", "ts2", {}), {0.3: (-1.5, 15.0), 0.6: (-2.5, 30.0), 1.0: (-3.5, 45.0)})
    _frontier(
        make_run(runs_dir, "sparsemax", "sparsemax", {}), {0.3: (-1.0, 5.0), 1.0: (-2.0, 6.0)}
    )  # 2 only
    runs = collect(runs_dir)
    assert sorted(runs[0].frontier) == [0.3, 0.6, 1.0]
    curves = bon.frontiers(group_runs(runs), "ref_lm/ref_lm", "alpaca_eval/ngram")
    assert [c.key for c in curves] == ["ce", "ts2"]  # sparsemax has 2 temperatures: left out
    q, d = curves[0].frontier.curve()
    assert q == pytest.approx([-1.0, -2.0, -3.0], abs=0.01) and d == pytest.approx([10, 20, 30], abs=0.1)
    (fig,) = frontier(runs, tmp_path / "results", FigureOptions("Table 1 (t)"))
    assert fig == tmp_path / "results" / "figures" / "frontier.png" and fig.stat().st_size > 10_000
    assert "Temperature frontiers" in titles["frontier.png"] and "TINY" in titles["frontier.png"]
