"""Sample completions for the evaluation benchmarks: ``python -m ts2.sample run_dir=<run> eval=<bench>``.

Writes ``<out_dir>/<bench>.jsonl`` (one line per (prompt, sample); PAPER.md §4, schema in evaluation/README.md),
``<bench>.meta.json`` and ``sample.log``. The model: ``run_dir=<finished training run>`` (out_dir defaults to
``<run_dir>/samples``; quote it: ``"run_dir='runs/train/method=ts2'"``), ``model_path=<folder or hub id>``
(+ ``model=<config>``) or ``model=<config>`` alone (:func:`ts2.models.source.model_source`). ``eval=[a,b]`` samples
each benchmark in turn, model loaded once; ``sample.*`` overrides the benchmark's ``eval.sample``. A rerun
resumes (finished pairs skipped, torn last line dropped, the same samples as an uninterrupted run);
``overwrite=true`` starts afresh. A refused command writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from ts2 import cli
from ts2.conf import CONF_DIR, check_config, compose_all, split_eval_list
from ts2.models.source import ModelSource, _container, model_source
from ts2.paths import check_output_dir
from ts2.provenance import log_to_file
from ts2.sampling import samples_dir  # noqa: F401  (registers the ts2_samples_dir resolver)
from ts2.sampling.backends import SamplingParams, check_context, model_context
from ts2.sampling.prompts import PromptRecord
from ts2.sampling.shards import parse_shard, samples_path, shard_batches, shard_meta, shard_pairs
from ts2.sampling.store import REQUIRED_FIELDS, SampleStore, start_samples

log = logging.getLogger("ts2.sample")


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
    try:
        return hydra.utils.instantiate(
            cfg.sampler, model_path=source.path, model_cfg=source.model_cfg, _convert_="all"
        )
    except InstantiationException as err:  # Hydra wraps the backend's error: raise the backend's own
        raise (err.__cause__ or err) from None


def backend_name(cfg: DictConfig) -> str | None:
    """The ``name`` of the ``sampler._target_`` class (``hf``, ``vllm``), read without building it."""
    return getattr(hydra.utils.get_class(cfg.sampler._target_), "name", None)


def render(tokenizer: Any, record: PromptRecord) -> str:
    """The text sent to the model: its own chat template with a generation prompt, then the response prefix."""
    text = tokenizer.apply_chat_template(record.messages, tokenize=False, add_generation_prompt=True)
    return text + record.response_prefix


def sample_benchmark(cfg: DictConfig, backend: Any, source: ModelSource, records: list | None = None) -> Path:
    """Sample one benchmark into ``<out_dir>/<bench>.jsonl`` (resuming), and write its meta file."""
    from tqdm.auto import tqdm

    bench, params = cfg.eval.id, SamplingParams.from_cfg(_container(cfg.sample), backend_name(cfg))
    records = load_prompts(cfg) if records is None else records
    if hasattr(backend, "use_prompts"):  # a backend answering from the prompt records (sampler=control)
        backend.use_prompts(records)
    # shard=i/k: every k-th batch of the full plan, same batches and seeds as one run (ts2.sampling.shards)
    shard = parse_shard(cfg.get("shard"))
    plan = shard_batches(backend.plan(len(records), params.n), shard)
    wanted = shard_pairs(plan, [r.prompt_id for r in records])
    with SampleStore(samples_path(cfg.out_dir, bench, shard)) as store:
        meta = start_samples(store, cfg, backend, source, records, wanted)
        if shard is not None:
            meta["shard"] = shard_meta(shard, [r.prompt_id for r in records], params.n)
            store.write_meta(meta)
        already = meta["written_samples"]
        log.info("%s: %d x %d samples -> %s (%d there)", bench, len(records), params.n, store.path, already)
        t0, written = time.time(), 0
        with tqdm(total=len(wanted), initial=already, unit="sample", desc=bench, dynamic_ncols=True) as bar:
            for batch in plan:
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
                pos = {i: k for k, i in enumerate(batch.prompts)}
                lines = []
                for i, s in todo:  # core fields first, then the prompt's extra fields
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
                written += store.append(lines)
                bar.update(len(todo))
        elapsed, done = time.time() - t0, len(wanted & store.done)
        rate = round(written / elapsed, 3) if elapsed > 0 else None
        meta.update(
            complete=done == len(wanted),
            written_samples=done,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            last_run={"written": written, "elapsed_s": round(elapsed, 3), "samples_per_s": rate},
        )
        store.write_meta(meta)
    log.info(
        "%s: %d/%d samples in %s (%d new, %.1f s)", bench, done, len(wanted), store.path, written, elapsed
    )
    return store.path


def check_contexts(cfgs: Sequence[DictConfig], source: ModelSource, prompts: Sequence[list]) -> None:
    """Refuse, before the model loads, a benchmark whose longest prompt + ``sample.max_new_tokens`` would
    run past the model's context (:func:`ts2.sampling.backends.check_context`)."""
    from ts2.models import load_tokenizer

    if not getattr(hydra.utils.get_class(cfgs[0].sampler._target_), "generates", False):
        return  # e.g. sampler=control writes answers made from the references, not generated
    context = model_context(source.path, cfgs[0].sampler.get("max_model_len"))
    if not context:
        return
    tok = load_tokenizer(source.model_cfg, source.path)
    for c, records in zip(cfgs, prompts, strict=True):
        lengths = {
            r.prompt_id: len(tok(render(tok, r), add_special_tokens=False)["input_ids"]) for r in records
        }
        check_context(c.eval.id, lengths, int(c.sample.max_new_tokens), context)


def run(cfgs: Sequence[DictConfig]) -> list[Path]:
    """Sample every benchmark config in ``cfgs`` (same model and sampler), loading the model once."""
    if not cfgs:
        return []
    source = model_source(cfgs[0])  # every input error is raised before anything is written
    check_output_dir(cfgs[0].out_dir, "out_dir")
    prompts = []
    for c in cfgs:
        SamplingParams.from_cfg(_container(c.sample), backend_name(c))  # vLLM: T <= 2
        parse_shard(c.get("shard"))
        prompts.append(load_prompts(c))
    check_contexts(cfgs, source, prompts)
    backend = make_backend(cfgs[0], source)
    Path(cfgs[0].out_dir).mkdir(parents=True, exist_ok=True)
    handler = log_to_file(Path(cfgs[0].out_dir) / "sample.log")
    try:
        return [sample_benchmark(c, backend, source, p) for c, p in zip(cfgs, prompts, strict=True)]
    finally:
        backend.close()
        logging.getLogger().removeHandler(handler)
        handler.close()


@hydra.main(config_path=CONF_DIR, config_name="sample", version_base="1.3")
@cli.task
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from ts2.tracking import log_samples

    overrides = HydraConfig.get().overrides.task
    cfgs = compose_all(overrides) if split_eval_list(overrides)[0] is not None else [cfg]
    for c in cfgs:
        check_config(c, "sample")  # every typed setting, before anything is written
    log_samples(cfgs, run(cfgs))  # wandb: the training run's run, when it logged there (ts2.tracking)


if __name__ == "__main__":
    cli.run(main, interrupted=cli.RESUME, check_overrides=True)
