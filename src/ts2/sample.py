"""Sample completions for the evaluation benchmarks: ``python -m ts2.sample run_dir=<run> eval=<bench>``.

The evaluators only read the files written here (PAPER.md §4 protocol; schema in ``evaluation/README.md``):
``<out_dir>/<bench>.jsonl`` (one line per (prompt, sample)) and ``<out_dir>/<bench>.meta.json``.

Where the model comes from (exactly one of):
- ``run_dir=<training run folder>``: its final model ``<run_dir>/model`` and its model settings
  (``.hydra/config.yaml``); ``out_dir`` defaults to ``<run_dir>/samples``;
- ``model_path=<local folder or hub id>`` (optionally with ``model=<config>`` for dtype / chat template);
  ``out_dir`` defaults to ``runs/samples/<model name>``;
- ``model=<config>`` alone (e.g. ``model=tiny``, the untrained tiny model).

Hydra needs quotes around values that contain "=" (training run folders do):
``python -m ts2.sample "run_dir='runs/train/method=ts2'" eval=alpaca_eval``.

Benchmarks: ``eval=<id>`` (``conf/eval/<id>.yaml``) or a list ``eval=[alpaca_eval,humaneval]``, sampled one
after the other with the model loaded once (each benchmark's config is composed as if given alone).
``-m eval=a,b`` (a Hydra sweep) also works, loading the model per job. Sampling parameters are the
benchmark's (``eval.sample``) unless overridden: ``sample.n=8 sample.limit=20``. Backends: ``sampler=hf``
(default) or ``sampler=vllm`` (GPU, the paper's).

A rerun resumes: finished (prompt, sample) pairs are skipped, a torn last line is dropped, and the
batches regenerated give the same samples an uninterrupted run would have written
(:mod:`ts2.sampling.backends`). ``overwrite=true`` starts the benchmark's file afresh.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ts2.conf import CONF_DIR
from ts2.provenance import git_sha, versions
from ts2.sampling import samples_dir
from ts2.sampling.backends import SamplingParams
from ts2.sampling.prompts import PromptRecord
from ts2.sampling.store import REQUIRED_FIELDS, SampleStore

log = logging.getLogger("ts2.sample")

# Settings that change what a sample is: a resumed file must have been written with the same ones.
_FINGERPRINT_SAMPLE_KEYS = ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "stop")


@dataclass(frozen=True)
class ModelSource:
    """The model to sample from: the folder/hub id to load, its loading settings and provenance."""

    path: str
    model_cfg: dict[str, Any]
    info: dict[str, Any]


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def resolve_model(cfg: DictConfig) -> ModelSource:
    """Turn ``run_dir`` / ``model_path`` / ``model`` into a :class:`ModelSource` (module docstring)."""
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
        final = run / "model"
        if not (final / "config.json").is_file():
            raise FileNotFoundError(
                f"{run} has no final model ({final}/config.json): train with train.save_final_model=true, "
                f"or pass model_path=<a checkpoint folder> instead."
            )
        model_cfg: dict[str, Any] = {}
        hydra_cfg = run / ".hydra" / "config.yaml"
        if hydra_cfg.is_file():
            model_cfg = dict(_container(OmegaConf.load(hydra_cfg).get("model")) or {})
        run_json = run / "run.json"
        meta = json.loads(run_json.read_text()) if run_json.is_file() else {}
        # The saved tokenizer already carries the chat template the run trained with.
        model_cfg.update(name_or_path=str(final), tiny=None, tokenizer=None, chat_template_from=None)
        info = {
            "run_dir": str(run.resolve()),
            "model_path": str(final.resolve()),
            **{k: meta.get(k) for k in ("method", "model", "loss", "data", "git_sha")},
        }
        return ModelSource(str(final), model_cfg, info)
    if model_path:
        model_cfg = dict(model or {})
        model_cfg.update(name_or_path=str(model_path), tiny=None)
        model_cfg.setdefault("id", Path(str(model_path)).name)
        return ModelSource(
            str(model_path), model_cfg, {"model_path": str(model_path), "model": model_cfg["id"]}
        )
    if model:
        path = resolve_model_path(model)
        return ModelSource(path, dict(model), {"model_path": path, "model": model.get("id")})
    raise ValueError(
        "Nothing to sample from: give run_dir=<training run folder>, model_path=<model> or model=<config>."
    )


def load_prompts(cfg: DictConfig) -> list[PromptRecord]:
    """The benchmark's prompts (``eval.prompts`` builder), the first ``sample.limit`` of them."""
    records = hydra.utils.instantiate(cfg.eval.prompts)
    limit = cfg.sample.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"sample.limit={limit!r} must be null or a positive integer.")
        records = records[:limit]
    ids = [r.prompt_id for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"eval={cfg.eval.id}: the prompt builder returned duplicate prompt ids.")
    clash = {k for r in records[:1] for k in r.fields} & set(REQUIRED_FIELDS)
    if clash:
        raise ValueError(
            f"eval={cfg.eval.id}: prompt fields {sorted(clash)} clash with the sample-line fields."
        )
    return records


