"""`ts2.records`: a run folder read back into a RunRecord (every number from the files written by hand here), the
collector's order and errors, seed runs pooled into rows, controls and frontiers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ts2.records import Sizes, collect, load_run


def _folder(
    root: Path,
    name: str,
    meta: dict,
    config: dict | None = None,
    log: str = "",
    summary: dict | None = None,
    metrics: dict[str, dict] | None = None,
) -> Path:
    run = root / name
    (run / "metrics").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(meta))
    if config is not None:
        (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
    if log:
        (run / "train_log.jsonl").write_text(log)
    if summary is not None:
        (run / "train_summary.json").write_text(json.dumps(summary))
    for bench, m in (metrics or {}).items():
        (run / "metrics" / f"{bench}.json").write_text(json.dumps({"benchmark": bench, **m}))
    return run


LOG = (
    '{"step": 1, "loss": 5.0, "ce": 4.5, "entropy": 3.0, "support_size": 7.0}\n'
    '{"step": 2, "loss": 4.0}\n'
    '{"step": 3, "loss": 3.0, "ce": 2.25, "entropy": 1.5}\n'
    '{"step": 4, "loss": 2.'  # torn: the run was killed while writing
)


def test_a_run_folder_read_back(tmp_path):
    run = _folder(
        tmp_path,
        "r",
        {"method": "ts2", "model": "tiny", "scale": "tiny", "status": "finished"},
        config={"seed": 7, "method": {"id": "ts2", "name": "Sparsemax+", "order": 0}, "loss": {"alpha": 0.5}},
        log=LOG,
        summary={"first_loss": 5.0, "last_loss": 3.0, "global_step": 3},
        metrics={
            "alpaca_eval": {"num_prompts": 6, "num_samples": 24, "complete": True, "scale": "tiny-scale"},
            "heldout_ce": {"num_prompts": 20, "num_samples": 0},  # no `complete`: not complete
        },
    )
    r = load_run(run)
    assert (r.path, r.name, r.status, r.finished, r.seed, r.model, r.scale) == (
        run,
        "r",
        "finished",
        True,
        7,
        "tiny",
        "tiny",
    )
    # the saved method config names the row (not conf/method/ts2.yaml's "TS²", order 8)
    assert (r.method.id, r.method.name, r.method.order) == ("ts2", "Sparsemax+", 0)
    assert r.config.loss.alpha == 0.5
    assert r.train == {"first_loss": 5.0, "last_loss": 3.0, "steps": 3, "first_ce": 4.5, "last_ce": 2.25}
    assert r.last_logged == {"entropy": 1.5, "support_size": 7.0}  # each the last step that logged it
    assert r.sizes == {"alpaca_eval": Sizes(6, 24, True), "heldout_ce": Sizes(20, 0, False)}
    assert r.metrics["alpaca_eval"]["num_prompts"] == 6
    assert r.scales == {"tiny-scale", "unspecified"}  # the metrics files' labels (heldout_ce has none)


def test_fallbacks_of_a_sparse_folder(tmp_path):
    """No config.yaml: the method comes from conf/method/ by id; no status: finished iff it has a summary."""
    bare = load_run(_folder(tmp_path, "bare", {"method": "gem"}))
    assert (bare.method.name, bare.method.order) == ("GEM", 4)
    assert (bare.status, bare.finished, bare.seed, bare.config, bare.train) == (
        "unknown",
        False,
        None,
        None,
        {},
    )
    assert bare.scales == {"unspecified"}
    done = load_run(_folder(tmp_path, "done", {"method": "ce", "scale": "paper"}, summary={"global_step": 2}))
    assert done.status == "finished" and done.train["steps"] == 2 and done.scales == {"paper"}
    with pytest.raises(ValueError, match="names its method"):
        load_run(_folder(tmp_path, "nomethod", {"status": "finished"}))


def test_collect_orders_rows_and_names_its_errors(tmp_path):
    ts2 = {"id": "ts2", "name": "TS²", "order": 8}
    _folder(tmp_path, "b_ts2", {"method": "ts2", "model": "tiny"}, config={"method": ts2})
    _folder(tmp_path, "a_ts2", {"method": "ts2", "model": "tiny"}, config={"method": ts2})
    _folder(tmp_path, "z_ce", {"method": "ce", "model": "tiny"})
    _folder(tmp_path, "big_ce", {"method": "ce", "model": "llama31_8b"})
    (tmp_path / "notes").mkdir()  # no run.json: not a run folder
    order = [r.name for r in collect(tmp_path)]
    assert order == ["big_ce", "z_ce", "a_ts2", "b_ts2"]  # model, then method order, then folder name
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        collect(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"No run folders \(sub-folders with run.json\)"):
        collect(tmp_path / "notes")


def _method_run(root: Path, name: str, mid: str, seed: int, **config) -> Path:
    method = {"id": mid, "name": {"ce": "CE", "ts2": "TS²"}[mid], "order": {"ce": 1, "ts2": 8}[mid]}
    return _folder(root, name, {"status": "finished"}, {"method": method, "seed": seed, **config})


def test_rows_pool_seed_runs_only_and_name_the_settings_that_differ(tmp_path):
    from ts2.records import claim_groups, group_runs

    _method_run(tmp_path, "ce_b", "ce", 1235, train={"lr": 1e-3})
    _method_run(tmp_path, "ce_a", "ce", 1234, train={"lr": 1e-3})
    _method_run(tmp_path, "ts2_025", "ts2", 1234, loss={"alpha": 0.25}, train={"lr": 1e-3})
    _method_run(tmp_path, "ts2_1", "ts2", 1234, loss={"alpha": 1.0}, train={"lr": 1e-3})
    _method_run(tmp_path, "ts2_1_lr", "ts2", 1234, loss={"alpha": 1.0}, train={"lr": 1e-4})
    runs = collect(tmp_path)
    groups = group_runs(runs, {"selected": 1.0, "paper": 0.25})
    assert [(g.key, g.label, [r.name for r in g.runs]) for g in groups] == [
        ("ce", "CE (2 seeds)", ["ce_a", "ce_b"]),  # by seed
        ("ts2[loss.alpha=0.25,train.lr=0.001]", "TS² (α=0.25, lr=0.001, paper)", ["ts2_025"]),
        ("ts2[loss.alpha=1,train.lr=0.0001]", "TS² (α=1, lr=0.0001, selected)", ["ts2_1_lr"]),
        ("ts2[loss.alpha=1,train.lr=0.001]", "TS² (α=1, lr=0.001, selected)", ["ts2_1"]),
    ]
    # two rows carry the selected tag: the claims take the first in table order
    chosen = claim_groups(groups)
    assert chosen["ce"].key == "ce" and chosen["ts2"].key == "ts2[loss.alpha=1,train.lr=0.0001]"
    untagged = group_runs(runs)  # no α settings: no tag, so TS² (several rows) has no claim row
    assert "ts2" not in claim_groups(untagged) and claim_groups(untagged)["ce"].label == "CE (2 seeds)"


def test_controls_and_frontiers_are_read_back(tmp_path):
    from ts2.records import group_runs
    from ts2.runs import mark_control

    run = _method_run(tmp_path, "ce", "ce", 1)
    for t, v in ((0.3, 1.0), (1.0, 2.0)):
        (run / "frontier" / f"t{t}" / "metrics").mkdir(parents=True)
        (run / "frontier" / f"t{t}" / "metrics" / "alpaca_eval.json").write_text(
            json.dumps({"metrics": {"ngram": v}})
        )
    mark_control(tmp_path / "control=shuffled", "shuffled", "tiny")
    ce, shuffled = collect(tmp_path)
    assert ce.frontier == {
        0.3: {"alpaca_eval": {"metrics": {"ngram": 1.0}}},
        1.0: {"alpaca_eval": {"metrics": {"ngram": 2.0}}},
    }
    # the run's own metrics are the frontier's point at the table's temperature (T = 0.6 here)
    (run / "metrics").mkdir(exist_ok=True)
    own = {
        "benchmark": "alpaca_eval",
        "metrics": {"ngram": 1.5},
        "sampling": {"sample": {"temperature": 0.6}},
    }
    (run / "metrics" / "alpaca_eval.json").write_text(json.dumps(own))
    assert (
        sorted(load_run(run).frontier) == [0.3, 0.6, 1.0]
        and load_run(run).frontier[0.6]["alpaca_eval"] == own
    )
    assert (shuffled.control, shuffled.method.id, shuffled.scale) == ("shuffled", "control=shuffled", "tiny")
    assert [g.key for g in group_runs([ce, shuffled])] == ["ce"]  # a control is never a row
    (run / "frontier" / "hot").mkdir()
    with pytest.raises(ValueError, match=r"frontier/hot: a frontier folder is named t<temperature>"):
        load_run(run)
