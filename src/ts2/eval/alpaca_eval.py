"""AlpacaEval (805 prompts): the paper's reward-model best-of-n win rate plus chat diversity (PAPER.md §4).

:func:`score` is the benchmark scorer (``metrics.scorer`` of ``conf/eval/alpaca_eval.yaml``). For each prompt
it reads the rewards of the first n samples (the judge is a reward model, ``conf/rm/``, not GPT-4), compares the
best one with the same RM's reward of the GPT-4-Turbo reference answer, and averages
``100 · σ(r_best(n) − r_ref)`` over prompts (:mod:`ts2.eval.best_of_n`, which holds the formula), for
n = 1, 2, 4, …, N, with a percentile-bootstrap 95% CI over prompts. Taking the first n samples is what the
official code does; it is one draw of a best-of-n experiment, so curves are monotone in n for every prompt.
The diversity of the answers (:func:`ts2.eval.diversity.score_answers`: the three metrics on the primary text,
the secondary texts, the length-controlled variant, the answers' lengths) is computed on the same prompts.

The parts: data and the sample check in :mod:`ts2.eval.alpaca_data`, the metric in :mod:`ts2.eval.best_of_n`,
the reward caches in :mod:`ts2.eval.reward_cache`, the standard AlpacaEval 2 hand-off in
:mod:`ts2.eval.alpaca_eval2`.

Sample files (``<run>/samples/alpaca_eval.jsonl``): the format of ``evaluation/README.md``; each line needs
``instruction`` (checked against the AlpacaEval instruction of that id) or, failing that, the chat-templated
``prompt`` (must contain it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ts2.eval.alpaca_data import NUM_PROMPTS, alpaca_instructions, alpaca_samples
from ts2.eval.best_of_n import best_of_n_grid, per_prompt_win
from ts2.eval.result import ScoreResult
from ts2.eval.reward_cache import as_scorer, default_scores_path, reference_rewards, score_cached
from ts2.eval.stats import bootstrap_cis
from ts2.sampling.store import Sample, group_by_prompt, prefix_count, read_samples


def evaluate_alpaca_eval(
    samples: str | os.PathLike[str] | Sequence[Sample],
    *,
    rm: Any,
    ref_rewards: Any = "score",
    n_max: int = 32,
    prompt_ids: Sequence[int] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    scores_path: str | os.PathLike[str] | None = None,
    samples_path: str | os.PathLike[str] | None = None,
    chunk: int = 256,
    detokenizer: Any = None,
) -> dict[str, Any]:
    """Best-of-n win rate against the AlpacaEval-2 reference with reward-model judging (PAPER.md §4).

    ``samples``: a sample file, or samples already read (then ``samples_path`` names their file, for messages
    and the default ``scores_path`` ``<run>/scores/alpaca_eval_rewards-<fp>.jsonl``). ``rm``: a ``RewardScorer``
    (or anything with ``score`` and ``fingerprint``), or an RM config / ``conf/rm`` YAML. ``ref_rewards``:
    ``"score"``, a reference-reward file (relative to the data dir), a mapping or an 805-array. ``prompt_ids``:
    the prompts expected (default all 805). ``detokenizer``: the policy's tokenizer (or a zero-argument function
    returning it), needed when the RM's ``user_text`` is ``paper_detok`` (the official detokenised user turn,
    :mod:`ts2.models.reward_model`); loaded only then.

    Returns ``win_rate`` {n: %}, ``ci95`` {n: [lo, hi]}, ``per_prompt`` {n: [%] in ``prompt_ids`` order},
    ``prompt_ids`` (the evaluated ones), ``num_prompts``, ``num_samples``, ``complete`` and ``missing``. When
    some prompt has fewer than ``n_max`` contiguous samples, n stops at the count every evaluated prompt has
    (``complete`` false, ``note`` says so); absent expected prompts are listed in ``missing`` and left out of
    the mean.
    """
    if isinstance(samples, (str, os.PathLike)):
        samples_path = Path(samples)
        samples = read_samples(samples_path)
    where = Path(samples_path) if samples_path is not None else Path("<samples>")
    groups = group_by_prompt(alpaca_samples(samples, where))
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}.")
    expected = list(range(NUM_PROMPTS)) if prompt_ids is None else sorted({int(i) for i in prompt_ids})
    bad = [i for i in expected if not 0 <= i < NUM_PROMPTS]
    if bad:
        raise ValueError(f"prompt_ids outside 0..{NUM_PROMPTS - 1}: {bad[:5]}.")
    extra = sorted(set(groups) - set(expected))
    missing: list[str] = []
    absent = [i for i in expected if i not in groups]
    if absent:
        missing.append(
            f"{len(absent)} of {len(expected)} expected prompts have no samples (e.g. {absent[:10]})"
        )
    ids = [i for i in expected if i in groups]
    if not ids:
        raise ValueError(f"{where}: none of the expected prompts has samples.")
    counts = {i: prefix_count(groups[i]) for i in ids}
    zero = [i for i in ids if counts[i] == 0]
    if zero:
        raise ValueError(f"{where}: prompts {zero[:10]} have samples but no sample_idx 0.")
    short = [i for i in ids if counts[i] < n_max]
    if short:
        missing.append(
            f"{len(short)} prompt(s) have fewer than {n_max} contiguous samples 0..{n_max - 1} "
            f"(e.g. prompt {short[0]}: {counts[short[0]]})"
        )
    n_eval = min(n_max, min(counts.values()))
    ns = best_of_n_grid(n_eval)

    scorer = _scorer(rm, detokenizer)
    flat = [s for i in ids for s in groups[i][:n_eval]]
    instr = alpaca_instructions()
    if scores_path is None:
        if samples_path is None:
            raise ValueError(
                "evaluate_alpaca_eval: give samples_path= or scores_path= with samples already read."
            )
        scores_path = default_scores_path(Path(samples_path), scorer.fingerprint)
    spath = Path(scores_path)
    templated = None
    if getattr(scorer, "user_text", "instruction") != "instruction":
        lacking = next((s for s in flat if s.prompt is None), None)
        if lacking is not None:
            raise ValueError(f"{where}:{lacking.line}: user_text='paper_detok' needs the 'prompt' field.")
        templated = [s.prompt for s in flat]
    r = score_cached(
        scorer,
        spath,
        [(s.prompt_id, s.sample_idx) for s in flat],
        [instr[s.prompt_id] for s in flat],
        [s.completion for s in flat],
        templated,
        chunk=chunk,
        desc="samples",
    ).reshape(len(ids), n_eval)
    ref, ref_src = reference_rewards(ref_rewards, scorer, ids)

    per = {n: per_prompt_win(r, ref, n) for n in ns}
    complete = not missing
    note = "complete" if complete else "INCOMPLETE: " + "; ".join(missing)
    if n_eval < n_max:
        note += f"; win rate reported only for n <= {n_eval}, the sample count every evaluated prompt has"
    return {
        "win_rate": {n: float(v.mean()) for n, v in per.items()},
        "ci95": {n: list(ci) for n, ci in bootstrap_cis(per, n_resamples=n_bootstrap, seed=seed).items()},
        "mean_best_reward": {n: float(r[:, :n].max(axis=1).mean()) for n in ns},
        "mean_ref_reward": float(ref.mean()),
        "num_prompts": len(ids),
        "num_samples": int(r.size),
        "n_max": n_max,
        "n_evaluated": n_eval,
        "complete": complete,
        "missing": missing,
        "note": note,
        "extra_prompts_ignored": extra,
        "rm": scorer.fingerprint,
        "rm_path": getattr(scorer, "path", None),
        "rm_eval": getattr(scorer, "rm_eval", None),  # the judge's held-out pairwise accuracy, when known
        "quirk": bool(scorer.quirk),
        "user_text": getattr(scorer, "user_text", "instruction"),
        "rm_detokenizer": _source(getattr(scorer, "detokenizer", None)),
        "ref_rewards": ref_src,
        "rm_truncated": int(getattr(scorer, "num_truncated", 0)),
        "scores_path": str(spath),
        "bootstrap": {"resamples": n_bootstrap, "seed": seed, "level": 0.95},
        "prompt_ids": ids,
        "per_prompt": {n: [float(x) for x in v] for n, v in per.items()},
    }


def _source(tokenizer: Any) -> str | None:
    """Where a policy tokenizer came from (for the metrics file)."""
    if tokenizer is None:
        return None
    return getattr(tokenizer, "ts2_source", getattr(tokenizer, "name_or_path", None))


def _scorer(rm: Any, detokenizer: Any) -> Any:
    """The RM scorer (``as_scorer``), given the policy tokenizer when its ``user_text`` is ``paper_detok``."""
    from ts2.eval.diversity import resolve_tokenizer

    scorer = as_scorer(rm)
    paper = getattr(scorer, "user_text", "instruction") == "paper_detok"
    if paper and getattr(scorer, "detokenizer", None) is None:
        detok = resolve_tokenizer(detokenizer)
        if detok is None:
            raise ValueError(
                "rm.user_text=paper_detok rebuilds each sample's RM user turn with the policy model's tokenizer; "
                "give detokenizer= (ts2.evaluate finds it in the samples' meta.json, or set policy_tokenizer=), "
                "or use rm.user_text=instruction."
            )
        scorer.use_detokenizer(detok)
    return scorer


def score(samples: list[Sample], cfg: DictConfig) -> ScoreResult:
    """The AlpacaEval scorer: best-of-n RM win rate vs the AlpacaEval-2 reference, chat diversity, optionally
    standard AlpacaEval 2 (``metrics.standard_ae2``). Settings: ``cfg.eval.metrics``, ``cfg.rm``,
    ``cfg.diversity``; the sample file is ``<samples_dir>/alpaca_eval.jsonl``."""
    from ts2.eval.diversity import DiversityConfig, policy_tokenizer, score_answers

    m = cfg.eval.metrics
    path = Path(cfg.samples_dir) / f"{cfg.eval.id}.jsonl"
    res = evaluate_alpaca_eval(
        samples,
        samples_path=path,
        rm=cfg.rm,
        ref_rewards=cfg.rm.ref_rewards,
        n_max=m.n_max,
        prompt_ids=list(range(cfg.limit)) if cfg.limit else None,
        n_bootstrap=m.n_bootstrap,
        detokenizer=lambda: policy_tokenizer(cfg, "rm.user_text=paper_detok"),
    )
    ids = res.pop("prompt_ids")
    per_prompt = {f"win_rate@{n}": v for n, v in res.pop("per_prompt").items()}
    metrics = {f"win_rate@{n}": v for n, v in res["win_rate"].items()}
    ci = {f"win_rate@{n}": (lo, hi) for n, (lo, hi) in res["ci95"].items()}
    if m.diversity:
        div_cfg = DiversityConfig.from_config(
            cfg.diversity, cache_dir=Path(cfg.metrics_dir) / ".cache" / "sent_bert"
        )
        groups = group_by_prompt(alpaca_samples(samples, path))
        n = m.diversity_n or min(prefix_count(groups[i]) for i in ids)
        kept = [s for i in ids for s in groups[i]]
        div = score_answers(kept, div_cfg, n=n, prompt_ids=ids, tokenizer=lambda: policy_tokenizer(cfg))
        metrics.update(div.metrics)
        per_prompt.update(div.per_prompt)
        ci.update(bootstrap_cis(div.per_prompt, n_resamples=m.n_bootstrap))
        res["diversity"] = {**div.metrics, **div.details}
    if m.standard_ae2:
        from ts2.eval.alpaca_eval2 import standard_alpaca_eval

        res["standard_ae2"] = standard_alpaca_eval(path, out_dir=Path(cfg.metrics_dir) / "alpaca_eval2")
    res["settings"] = OmegaConf.to_container(m, resolve=True)
    return ScoreResult(
        metrics=metrics,
        num_prompts=res["num_prompts"],
        num_samples=res["num_samples"],
        complete=res["complete"],
        ci=ci,
        per_prompt=per_prompt,
        prompt_ids=ids,
        details=res,
        note=None if res["complete"] else res["note"],
    )