def make_backend(cfg: DictConfig, source: ModelSource) -> Any:
    """Build ``cfg.sampler`` (``_target_``: a backend class) for the model; its own errors propagate unwrapped."""
    kwargs = {k: v for k, v in _container(cfg.sampler).items() if k != "id"}
    cls = hydra.utils.get_class(kwargs.pop("_target_"))
    return cls(model_path=source.path, model_cfg=source.model_cfg, **kwargs)


def render(tokenizer: Any, record: PromptRecord) -> str:
    """The text sent to the model: its own chat template with a generation prompt, then the response prefix."""
    text = tokenizer.apply_chat_template(record.messages, tokenize=False, add_generation_prompt=True)
    return text + record.response_prefix


def _check_resumable(store: SampleStore, old: dict[str, Any] | None, fingerprint: dict[str, Any]) -> None:
    """Refuse to extend a samples file made with other settings (it would mix two distributions)."""
    if old is None:
        raise RuntimeError(
            f"{store.path} has samples but no {store.meta_path.name}, so how they were made is unknown. "
            "Pass overwrite=true or choose another out_dir=."
        )
    before = old.get("fingerprint", {})
    diff = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
    if diff:
        was, now = {k: before.get(k) for k in diff}, {k: fingerprint[k] for k in diff}
        raise RuntimeError(
            f"{store.path} was sampled with other settings: {was} (now {now}). "
            "Pass overwrite=true to start afresh, or out_dir= to keep both."
        )


def _sample_lines(
    batch: Any,
    todo: list[tuple[int, int]],
    records: Sequence[PromptRecord],
    texts: list[str],
    gens: list[list[Any]],
) -> list[dict[str, Any]]:
    """The JSON lines of the pairs in ``todo`` (core fields first, then the prompt's extra fields)."""
    pos = {i: k for k, i in enumerate(batch.prompts)}
    lines = []
    for i, s in todo:
        g = gens[pos[i]][s - batch.samples.start]
        lines.append(
            {
                "prompt_id": records[i].prompt_id,
                "sample_idx": s,
                "prompt": texts[pos[i]],
                "completion": g.text,
                "finish_reason": g.finish_reason,
                "num_tokens": g.num_tokens,
                **records[i].fields,
            }
        )
    return lines


