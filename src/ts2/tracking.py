"""wandb: one wandb run holds one training run's whole story (issue #13 item 6).

``ts2.train`` with ``logger=wandb`` opens the wandb run of its run folder (:func:`init_wandb`: id = the first
16 hex digits of sha1(the folder's resolved path), files under ``<run_dir>/wandb/``). ``ts2.sample`` and
``ts2.evaluate`` given that ``run_dir=`` reopen the SAME run (same id, ``resume="allow"``). Every stage takes
its settings from one builder, :func:`run_settings` (the training's live config, or the folder's saved one),
so project, group, name and tags are equal (method id, model id, ``alpha=<α:g>``, ``seed=<seed>``, then
``logger.tags``). The stages add:

* ``ts2.sample``: ``samples/<bench>`` (a ``wandb.Table`` of the first few prompts with all their N samples:
  prompt_id, sample_idx, prompt, completion, finish_reason, num_tokens) and, in the summary,
  ``sample/<bench>/{num_prompts,num_samples,complete,mean_tokens}``;
* ``ts2.evaluate``: in the summary ``eval/<bench>/<metric>`` with ``.../ci_lo``, ``.../ci_hi`` (95% CI) and
  ``eval/<bench>/{num_prompts,num_samples,complete}``; for a best-of-n benchmark the table
  ``eval/<bench>/bon`` (n, win_rate, ci_lo, ci_hi) and its line plot ``eval/<bench>/bon_curve``; for TSPD the
  table ``eval/tspd/quantities`` (quantity, mean, CI, q05…q95).

Whether to log: ``wandb=null`` (default in conf/sample.yaml and conf/evaluate.yaml) follows the training run
(its ``config.yaml`` has ``logger.backend: wandb``); ``wandb=true`` forces it, ``wandb=false`` turns it off.
Offline unless ``WANDB_API_KEY`` is set (``WANDB_MODE=offline``; sync later with ``wandb sync
<run_dir>/wandb/offline-run-*``: the stage runs share the id, so they land in one wandb run). Scalars go to
the run summary (a reopened offline run restarts its step counter, so history steps would collide).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ts2.runs import saved_config

log = logging.getLogger("ts2.tracking")

SAMPLE_TABLE_PROMPTS = 4  # prompts (with all their samples) in the sample table


def wandb_id(run_dir: str | Path) -> str:
    """The wandb run id of a run folder, the same for every stage."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def run_settings(cfg: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The ``wandb.init`` arguments of a run folder from its config (a plain dict): the one settings builder.

    Tags: the method id, the model id, ``alpha=<α:g>`` when the loss has one (``alpha=1``, ``alpha=0.25``),
    ``seed=<seed>``, then ``logger.tags``. The group is ``logger.group``, else the experiment ``name``.
    """
    run = Path(run_dir)
    lg = cfg.get("logger") or {}
    alpha = (cfg.get("loss") or {}).get("alpha")
    tags = [
        (cfg.get("method") or {}).get("id"),
        (cfg.get("model") or {}).get("id"),
        None if alpha is None else f"alpha={float(alpha):g}",
        None if cfg.get("seed") is None else f"seed={cfg['seed']}",
        *(str(t) for t in lg.get("tags") or []),
    ]
    group = lg.get("group")
    if isinstance(group, str) and "${" in group:  # an unresolved ${name} (a folder saved before config.yaml)
        group = None
    return {
        "project": lg.get("project") or "ts2",
        "entity": lg.get("entity"),
        "group": group or cfg.get("name"),
        "tags": list(dict.fromkeys(t for t in tags if t)),
        "id": wandb_id(run),
        "name": run.name,
        # absolute: a wandb service shared with a parent process resolves a relative dir against ITS cwd
        "dir": str(run.resolve()),
        "resume": "allow",
    }


def _saved(run: Path) -> dict[str, Any]:
    saved = saved_config(run)
    out = OmegaConf.to_container(saved, resolve=False) if saved is not None else {}
    return out if isinstance(out, dict) else {}


def wandb_settings(run_dir: str | Path | None, force: bool | None) -> dict[str, Any] | None:
    """The wandb.init arguments for a later stage of ``run_dir`` (its saved config), or None when it should
    not log.

    ``force``: None follows the training run's saved ``logger.backend``; True logs (needs ``run_dir``);
    False never logs.
    """
    if force is False:
        return None
    if not run_dir:
        if force:
            log.warning(
                "wandb=true needs run_dir=<training run folder> (its wandb run is reopened); not logging."
            )
        return None
    saved = _saved(Path(run_dir))
    if force is None and (saved.get("logger") or {}).get("backend") != "wandb":
        return None
    return run_settings(saved, run_dir)


def _init(job_type: str, settings: dict[str, Any], **extra: Any) -> Any:
    import wandb

    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    return wandb.init(job_type=job_type, **settings, **extra)


def init_wandb(cfg: DictConfig, run_dir: Path) -> Any:
    """The training's wandb run of its run folder (offline without WANDB_API_KEY); a resumed training
    continues it (one wandb run per run folder)."""
    full = OmegaConf.to_container(cfg, resolve=True)
    return _init("train", run_settings(full, run_dir), config=full)


@contextmanager
def stage_run(run_dir: str | Path | None, job_type: str, force: bool | None = None) -> Iterator[Any]:
    """The training run's wandb run reopened for one stage (None when not logging); finished on exit."""
    settings = wandb_settings(run_dir, force)
    if settings is None:
        yield None
        return
    import wandb

    run = _init(job_type, settings)
    try:
        yield run
    finally:
        wandb.finish()


