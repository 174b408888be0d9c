"""`ts2.models.source`: the one resolver of the model a stage reads (a training run folder, a model folder or
hub id, a model config), on hand-made folders (nothing is loaded). Sampling a trained run end to end:
tests/sampling/test_sample.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ts2.models.source import cfg_get, model_source, model_source_of


def _run(tmp_path: Path, status: str = "finished", final: bool = True) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    meta = {
        "status": status,
        "method": "ts2",
        "model": "tiny",
        "loss": "ts2",
        "data": "tiny",
        "git_sha": "abc",
        "config_hash": "c0ffee",
    }
    (run / "run.json").write_text(json.dumps(meta))
    saved = {"model": {"id": "tiny", "max_length": 128, "tiny": {"hidden": 8}, "chat_template_from": "x"}}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    if final:
        (run / "model").mkdir()
        (run / "model" / "config.json").write_text("{}")
    return run


def _cfg(**kw) -> OmegaConf:
    return OmegaConf.create({"run_dir": None, "model_path": None, "model": None, **kw})


def test_a_finished_run_folder_brings_its_final_model_and_settings(tmp_path):
    run = _run(tmp_path)
    src = model_source(_cfg(run_dir=str(run)))
    assert src.path == str(run / "model")
    # the saved model settings, pointed at the final model (its tokenizer carries the chat template)
    assert src.model_cfg == {
        "id": "tiny",
        "max_length": 128,
        "tiny": None,
        "gguf": None,
        "chat_template_from": None,
        "name_or_path": str(run / "model"),
        "tokenizer": None,
    }
    assert src.info == {
        "run_dir": str(run.resolve()),
        "model_path": str((run / "model").resolve()),
        "method": "ts2",
        "model": "tiny",
        "loss": "ts2",
        "data": "tiny",
        "git_sha": "abc",
        "config_hash": "c0ffee",  # what ts2.evaluate matches a sample file's model against
    }
    assert model_source_of(run, {}).path == src.path  # a positional run folder: the same resolver


def test_model_folders_hub_ids_and_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a hub id is then taken as given (offline it must be cached)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    src = model_source(_cfg(model_path=str(folder), model={"id": "tiny", "max_length": 64}))
    assert src.path == str(folder) and src.model_cfg["max_length"] == 64 and src.model_cfg["tiny"] is None
    assert src.info == {"model_path": str(folder), "model": "tiny"}
    hub = model_source_of("meta-llama/Llama-3.1-8B", {})
    assert hub.path == "meta-llama/Llama-3.1-8B" and hub.model_cfg["id"] == "Llama-3.1-8B"
    cfg = model_source_of(None, {"model": {"id": "x", "name_or_path": str(folder)}})
    assert cfg.path == str(folder) and cfg.info == {"model_path": str(folder), "model": "x"}


def test_every_bad_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Nothing to sample from"):
        model_source(_cfg())
    with pytest.raises(ValueError, match="either run_dir= or model_path="):
        model_source(_cfg(run_dir="a", model_path="b"))
    with pytest.raises(ValueError, match="drop model="):
        model_source(_cfg(run_dir="a", model={"id": "tiny"}))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        model_source(_cfg(run_dir=str(tmp_path / "nowhere")))
    killed = _run(tmp_path / "k", status="running")
    with pytest.raises(RuntimeError, match=r"did not finish \(run.json status=running\).*train.resume=true"):
        model_source(_cfg(run_dir=str(killed)))
    nofinal = _run(tmp_path / "n", final=False)
    with pytest.raises(FileNotFoundError, match="train.save_final_model=true"):
        model_source_of(nofinal, {})  # a folder with run.json is a run folder, even without model/


def test_cfg_get_reads_configs_dicts_and_objects():
    cfg = OmegaConf.create({"eval": {"metrics": {"n_bootstrap": 50, "seed": None}}})
    assert cfg_get(cfg, "eval.metrics.n_bootstrap") == 50
    assert cfg_get(cfg, "eval.metrics.seed", 0) == 0  # null -> default
    assert cfg_get({"a": {"b": 1}}, "a.b") == 1 and cfg_get({"a": None}, "a.b", "d") == "d"
    assert cfg_get(type("C", (), {"x": 3})(), "x") == 3 and cfg_get(None, "x", 9) == 9
