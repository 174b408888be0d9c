"""The model a stage reads: one resolver for sampling, model-scored benchmarks and the analyses.

:func:`model_source` turns a config's ``run_dir`` / ``model_path`` / ``model`` into a :class:`ModelSource` (the
folder or hub id to load, its loading settings, provenance); :func:`model_source_of` does the same for a
positional source (a run folder, a model folder or hub id, or None for ``cfg.model``). A training run folder
must have finished (:mod:`ts2.runs`), so a killed run is never read as if it were done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ts2.conf import check_model_source
from ts2.models.loading import resolve_model_path
from ts2.runs import is_run_folder, run_meta, saved_config


@dataclass(frozen=True)
class ModelSource:
    """The model to sample from: the folder/hub id to load, its loading settings and provenance."""

    path: str
    model_cfg: dict[str, Any]
    info: dict[str, Any]


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def model_source(cfg: DictConfig) -> ModelSource:
    """Turn ``run_dir`` / ``model_path`` / ``model`` of a sampling config into a :class:`ModelSource`.

    A training run folder contributes its final ``model/`` and the model settings of its ``config.yaml``;
    it must have finished (run.json status), so a killed run is never sampled as if it were done.
    """
    run_dir, model_path = cfg.get("run_dir"), cfg.get("model_path")
    model = _container(cfg.get("model")) or None
    if run_dir and model_path:
        raise ValueError("Give either run_dir= or model_path=, not both.")
    if run_dir:
        if model:
            raise ValueError("run_dir= brings its own model settings; drop model= (or use model_path=).")
        run = Path(run_dir)
        if not run.is_dir():
            raise FileNotFoundError(f"run_dir={run_dir!r} is not a directory.")
        meta = run_meta(run)
        if meta.get("status", "finished") != "finished":
            raise RuntimeError(
                f"{run} holds a training run that did not finish (run.json status={meta['status']}): resume it "
                "with `python -m ts2.train ... train.resume=true` before sampling it."
            )
        final = run / "model"
        if not (final / "config.json").is_file():
            raise FileNotFoundError(
                f"{run} has no final model ({final}/config.json): train with train.save_final_model=true, "
                f"or pass model_path=<a checkpoint folder> instead."
            )
        saved = saved_config(run)
        model_cfg: dict[str, Any] = dict(_container(saved.get("model")) or {}) if saved is not None else {}
        # The saved tokenizer already carries the chat template the run trained with.
        model_cfg.update(
            name_or_path=str(final), tiny=None, gguf=None, tokenizer=None, chat_template_from=None
        )
        info = {
            "run_dir": str(run.resolve()),
            "model_path": str(final.resolve()),
            **{k: meta.get(k) for k in ("method", "model", "loss", "data", "git_sha", "config_hash")},
            **({"weights": meta["weights"]} if meta.get("weights") else {}),
        }
        return ModelSource(str(final), model_cfg, info)
    if model_path:
        check_model_source({"name_or_path": model_path}, "model_path")
        model_cfg = dict(model or {})
        model_cfg.update(name_or_path=str(model_path), tiny=None, gguf=None)
        model_cfg.setdefault("id", Path(str(model_path)).name)
        return ModelSource(
            str(model_path), model_cfg, {"model_path": str(model_path), "model": model_cfg["id"]}
        )
    if model:
        path = resolve_model_path(model)
        info = {"model_path": path, "model": model.get("id")}
        if model.get("provenance"):
            info["weights"] = model["provenance"]  # where the weights come from (e.g. a dequantized GGUF)
        return ModelSource(path, dict(model), info)
    raise ValueError(
        "Nothing to sample from: give run_dir=<training run folder>, model_path=<model> or model=<config>."
    )


def cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b`` for a DictConfig, dict or object, ``default`` where a part is missing or null."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def model_source_of(source: str | Path | None, cfg: Any) -> ModelSource:
    """The model a model-scored benchmark reads (heldout_ce, tspd): a training run folder, a model folder or
    hub id, or (``source=None``) ``cfg.model``."""
    model = cfg_get(cfg, "model")
    run_dir = model_path = None
    if source is not None:
        p = Path(source)
        if (p / "model" / "config.json").is_file() or is_run_folder(p):
            run_dir, model = str(p), None
        else:
            model_path = str(source)
    return model_source(OmegaConf.create({"run_dir": run_dir, "model_path": model_path, "model": model}))