def _stage(cfgs: Sequence[DictConfig], job_type: str) -> AbstractContextManager[Any]:
    """:func:`stage_run` of the training run the stage's configs name (yields None without configs)."""
    if not cfgs:
        return nullcontext()
    force = cfgs[0].get("wandb")
    if force is not None and not isinstance(force, bool):
        raise ValueError(f"wandb={force!r}: expected null (follow the training run), true or false.")
    return stage_run(cfgs[0].get("run_dir"), job_type, force)


def sample_table(path: Path, k: int = SAMPLE_TABLE_PROMPTS) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the sample table: the first ``k`` prompts of a sample file, all their samples."""
    from ts2.sampling.store import read_samples

    samples = read_samples(path)
    first = list(dict.fromkeys(str(s.prompt_id) for s in samples))[:k]
    keep = sorted(
        (s for s in samples if str(s.prompt_id) in first),
        key=lambda s: (first.index(str(s.prompt_id)), s.sample_idx),
    )
    cols = ["prompt_id", "sample_idx", "prompt", "completion", "finish_reason", "num_tokens"]
    return cols, [
        [str(s.prompt_id), s.sample_idx, s.prompt, s.completion, s.finish_reason, s.num_tokens] for s in keep
    ]


def log_samples(cfgs: Sequence[DictConfig], paths: Sequence[Path]) -> None:
    """``ts2.sample``: the sample table and sizes of each benchmark, into the training run's wandb run."""
    with _stage(cfgs, "sample") as run:
        if run is None:
            return
        import wandb

        from ts2.sampling.store import read_samples

        for cfg, path in zip(cfgs, paths, strict=True):
            bench = cfg.eval.id
            cols, rows = sample_table(Path(path))
            samples = read_samples(Path(path))
            meta_path = Path(path).with_suffix(".meta.json")
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            tokens = [s.num_tokens for s in samples if s.num_tokens is not None]
            run.summary.update(
                {
                    f"sample/{bench}/num_prompts": len({str(s.prompt_id) for s in samples}),
                    f"sample/{bench}/num_samples": len(samples),
                    f"sample/{bench}/complete": bool(meta.get("complete", False)),
                    **({f"sample/{bench}/mean_tokens": sum(tokens) / len(tokens)} if tokens else {}),
                }
            )
            run.config.update(
                {f"sample/{bench}": OmegaConf.to_container(cfg.sample, resolve=True)}, allow_val_change=True
            )
            wandb.log({f"samples/{bench}": wandb.Table(columns=cols, data=rows)})
        log.info("wandb: logged %d sample table(s) to run %s", len(paths), run.id)


def evaluation_summary(mfile: dict[str, Any]) -> dict[str, Any]:
    """The summary entries of one metrics file (``metrics/<bench>.json``): numbers, CIs and sizes."""
    bench = mfile["benchmark"]
    out: dict[str, Any] = {}
    for k, v in (mfile.get("metrics") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"eval/{bench}/{k}"] = v
    for k, ci in (mfile.get("ci") or {}).items():
        if ci and len(ci) == 2:
            out[f"eval/{bench}/{k}/ci_lo"], out[f"eval/{bench}/{k}/ci_hi"] = float(ci[0]), float(ci[1])
    for k in ("num_prompts", "num_samples"):
        if mfile.get(k) is not None:
            out[f"eval/{bench}/{k}"] = mfile[k]
    out[f"eval/{bench}/complete"] = bool(mfile.get("complete", False))
    return out


