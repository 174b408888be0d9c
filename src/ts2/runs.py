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
scratch when it has none. Only then does :func:`start` write anything. A status of ``running`` cannot tell
a killed run from one still running elsewhere: do not resume a folder another process is training into.
Reading folders back into records is :mod:`ts2.records`.

A **control** folder ``runs/<name>/control=<kind>`` holds the samples of a judge control "method" (issue #19
item 2a: the reference answers, the reference with its words shuffled, random tokens, the untuned base model):
its ``run.json`` says ``control: <kind>`` (:func:`mark_control`), it is scored like a run and read into a
:class:`ts2.records.RunRecord` whose ``control`` is the kind; reports list it among the judge's controls, never as a row.
A run's **temperature frontier** lives in ``<run>/frontier/t<T>/{samples,metrics}/`` (the run's own
``samples/`` and ``metrics/`` keep the table's temperature and are the frontier's point there);
:attr:`ts2.records.RunRecord.frontier` reads its metrics.
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

from ts2.conf import _dirname, scale_of
from ts2.provenance import log_to_file

log = logging.getLogger("ts2.runs")

NOT_IDENTITY = ("train.resume", "paths", "logger", "train.dataloader_num_workers", "train.keep_checkpoints")
"""Config keys a rerun may change without making it another run (left out of ``config_hash``): whether the
checkpoints stay once the run is finished changes the disk, not the model."""


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
    if path.is_file():
        keep = [r for r in log_records(path) if r.get("step", 0) <= upto_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file this stage wrote, with an error naming it when it does not parse."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); an interrupted or foreign process wrote it."
        ) from err


def is_run_folder(path: Path) -> bool:
    """A training run folder: one holding ``run.json`` (written by :func:`start`)."""
    return (Path(path) / "run.json").is_file()


def run_meta(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``run.json`` (status, method, model, scale, provenance); {} when it has none."""
    path = Path(run_dir) / "run.json"
    return read_json(path) if path.is_file() else {}


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
    saved = saved_config(run_dir)
    if not is_run_folder(run_dir) or saved is None:
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
    status = run_meta(run_dir).get("status", legacy)
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
            step = int(c.resume_from.name.split("-")[-1]) if c.resume_from else 0
            trim_log(run_dir / "train_log.jsonl", step)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        old = run_meta(run_dir)
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
    path, meta = run_dir / "run.json", run_meta(run_dir)
    meta.update(fields, status=status, updated_at=_now())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, path)


# Judge controls (issue #19 item 2a)

CONTROLS = {  # kind -> its label in the report
    "reference": "reference answers",
    "shuffled": "reference, words shuffled",
    "random": "random tokens",
    "base": "untuned base model",
}
"""The control kinds, in the order the judge must rank the first three (reference > shuffled > random)."""


def mark_control(folder: Path, kind: str, model: str | None = None, **info: Any) -> Path:
    """Make ``folder`` a control folder: ``run.json`` with ``control: <kind>``, status finished (nothing is
    trained), the model whose tokenizer or samples it holds and that model's scale. A folder that holds another
    run (a training run, or a control of another kind) is refused."""
    if kind not in CONTROLS:
        raise ValueError(f"control kind {kind!r}: expected one of {list(CONTROLS)}.")
    folder = Path(folder)
    meta = run_meta(folder)
    if meta and meta.get("control") != kind:
        what = (
            f"control={meta['control']}"
            if meta.get("control")
            else f"the run of method {meta.get('method')!r}"
        )
        raise RunFolderError(
            f"{folder}/run.json belongs to {what}, not control={kind}: write control samples into "
            f"runs/<name>/control={kind}/samples."
        )
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"control": kind, "model": model, "scale": scale_of(model) if model else None, **info}
    update_status(folder, "finished", **fields, started_at=meta.get("started_at", _now()))
    return folder


def log_records(path: Path) -> list[dict[str, Any]]:
    """train_log.jsonl's records; a torn last line (a killed run) is left out."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
