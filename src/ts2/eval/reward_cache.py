"""Reward caches of the AlpacaEval best-of-n protocol: append-only, resumable, keyed by the RM fingerprint.

- Reference rewards: for FsfairX the shipped ``alpaca_eval/gpt4_1106_preview_fsfairx_rewards.jsonl`` (the
  authors' scores; mapping checked against the AlpacaEval instructions for all 805 prompts). For any other RM
  the reference answers are scored with the same RM and cached in ``<cache_dir>/rewards/<rm-fingerprint>.jsonl``.
- Sample rewards: ``<run>/scores/alpaca_eval_rewards-<rm-fingerprint>.jsonl`` beside the run.

A cache line is ``{"key", "digest", "reward"}``; a row is reused only when the digest of its texts matches, so
an edited sample file is rescored, and the fingerprint in the file name keeps another RM or rendering
convention from ever reading it. Chunks are appended whole and fsynced; a torn last line is repaired by
:func:`ts2.sampling.store.repair_torn_tail`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ts2.eval.alpaca_data import (
    FSFAIRX_REF_REWARDS_FILE,
    NUM_PROMPTS,
    Scorer,
    alpaca_instructions,
    reference_outputs,
)
from ts2.paths import cache_dir, data_file
from ts2.sampling.store import SampleFileError, iter_json_lines, repair_torn_tail

log = logging.getLogger("ts2.rewards")


def as_scorer(rm: Any) -> Scorer:
    """``rm`` itself if it scores (has ``score`` and ``fingerprint``), else the RM of a ``conf/rm`` config."""
    if hasattr(rm, "score") and hasattr(rm, "fingerprint"):
        return rm
    from ts2.models.reward_model import RewardScorer

    return RewardScorer.from_config(rm)


def load_reference_rewards(path: str | os.PathLike[str] = FSFAIRX_REF_REWARDS_FILE) -> np.ndarray:
    """Shipped reference rewards ``{"idx", "instruction", "reward"}`` as an array of 805, index = prompt id.

    Relative paths are taken inside the data directory. Every line is checked: idx 0..804 each once, and its
    instruction equal to the AlpacaEval instruction of that idx.
    """
    p = Path(path)
    if not p.is_absolute():
        p = data_file(*p.parts)
    instr = alpaca_instructions()
    out = np.full(NUM_PROMPTS, np.nan)
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            at = f"{p}:{lineno}"
            try:
                row = json.loads(line)
                idx, reward = row["idx"], row["reward"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{at}: not an {{idx, instruction, reward}} JSON row ({err}).") from err
            if isinstance(reward, list) and len(reward) == 1:
                reward = reward[0]
            if not isinstance(idx, int) or not 0 <= idx < NUM_PROMPTS:
                raise ValueError(f"{at}: idx {idx!r} is not an AlpacaEval index.")
            if not np.isnan(out[idx]):
                raise ValueError(f"{at}: idx {idx} appears twice.")
            if row.get("instruction") != instr[idx]:
                raise ValueError(f"{at}: instruction differs from AlpacaEval prompt {idx}.")
            if not isinstance(reward, (int, float)) or not np.isfinite(reward):
                raise ValueError(f"{at}: reward {reward!r} is not a finite number.")
            out[idx] = float(reward)
    missing = np.flatnonzero(np.isnan(out))
    if missing.size:
        raise ValueError(f"{p}: no reward for {missing.size} prompt(s), e.g. idx {missing[:5].tolist()}.")
    return out


def read_cache(path: Path) -> dict[Any, dict[str, Any]]:
    """Rows of an append-only JSONL cache keyed by ``key`` (a list key becomes a tuple); repairs a torn tail."""
    if not path.is_file():
        return {}
    if repair_torn_tail(path):
        warnings.warn(f"{path}: dropping a torn last line (interrupted write).", stacklevel=3)
    rows: dict[Any, dict[str, Any]] = {}
    try:
        for _, row in iter_json_lines(path):
            if "key" in row:
                rows[tuple(row["key"]) if isinstance(row["key"], list) else row["key"]] = row
    except SampleFileError as err:
        raise SampleFileError(f"{err} Corrupt cache line: delete the file to rescore.") from err
    return rows


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


def _digest(*texts: str) -> str:
    h = hashlib.sha1()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def score_cached(
    scorer: Scorer,
    cache: Path,
    keys: Sequence[Any],
    instructions: Sequence[str],
    responses: Sequence[str],
    templated: Sequence[str] | None,
    *,
    chunk: int,
    desc: str,
) -> np.ndarray:
    """Rewards for (instruction, response) items, reusing and extending an append-only cache.

    A cached row is reused only if its text digest matches, so an edited sample file is rescored. The cache
    file's name carries the RM fingerprint, so another RM or rendering convention never reads these rows.
    """
    have = read_cache(cache)
    ctx = [""] * len(keys) if templated is None else list(templated)
    digests = [_digest(x, y, c) for x, y, c in zip(instructions, responses, ctx, strict=True)]
    out = np.full(len(keys), np.nan)
    todo = []
    for i, k in enumerate(keys):
        row = have.get(k)
        if row is not None and row.get("digest") == digests[i]:
            out[i] = row["reward"]
        else:
            todo.append(i)
    if todo:
        log.info(
            "%s: scoring %d of %d with the reward model %s (%d in the cache), appended to %s as they are done",
            desc,
            len(todo),
            len(keys),
            scorer.fingerprint,
            len(keys) - len(todo),
            cache,
        )
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        r = scorer.score(
            [instructions[i] for i in part],
            [responses[i] for i in part],
            None if templated is None else [templated[i] for i in part],
            desc=f"{desc} [{start + len(part)}/{len(todo)}]",
        )
        out[part] = r
        key_json = [list(keys[i]) if isinstance(keys[i], tuple) else keys[i] for i in part]
        _append(
            cache,
            [
                {"key": k, "digest": digests[i], "reward": float(v)}
                for k, i, v in zip(key_json, part, r, strict=True)
            ],
        )
    return out


def score_reference_rewards(
    scorer: Scorer, prompt_ids: Sequence[int] | None = None, *, chunk: int = 64
) -> np.ndarray:
    """The RM's rewards of the GPT-4-Turbo reference answers, cached in ``<cache_dir>/rewards/<fingerprint>.jsonl``.

    Returns an array of 805 with NaN for prompts not requested. Resumable: each chunk is appended when done.
    """
    rows = reference_outputs()
    ids = list(range(NUM_PROMPTS)) if prompt_ids is None else sorted(set(int(i) for i in prompt_ids))
    cache = cache_dir() / "rewards" / f"{scorer.fingerprint}.jsonl"
    r = score_cached(
        scorer,
        cache,
        ids,
        [rows[i]["instruction"] for i in ids],
        [rows[i]["output"] for i in ids],
        None,
        chunk=chunk,
        desc="reference answers",
    )
    out = np.full(NUM_PROMPTS, np.nan)
    out[ids] = r
    return out


def reference_rewards(ref_rewards: Any, scorer: Scorer, ids: Sequence[int]) -> tuple[np.ndarray, str]:
    """Reference rewards for ``ids`` and a description of their source.

    ``ref_rewards``: ``"score"`` (score with ``scorer``, cached), a reward file (relative to the data dir), a
    mapping prompt id -> reward, or an array of 805.
    """
    if isinstance(ref_rewards, str) and ref_rewards == "score":
        return score_reference_rewards(scorer, ids)[list(ids)], f"scored with {scorer.fingerprint}"
    if isinstance(ref_rewards, (str, os.PathLike)):
        if not scorer.quirk:
            raise ValueError(
                f"ref_rewards={str(ref_rewards)!r} were scored with the read-position quirk; with quirk=False the "
                "sample and reference rewards would not be comparable. Use ref_rewards='score'."
            )
        return load_reference_rewards(ref_rewards)[list(ids)], f"file {ref_rewards}"
    if isinstance(ref_rewards, Mapping):
        try:
            arr = np.array([float(ref_rewards[i]) for i in ids])
        except KeyError as err:
            raise ValueError(f"ref_rewards has no value for prompt {err.args[0]}.") from None
        return arr, "given mapping"
    arr = np.asarray(ref_rewards, dtype=np.float64)
    if arr.shape != (NUM_PROMPTS,):
        raise ValueError(f"ref_rewards array must have {NUM_PROMPTS} entries, got shape {arr.shape}.")
    return arr[list(ids)], "given array"


def default_scores_path(samples_path: Path, fingerprint: str) -> Path:
    """``<run>/scores/alpaca_eval_rewards-<fp>.jsonl`` for ``<run>/samples/...``, else beside the sample file."""
    folder = Path(samples_path).parent
    base = folder.parent / "scores" if folder.name == "samples" else folder
    return base / f"alpaca_eval_rewards-{fingerprint}.jsonl"