def bon_rows(mfile: dict[str, Any]) -> list[list[float]]:
    """[n, win rate, ci_lo, ci_hi] for each ``win_rate@<n>`` of a metrics file, n ascending."""
    from ts2.analysis.bon import win_rate_ns

    rows = []
    for n in win_rate_ns(mfile):
        lo, hi = (mfile.get("ci") or {}).get(f"win_rate@{n}") or (float("nan"), float("nan"))
        rows.append([n, float(mfile["metrics"][f"win_rate@{n}"]), float(lo), float(hi)])
    return rows


def tspd_rows(mfile: dict[str, Any]) -> list[list[Any]]:
    """[quantity, mean, ci_lo, ci_hi, q05, q25, q50, q75, q95] per TSPD quantity of ``metrics/tspd.json``."""
    m, ci = mfile.get("metrics") or {}, mfile.get("ci") or {}
    names = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in m if k.endswith("/mean")))
    rows = []
    for q in names:
        lo, hi = ci.get(f"{q}/mean") or (float("nan"), float("nan"))
        rows.append(
            [q, m[f"{q}/mean"], lo, hi, *(m.get(f"{q}/{s}") for s in ("q05", "q25", "q50", "q75", "q95"))]
        )
    return rows


def log_evaluation(cfgs: Sequence[DictConfig], paths: Sequence[Path]) -> None:
    """``ts2.evaluate``: metrics, CIs, best-of-n curve and TSPD quantities into the training run's wandb run."""
    with _stage(cfgs, "evaluate") as run:
        if run is None:
            return
        import wandb

        for path in paths:
            mfile = json.loads(Path(path).read_text())
            bench = mfile["benchmark"]
            run.summary.update(evaluation_summary(mfile))
            media: dict[str, Any] = {}
            if rows := bon_rows(mfile):
                table = wandb.Table(columns=["n", "win_rate", "ci_lo", "ci_hi"], data=rows)
                media[f"eval/{bench}/bon"] = table
                media[f"eval/{bench}/bon_curve"] = wandb.plot.line(
                    table, "n", "win_rate", title=f"{bench}: best-of-n win rate (%)"
                )
            if bench == "tspd" and (rows := tspd_rows(mfile)):
                cols = ["quantity", "mean", "ci_lo", "ci_hi", "q05", "q25", "q50", "q75", "q95"]
                media["eval/tspd/quantities"] = wandb.Table(columns=cols, data=rows)
            if media:
                wandb.log(media)
        log.info("wandb: logged %d metrics file(s) to run %s", len(paths), run.id)


# Reading offline run files back (tests; checking what a run logged before `wandb sync`)

_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc32, length, type) records


def read_offline(path: str | Path) -> list[Any]:
    """The records (``wandb_internal_pb2.Record``) of an offline ``run-<id>.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file (header {data[:7]!r}).")
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 1:  # full
            parts = [chunk]
        elif kind == 2:  # first
            buf, parts = chunk, []
        elif kind == 3:  # middle
            buf, parts = buf + chunk, []
        elif kind == 4:  # last
            parts, buf = [buf + chunk], b""
        else:  # zero padding at the end of the file
            parts = []
        for p in parts:
            rec = pb.Record()
            rec.ParseFromString(p)
            out.append(rec)
    return out


def offline_logged(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per offline wandb run under ``<run_dir>/wandb`` (in start order): id, job_type, tags, and the summary
    (key -> JSON value, later updates win) it logged."""
    out = []
    for f in sorted(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb")):
        info: dict[str, Any] = {"file": f, "summary": {}}
        for rec in read_offline(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                info.update(
                    id=rec.run.run_id,
                    job_type=rec.run.job_type,
                    tags=list(rec.run.tags),
                    group=rec.run.run_group,
                )
            elif kind in ("summary", "history"):
                items = rec.summary.update if kind == "summary" else rec.history.item
                for it in items:
                    key = it.key or "/".join(it.nested_key)
                    info["summary"][key] = json.loads(it.value_json)
        out.append(info)
    return out
