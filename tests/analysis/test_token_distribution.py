"""Tests for `ts2.analysis.token_distribution`: the official files parsed against values read by hand,
the warping against hand-computed numbers, and our model's distribution against a plain forward pass."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ts2.analysis.token_distribution import (
    OFFICIAL_FILES,
    display_token,
    mean_distribution,
    official_panels,
    read_official,
    warp,
)
from ts2.paths import data_dir

OFFICIAL = data_dir() / "ts2_token_distribution"


def test_official_files_parse_to_hand_read_values():
    hybrid = read_official(OFFICIAL / "hybrid_top20_distribution.json")
    # Record 0 of hybrid_top20_distribution.json, read by hand: top1 "42" 0.2038056105, top2 "5" 0.0529042780.
    assert hybrid[0]["42"] == pytest.approx(0.2038056105, abs=1e-12)
    assert hybrid[0]["5"] == pytest.approx(0.0529042780, abs=1e-12)
    assert hybrid[0]["7"] == pytest.approx(0.0509899482, abs=1e-12)
    pre = read_official(OFFICIAL / "pretrained_distribution.json")
    # "0.39449742436408997:10f": the ':10f' slip is stripped (SOURCES.md §7b).
    assert pre[0]["1"] == pytest.approx(0.39449742436408997, abs=1e-15)
    assert pre[0]["0"] == pytest.approx(0.13023792207241058, abs=1e-15)
    counts = {m: len(read_official(OFFICIAL / f)) for m, (f, _) in OFFICIAL_FILES.items()}
    assert counts == {"pretrained": 100, "ce": 10, "gem": 10, "sparsemax": 8, "ts2": 10}
    for m, (f, _) in OFFICIAL_FILES.items():
        for rec in read_official(OFFICIAL / f):
            assert sum(rec.values()) == pytest.approx(1.0, abs=1e-6), m


def test_official_panels_means():
    panels = {p["method"]: p for p in official_panels(OFFICIAL)}
    assert list(panels) == ["pretrained", "ce", "gem", "sparsemax", "ts2"]
    # Every CE record puts probability 1.0 on "42" (the stored distribution is after top-p).
    assert panels["ce"]["tokens"][0] == "42" and panels["ce"]["probs"][0] == pytest.approx(1.0)
    assert all(p["scale"].startswith("official 8B") for p in panels.values())
    gem = read_official(OFFICIAL / "gem_top20_distribution.json")
    assert panels["gem"]["probs"][0] == pytest.approx(sum(r.get("42", 0.0) for r in gem) / len(gem))


def test_mean_distribution_and_display():
    toks, probs = mean_distribution([{"a": 0.5, "b": 0.5}, {"a": 1.0}])
    assert toks == ["a", "b"] and probs == pytest.approx([0.75, 0.25])
    assert display_token("Ġth") == "␣th" and display_token("Ċ") == "⏎"
    with pytest.raises(ValueError, match="no records"):
        mean_distribution([])


def test_bad_probability_names_the_file(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(
        json.dumps(
            [{"generated": "1", "raw_text": "1", "distribution": {"top1": {"token": "1", "prob": "x"}}}]
        )
    )
    with pytest.raises(ValueError, match=r"bad.json record 0 top1: probability 'x' is not a number"):
        read_official(f)
    f.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="non-empty JSON list"):
        read_official(f)


def test_warp_hand_computed():
    p = np.array([0.5, 0.3, 0.2])
    # T = 1, top-p 0.7: cumulative 0.5 < 0.7, 0.8 >= 0.7 -> keep the first two, renormalise.
    np.testing.assert_allclose(warp(p, 1.0, 0.7), [0.625, 0.375, 0.0])
    # T = 0.5 squares the probabilities: (0.25, 0.09, 0.04) / 0.38; top-p 1.0 keeps all.
    np.testing.assert_allclose(warp(p, 0.5, 1.0), np.array([0.25, 0.09, 0.04]) / 0.38)
    # top-p 0.5 exactly reached by the first token: only it is kept.
    np.testing.assert_allclose(warp(p, 1.0, 0.5), [1.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR

    cache = tmp_path_factory.mktemp("cache")
    return cache, OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/model/tiny.yaml"))


def test_model_distribution_matches_forward_pass(tiny_cfg, monkeypatch):
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from ts2.analysis.token_distribution import model_distribution
    from ts2.models import resolve_model_path

    cache, cfg = tiny_cfg
    monkeypatch.setenv("TS2_CACHE_DIR", str(cache))
    d = model_distribution(None, model_cfg=cfg, n=1, seed=3, max_new_tokens=8)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(OmegaConf.create(cfg))).eval()
    step = d["steps"][0]
    ids = d["prompt_ids"] + d["generated_ids"][0][:step]
    with torch.no_grad():
        p = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1).numpy()
    top = np.argsort(-p)[:5]
    np.testing.assert_allclose(d["raw_probs"][:5], p[top], rtol=1e-5)
    assert sum(d["probs"]) <= 1 + 1e-9 and d["probs"] == sorted(d["probs"], reverse=True)
    assert d["with_digit"] in (0, 1) and 0 <= step < 8
    if d["with_digit"]:
        assert any(ch.isdigit() for ch in d["generated"][0])


def test_cli_writes_the_figures_data(tiny_cfg, tmp_path, monkeypatch):
    """The CLI measures and writes the data; the figure is ts2.report's (tests/analysis/test_figures.py)."""
    from ts2.analysis.token_distribution import main

    cache, _ = tiny_cfg
    monkeypatch.setenv("TS2_CACHE_DIR", str(cache))
    written = main(["--model", "tiny", "--n", "2", "--out", str(tmp_path), "--name", "t1"])
    src = tmp_path / "token_distribution" / "t1"  # one folder per report
    assert written == [src / "tiny_random_init.json", src / "official_8b.json"]
    assert [p["method"] for p in json.loads(written[1].read_text())] == list(OFFICIAL_FILES)
    d = json.loads((src / "tiny_random_init.json").read_text())
    assert d["n"] == 2 and len(d["tokens"]) == 50 and not math.isnan(sum(d["probs"]))
