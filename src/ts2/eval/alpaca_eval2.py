"""Standard AlpacaEval 2 hand-off: one output per prompt, judged by GPT-4-Turbo through the ``alpaca_eval`` library.

Not the paper's number (that is the reward-model best-of-n win rate, :mod:`ts2.eval.alpaca_eval`); the
standard protocol users expect beside it. Plain win rate (``fn_metric="get_winrate"``): the length-controlled
one needs a download. Needs ``OPENAI_API_KEY`` (and optionally ``OPENAI_BASE_URL``); without a key nothing is
sent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ts2.eval.alpaca_data import (
    NUM_PROMPTS,
    REFERENCE_GENERATOR,
    alpaca_instructions,
    alpaca_samples,
    reference_outputs,
)
from ts2.eval.reward_cache import as_scorer, default_scores_path, score_cached
from ts2.sampling.store import Sample, group_by_prompt, prefix_count, read_samples

SKIPPED_NO_KEY = "skipped: OPENAI_API_KEY not set"


def standard_model_outputs(
    groups: Mapping[int, Sequence[Sample]],
    *,
    which: Literal["first", "best"] = "first",
    rewards: np.ndarray | None = None,
    prompt_ids: Sequence[int] | None = None,
    generator: str = "ts2",
) -> list[dict[str, str]]:
    """Records for ``alpaca_eval.evaluate``: one output per prompt, sample 0 (``first``) or the highest-reward
    sample among each prompt's contiguous samples (``best``; ``rewards[k][j]`` for the k-th prompt id).

    ``groups``: samples per prompt id, sorted by ``sample_idx`` (:func:`ts2.sampling.store.group_by_prompt`).
    """
    ids = sorted(groups) if prompt_ids is None else list(prompt_ids)
    instr = alpaca_instructions()
    rows = reference_outputs()
    out = []
    for k, pid in enumerate(ids):
        if prefix_count(groups.get(pid, [])) == 0:
            raise ValueError(f"prompt {pid} has no sample 0.")
        if which == "first":
            j = 0
        elif which == "best":
            if rewards is None:
                raise ValueError("which='best' needs the sample rewards.")
            j = int(np.argmax(rewards[k]))
        else:
            raise ValueError(f"which must be 'first' or 'best', got {which!r}.")
        out.append(
            {
                "instruction": instr[pid],
                "output": groups[pid][j].completion,
                "generator": generator,
                "dataset": rows[pid].get("dataset", ""),
            }
        )
    return out


def standard_alpaca_eval(
    samples_path: str | os.PathLike[str],
    *,
    which: Literal["first", "best"] = "first",
    rm: Any = None,
    annotators_config: str = "weighted_alpaca_eval_gpt4_turbo",
    generator: str = "ts2",
    out_dir: str | os.PathLike[str] | None = None,
    prompt_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Standard AlpacaEval 2 (GPT-4-Turbo judge through the ``alpaca_eval`` library) on one output per prompt.

    Without ``OPENAI_API_KEY`` nothing is sent and ``status`` is ``"skipped: OPENAI_API_KEY not set"`` with no
    number. ``which="best"`` picks each prompt's highest-reward sample under ``rm`` (rewards cached as in
    :mod:`ts2.eval.reward_cache`).
    """
    if not os.environ.get("OPENAI_API_KEY"):
        return {"status": SKIPPED_NO_KEY, "win_rate": None, "annotators_config": annotators_config}
    path = Path(samples_path)
    groups = group_by_prompt(alpaca_samples(read_samples(path), path))
    ids = sorted(groups) if prompt_ids is None else sorted({int(i) for i in prompt_ids})
    rewards = None
    if which == "best":
        if rm is None:
            raise ValueError("which='best' needs an rm to pick each prompt's best sample.")
        scorer = as_scorer(rm)
        n = min(prefix_count(groups[i]) for i in ids)
        flat = [s for i in ids for s in groups[i][:n]]
        instr = alpaca_instructions()
        rewards = score_cached(
            scorer,
            default_scores_path(path, scorer.fingerprint),
            [(s.prompt_id, s.sample_idx) for s in flat],
            [instr[s.prompt_id] for s in flat],
            [s.completion for s in flat],
            None,
            chunk=256,
            desc="samples",
        ).reshape(len(ids), n)
    model_outputs = standard_model_outputs(
        groups, which=which, rewards=rewards, prompt_ids=ids, generator=generator
    )
    refs = reference_outputs()
    reference = [
        {
            "instruction": refs[i]["instruction"],
            "output": refs[i]["output"],
            "generator": REFERENCE_GENERATOR,
            "dataset": refs[i].get("dataset", ""),
        }
        for i in ids
    ]
    import pandas as pd
    from alpaca_eval import evaluate

    leaderboard, _ = evaluate(
        model_outputs=pd.DataFrame(model_outputs),
        reference_outputs=pd.DataFrame(reference),
        annotators_config=annotators_config,
        name=generator,
        output_path=None if out_dir is None else str(out_dir),
        precomputed_leaderboard=None,
        is_cache_leaderboard=False,
        is_return_instead_of_print=True,
        fn_metric="get_winrate",
        sort_by="win_rate",
    )
    row = leaderboard.loc[generator]
    complete = len(ids) == NUM_PROMPTS
    return {
        "status": "ok" if complete else f"ok (subset: {len(ids)} of {NUM_PROMPTS} prompts)",
        "win_rate": float(row["win_rate"]),
        "standard_error": float(row["standard_error"]) if "standard_error" in row else None,
        "n_total": int(row["n_total"]) if "n_total" in row else len(ids),
        "which": which,
        "annotators_config": annotators_config,
        "complete": complete,
    }