def sample_benchmark(cfg: DictConfig, backend: Any, source: ModelSource) -> Path:
    """Sample one benchmark into ``<out_dir>/<bench>.jsonl`` (resuming), and write its meta file."""
    from tqdm.auto import tqdm

    bench = cfg.eval.id
    params = SamplingParams.from_cfg(_container(cfg.sample))
    records = load_prompts(cfg)
    prompts_cfg = _container(cfg.eval.prompts)
    fingerprint = {
        "model_path": source.info.get("model_path", source.path),
        "backend": backend.name,
        "dtype": backend.info().get("dtype"),
        "sample": {k: _container(cfg.sample.get(k)) for k in _FINGERPRINT_SAMPLE_KEYS},
        "prompts": {k: v for k, v in prompts_cfg.items() if k != "data_dir"},
    }
    wanted = {(r.prompt_id, s) for r in records for s in range(params.n)}
    now = lambda: time.strftime("%Y-%m-%dT%H:%M:%S")  # noqa: E731
    with SampleStore(Path(cfg.out_dir) / f"{bench}.jsonl") as store:
        old = store.read_meta()
        if cfg.get("overwrite"):
            store.reset()
        elif store.done:
            _check_resumable(store, old, fingerprint)
        extra = len(store.done - wanted)
        if extra:
            raise RuntimeError(
                f"{store.path} holds {extra} (prompt, sample) pairs beyond sample.n={params.n} and "
                f"sample.limit={cfg.sample.get('limit')}; shrinking a file is not supported. "
                "Pass overwrite=true or choose another out_dir=."
            )
        already = len(wanted & store.done)
        meta: dict[str, Any] = {
            "benchmark": bench,
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
            "versions": versions("tokenizers", "vllm"),
            "git_sha": git_sha(),
            "command": sys.argv,
            "started_at": (old or {}).get("started_at") if store.done else now(),
        }
        store.write_meta(meta)
        log.info(
            "%s: %d prompts x %d samples -> %s (%d there already)",
            bench,
            len(records),
            params.n,
            store.path,
            already,
        )
        t0, written = time.time(), 0
        with tqdm(total=len(wanted), initial=already, unit="sample", desc=bench, dynamic_ncols=True) as bar:
            for batch in backend.plan(len(records), params.n):
                todo = [
                    (i, s)
                    for i in batch.prompts
                    for s in batch.samples
                    if (records[i].prompt_id, s) not in store.done
                ]
                if not todo:
                    continue  # finished before a kill; a batch with any pair missing is regenerated whole
                texts = [render(backend.tokenizer, records[i]) for i in batch.prompts]
                ids = [backend.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
                gens = backend.generate(ids, batch, params)
                written += store.append(_sample_lines(batch, todo, records, texts, gens))
                bar.update(len(todo))
        elapsed = time.time() - t0
        done = len(wanted & store.done)
        rate = round(written / elapsed, 3) if elapsed > 0 else None
        meta.update(
            complete=done == len(wanted),
            written_samples=done,
            finished_at=now(),
            last_run={"written": written, "elapsed_s": round(elapsed, 3), "samples_per_s": rate},
        )
        store.write_meta(meta)
    log.info(
        "%s: %d/%d samples in %s (%d new, %.1f s)", bench, done, len(wanted), store.path, written, elapsed
    )
    return store.path


def run(cfgs: Sequence[DictConfig]) -> list[Path]:
    """Sample every benchmark config in ``cfgs`` (same model and sampler), loading the model once."""
    if not cfgs:
        return []
    source = resolve_model(cfgs[0])
    backend = make_backend(cfgs[0], source)
    try:
        return [sample_benchmark(c, backend, source) for c in cfgs]
    finally:
        backend.close()


def split_eval_list(overrides: Sequence[str]) -> tuple[list[str] | None, list[str]]:
    """(benchmark ids of an ``eval=[a,b]`` override or None, the other overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    names, rest = None, []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        value = o.value() if o.key_or_group == "eval" and not o.is_delete() else None
        if isinstance(value, list):
            names = [str(v) for v in value]
        else:
            rest.append(o.input_line)
    return names, rest


def compose_all(overrides: Sequence[str], config_name: str = "sample") -> list[DictConfig]:
    """One config per benchmark of ``eval=[...]`` (each composed as if given alone); needs Hydra initialised."""
    names, rest = split_eval_list(overrides)
    if names is None:
        return [hydra.compose(config_name, overrides=list(overrides))]
    if not names:
        raise ValueError("eval=[] names no benchmark.")
    return [hydra.compose(config_name, overrides=[*rest, f"eval={n}"]) for n in names]


@hydra.main(config_path=CONF_DIR, config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    names, _ = split_eval_list(HydraConfig.get().overrides.task)
    run(compose_all(HydraConfig.get().overrides.task) if names is not None else [cfg])


__all__ = [
    "ModelSource",
    "compose_all",
    "load_prompts",
    "make_backend",
    "render",
    "resolve_model",
    "run",
    "sample_benchmark",
    "samples_dir",
    "split_eval_list",
]

if __name__ == "__main__":
    main()
