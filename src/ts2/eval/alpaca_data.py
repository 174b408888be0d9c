"""AlpacaEval data: the 805 instructions, the GPT-4-Turbo reference answers, and what a reward-model judge is.

Files under the data directory (``ts2.paths.data_file``): ``alpaca_eval/alpaca_eval_instructions.jsonl``
(``{"idx", "instruction"}``, idx = prompt id 0..804), ``alpaca_eval/gpt4_1106_preview_model_outputs.json`` (the
AlpacaEval 2 reference answers, ``gpt4_1106_preview``) and ``alpaca_eval/gpt4_1106_preview_fsfairx_rewards.jsonl``
(the authors' FsfairX rewards of those answers; PAPER.md §4).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from ts2.paths import data_file
from ts2.sampling.store import Sample, SampleFileError

NUM_PROMPTS = 805
INSTRUCTIONS_FILE = ("alpaca_eval", "alpaca_eval_instructions.jsonl")
REFERENCE_OUTPUTS_FILE = ("alpaca_eval", "gpt4_1106_preview_model_outputs.json")
FSFAIRX_REF_REWARDS_FILE = "alpaca_eval/gpt4_1106_preview_fsfairx_rewards.jsonl"
REFERENCE_GENERATOR = "gpt4_1106_preview"


class Scorer(Protocol):
    """What best-of-N needs from a reward model (``ts2.models.reward_model.RewardScorer`` implements it)."""

    fingerprint: str
    quirk: bool

    def score(
        self,
        instructions: Sequence[str],
        responses: Sequence[str],
        templated_prompts: Sequence[str] | None = None,
        *,
        desc: str = ...,
    ) -> np.ndarray: ...


@lru_cache(maxsize=4)
def _instructions(path: str) -> tuple[str, ...]:
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            row = json.loads(line)
            if row.get("idx") != lineno - 1:
                raise ValueError(f"{path}:{lineno}: idx {row.get('idx')!r}, expected {lineno - 1}.")
            out.append(row["instruction"])
    if len(out) != NUM_PROMPTS:
        raise ValueError(f"{path}: {len(out)} instructions, expected {NUM_PROMPTS}.")
    return tuple(out)


def alpaca_instructions() -> tuple[str, ...]:
    """The 805 AlpacaEval instructions, index = prompt id (from the data directory)."""
    return _instructions(str(data_file(*INSTRUCTIONS_FILE)))


def reference_outputs() -> list[dict[str, Any]]:
    """The AlpacaEval-2 reference answers (``gpt4_1106_preview``), checked against the instruction list."""
    path = data_file(*REFERENCE_OUTPUTS_FILE)
    rows = json.loads(path.read_text(encoding="utf-8"))
    instr = alpaca_instructions()
    if len(rows) != NUM_PROMPTS:
        raise ValueError(f"{path}: {len(rows)} records, expected {NUM_PROMPTS}.")
    for i, row in enumerate(rows):
        if row.get("instruction") != instr[i]:
            raise ValueError(f"{path}: record {i} has another instruction than AlpacaEval prompt {i}.")
    return rows


def alpaca_samples(samples: Sequence[Sample], path: str | os.PathLike[str] = "<samples>") -> list[Sample]:
    """The samples of an AlpacaEval file, checked against the instruction list; prompt ids as ints.

    ``prompt_id`` must be an AlpacaEval index 0..804 (an int or a digit string); each sample needs the
    ``instruction`` field (equal to that prompt's instruction up to surrounding whitespace) or, failing that,
    the chat-templated ``prompt`` (must contain it). Errors name ``path:line``.
    """
    instr = alpaca_instructions()
    out: list[Sample] = []
    seen: dict[tuple[int, int], int] = {}
    for s in samples:
        at = f"{path}:{s.line}"
        pid = s.prompt_id
        if isinstance(pid, str) and pid.strip().isdigit():
            pid = int(pid)
        if not isinstance(pid, int) or not 0 <= pid < NUM_PROMPTS:
            raise SampleFileError(
                f"{at}: prompt_id {s.prompt_id!r} is not an AlpacaEval index 0..{NUM_PROMPTS - 1}."
            )
        expected = instr[pid]
        if "instruction" in s.fields:
            given = s.fields["instruction"]
            if not isinstance(given, str) or given.strip() != expected.strip():
                raise SampleFileError(
                    f"{at}: instruction does not match AlpacaEval prompt {pid}: "
                    f"expected {expected[:60]!r}..., got {str(given)[:60]!r}..."
                )
        elif s.prompt is not None:
            if expected.strip() not in s.prompt:
                raise SampleFileError(
                    f"{at}: prompt does not contain the AlpacaEval instruction of prompt {pid}."
                )
        else:
            raise SampleFileError(
                f"{at}: needs an 'instruction' (or 'prompt') field to check prompt_id {pid}."
            )
        key = (pid, s.sample_idx)
        if key in seen:
            raise SampleFileError(
                f"{at}: duplicate (prompt_id, sample_idx)={key} (first on line {seen[key]})."
            )
        seen[key] = s.line
        out.append(s if pid == s.prompt_id else replace(s, prompt_id=pid))
    if not out:
        raise SampleFileError(f"{path}: no samples.")
    return out
