"""AlpacaEval (805 prompts): reward-model best-of-N win rate, standard AlpacaEval 2, chat diversity (PAPER.md §4).

Best-of-N win rate (the paper's AlpacaEval number; the judge is a reward model, not GPT-4). For prompt i with
rewards r_i,0, r_i,1, ... of its samples (in ``sample_idx`` order) and reference reward r_i,ref (the same RM's
score of the GPT-4-Turbo / ``gpt4_1106_preview`` AlpacaEval-2 answer):

    r_best,i(n) = max_{j < n} r_i,j                      (the *first* n samples, j = 0..n-1)
    win_rate(n) = 100 · mean_i σ(r_best,i(n) − r_i,ref),   σ(t) = 1 / (1 + e^(−t))

for n = 1, 2, 4, …, N (powers of two ≤ N, plus N itself if it is not one). σ(a − b) = e^a / (e^a + e^b) is
the Bradley–Terry probability that the sample beats the reference, as in the official ``calculate_winrate.py``.
Taking the first n samples is what the official code does; it is one draw of a best-of-n experiment, so curves
are monotone in n for every prompt. (The lower-variance alternative, the expectation over all n-subsets of the N
samples, is documented in ``evaluation/alpaca_eval/README_bon.md`` but not computed.) The 95% CI is a seeded
percentile bootstrap over prompts (the same resampled prompt sets for every n).

Reference rewards: for FsfairX the shipped ``alpaca_eval/gpt4_1106_preview_fsfairx_rewards.jsonl`` (the
authors' scores; mapping checked against the AlpacaEval instructions for all 805 prompts). For any other RM the
reference answers (``alpaca_eval/gpt4_1106_preview_model_outputs.json``) are scored with the same RM and cached
(append-only, resumable) in ``<cache_dir>/rewards/<rm-fingerprint>.jsonl``. Sample rewards are cached the same
way beside the run (``<run>/scores/alpaca_eval_rewards-<rm-fingerprint>.jsonl``).

Sample files (``<run>/samples/alpaca_eval.jsonl``): one JSON object per line with ``prompt_id`` (0..804, int or
digit string), ``sample_idx`` (int ≥ 0), ``completion`` (str), and ``instruction`` (checked against the
AlpacaEval instruction of that id) or, failing that, the chat-templated ``prompt`` (must contain it).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ts2.paths import cache_dir, data_file

NUM_PROMPTS = 805
INSTRUCTIONS_FILE = ("alpaca_eval", "alpaca_eval_instructions.jsonl")
REFERENCE_OUTPUTS_FILE = ("alpaca_eval", "gpt4_1106_preview_model_outputs.json")
FSFAIRX_REF_REWARDS_FILE = "alpaca_eval/gpt4_1106_preview_fsfairx_rewards.jsonl"
REFERENCE_GENERATOR = "gpt4_1106_preview"
SKIPPED_NO_KEY = "skipped: OPENAI_API_KEY not set"


class Scorer(Protocol):
    """What best-of-N needs from a reward model (``ts2.eval.reward.RewardScorer`` implements it)."""

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


# ----------------------------------------------------------------------------------------------- AlpacaEval set
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


# ----------------------------------------------------------------------------------------------- sample files
@dataclass(frozen=True)
class Sample:
    prompt_id: int
    sample_idx: int
    completion: str
    prompt: str | None
    line: int


@dataclass
class SampleSet:
    """Validated samples of one file: ``by_prompt[prompt_id][sample_idx]``."""

    path: Path
    by_prompt: dict[int, dict[int, Sample]] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self.by_prompt.values())

    def prefix_count(self, pid: int) -> int:
        """Number of contiguous samples 0, 1, 2, ... the prompt has (0 if absent)."""
        have = self.by_prompt.get(pid, {})
        k = 0
        while k in have:
            k += 1
        return k

    def first(self, pid: int, n: int) -> list[Sample]:
        return [self.by_prompt[pid][j] for j in range(n)]


def _where(path: Path, lineno: int) -> str:
    return f"{path}:{lineno}"


def read_samples(path: str | os.PathLike[str]) -> SampleSet:
    """Read and validate a sample file; every error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Sample file {path} does not exist (expected <run>/samples/alpaca_eval.jsonl from the sampling stage)."
        )
    instr = alpaca_instructions()
    out = SampleSet(path=path)
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            at = _where(path, lineno)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{at}: not valid JSON ({err.msg}).") from err
            if not isinstance(row, dict):
                raise ValueError(f"{at}: expected a JSON object, got {type(row).__name__}.")
            for key in ("prompt_id", "sample_idx", "completion"):
                if key not in row:
                    raise ValueError(f"{at}: missing field {key!r}.")
            pid = row["prompt_id"]
            if isinstance(pid, str) and pid.strip().isdigit():
                pid = int(pid)
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < NUM_PROMPTS:
                raise ValueError(
                    f"{at}: prompt_id {row['prompt_id']!r} is not an AlpacaEval index 0..{NUM_PROMPTS - 1}."
                )
            sidx = row["sample_idx"]
            if isinstance(sidx, bool) or not isinstance(sidx, int) or sidx < 0:
                raise ValueError(f"{at}: sample_idx {sidx!r} is not an integer >= 0.")
            if not isinstance(row["completion"], str):
                raise ValueError(f"{at}: completion is {type(row['completion']).__name__}, not a string.")
            prompt = row.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                raise ValueError(f"{at}: prompt is {type(prompt).__name__}, not a string.")
            expected = instr[pid]
            if "instruction" in row:
                if not isinstance(row["instruction"], str) or row["instruction"].strip() != expected.strip():
                    raise ValueError(
                        f"{at}: instruction does not match AlpacaEval prompt {pid}: "
                        f"expected {expected[:60]!r}..., got {str(row['instruction'])[:60]!r}..."
                    )
            elif prompt is not None:
                if expected.strip() not in prompt:
                    raise ValueError(
                        f"{at}: prompt does not contain the AlpacaEval instruction of prompt {pid}."
                    )
            else:
                raise ValueError(
                    f"{at}: needs an 'instruction' (or 'prompt') field to check prompt_id {pid}."
                )
            group = out.by_prompt.setdefault(pid, {})
            if sidx in group:
                raise ValueError(
                    f"{at}: duplicate (prompt_id={pid}, sample_idx={sidx}), first at line {group[sidx].line}."
                )
            group[sidx] = Sample(pid, sidx, row["completion"], prompt, lineno)
    if not out.by_prompt:
        raise ValueError(f"{path}: no samples.")
    return out


# ------------------------------------------------------------------------------------------------ the metric
def best_of_n_grid(n_max: int) -> list[int]:
    """n = 1, 2, 4, ... ≤ n_max, plus n_max itself if it is not a power of two."""
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}.")
    ns = [1 << k for k in range(n_max.bit_length()) if (1 << k) <= n_max]
    return ns if ns[-1] == n_max else [*ns, n_max]


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))  # = 1 / (1 + e^-t), without overflow


def per_prompt_win(rewards: np.ndarray, ref: np.ndarray, n: int) -> np.ndarray:
    """σ(max_{j<n} r_ij − r_i,ref) × 100 for each prompt i; ``rewards`` is [prompts, ≥ n]."""
    rewards = np.asarray(rewards, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if rewards.ndim != 2 or ref.shape != (rewards.shape[0],):
        raise ValueError(f"rewards must be [P, N] and ref [P]; got {rewards.shape} and {ref.shape}.")
    if not 1 <= n <= rewards.shape[1]:
        raise ValueError(f"n={n} outside 1..{rewards.shape[1]} (samples per prompt).")
    return 100.0 * _sigmoid(rewards[:, :n].max(axis=1) - ref)


def win_rates(rewards: np.ndarray, ref: np.ndarray, ns: Sequence[int]) -> dict[int, float]:
    """Best-of-n win rate (×100) for each n."""
    return {int(n): float(per_prompt_win(rewards, ref, n).mean()) for n in ns}


def bootstrap_ci(
    per_prompt: Mapping[int, np.ndarray], *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[int, list[float]]:
    """Percentile-bootstrap CI of the mean over prompts, per n, with one set of resampled prompt sets for all n."""
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError("bootstrap needs n_resamples >= 1 and 0 < level < 1.")
    sizes = {len(v) for v in per_prompt.values()}
    if len(sizes) != 1:
        raise ValueError("bootstrap_ci: every n needs the same prompts.")
    p = sizes.pop()
    idx = np.random.default_rng(seed).integers(0, p, size=(n_resamples, p))
    q = [50 * (1 - level), 50 * (1 + level)]
    return {
        n: [float(x) for x in np.percentile(np.asarray(v)[idx].mean(axis=1), q)]
        for n, v in per_prompt.items()
    }


# ------------------------------------------------------------------------------------------ reference rewards
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
            at = _where(p, lineno)
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


def _read_cache(path: Path) -> dict[Any, dict[str, Any]]:
    """Rows of an append-only JSONL cache keyed by ``key``; a torn last line (interrupted write) is cut off."""
    rows: dict[Any, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    data = path.read_bytes()
    lines = data.split(b"\n")
    offset = 0
    for i, line in enumerate(lines):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise ValueError(
                        f"{path}:{i + 1}: corrupt cache line; delete the file to rescore."
                    ) from None
                warnings.warn(f"{path}: dropping a torn last line (interrupted write).", stacklevel=3)
                with open(path, "r+b") as fh:
                    fh.truncate(offset)
                return rows
            if "key" in row:
                rows[tuple(row["key"]) if isinstance(row["key"], list) else row["key"]] = row
        offset += len(line) + 1
    if data and not data.endswith(b"\n"):  # complete last row, newline lost: later appends need it
        with open(path, "ab") as fh:
            fh.write(b"\n")
    return rows


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _digest(*texts: str) -> str:
    h = hashlib.sha1()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _score_cached(
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

    A cached row is reused only if its text digest matches, so an edited sample file is rescored. The cache file's
    name carries the RM fingerprint, so another RM or rendering convention never reads these rows.
    """
    have = _read_cache(cache)
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
    r = _score_cached(
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


# -------------------------------------------------------------------------------------------- evaluation
def _as_scorer(rm: Any) -> Scorer:
    if hasattr(rm, "score") and hasattr(rm, "fingerprint"):
        return rm
    from ts2.eval.reward import RewardScorer

    return RewardScorer.from_config(rm)


def _reference(ref_rewards: Any, scorer: Scorer, ids: Sequence[int]) -> tuple[np.ndarray, str]:
    """Reference rewards for ``ids`` and a description of their source."""
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
    folder = samples_path.parent
    base = folder.parent / "scores" if folder.name == "samples" else folder
    return base / f"alpaca_eval_rewards-{fingerprint}.jsonl"


def evaluate_alpaca_eval(
    samples_path: str | os.PathLike[str],
    *,
    rm: Any,
    ref_rewards: Any = "score",
    n_max: int = 32,
    prompt_ids: Sequence[int] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    scores_path: str | os.PathLike[str] | None = None,
    chunk: int = 256,
) -> dict[str, Any]:
    """Best-of-n win rate against the AlpacaEval-2 reference with reward-model judging (PAPER.md §4).

    ``rm``: a ``RewardScorer`` (or anything with ``score`` and ``fingerprint``), or an RM config / ``conf/rm``
    YAML. ``ref_rewards``: ``"score"``, a reference-reward file (relative to the data dir), a mapping or an
    805-array. ``prompt_ids``: the prompts expected (default all 805).

    Returns ``win_rate`` {n: %}, ``ci95`` {n: [lo, hi]}, ``num_prompts``, ``num_samples``, ``complete`` and
    ``missing``. When some prompt has fewer than ``n_max`` contiguous samples, n stops at the count every
    evaluated prompt has (``complete`` false, ``note`` says so); absent expected prompts are listed in
    ``missing`` and left out of the mean.
    """
    samples = read_samples(samples_path)
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}.")
    expected = list(range(NUM_PROMPTS)) if prompt_ids is None else sorted({int(i) for i in prompt_ids})
    bad = [i for i in expected if not 0 <= i < NUM_PROMPTS]
    if bad:
        raise ValueError(f"prompt_ids outside 0..{NUM_PROMPTS - 1}: {bad[:5]}.")
    extra = sorted(set(samples.by_prompt) - set(expected))
    missing: list[str] = []
    absent = [i for i in expected if i not in samples.by_prompt]
    if absent:
        missing.append(
            f"{len(absent)} of {len(expected)} expected prompts have no samples (e.g. {absent[:10]})"
        )
    ids = [i for i in expected if i in samples.by_prompt]
    if not ids:
        raise ValueError(f"{samples.path}: none of the expected prompts has samples.")
    counts = {i: samples.prefix_count(i) for i in ids}
    zero = [i for i in ids if counts[i] == 0]
    if zero:
        raise ValueError(f"{samples.path}: prompts {zero[:10]} have samples but no sample_idx 0.")
    short = [i for i in ids if counts[i] < n_max]
    if short:
        missing.append(
            f"{len(short)} prompt(s) have fewer than {n_max} contiguous samples 0..{n_max - 1} "
            f"(e.g. prompt {short[0]}: {counts[short[0]]})"
        )
    n_eval = min(n_max, min(counts.values()))
    ns = best_of_n_grid(n_eval)

    scorer = _as_scorer(rm)
    items = [samples.first(i, n_eval) for i in ids]
    flat = [s for group in items for s in group]
    instr = alpaca_instructions()
    spath = Path(scores_path) if scores_path else default_scores_path(samples.path, scorer.fingerprint)
    templated = None
    if getattr(scorer, "user_text", "instruction") != "instruction":
        lacking = next((s for s in flat if s.prompt is None), None)
        if lacking is not None:
            raise ValueError(
                f"{samples.path}:{lacking.line}: user_text='paper_detok' needs the 'prompt' field."
            )
        templated = [s.prompt for s in flat]
    r = _score_cached(
        scorer,
        spath,
        [(s.prompt_id, s.sample_idx) for s in flat],
        [instr[s.prompt_id] for s in flat],
        [s.completion for s in flat],
        templated,
        chunk=chunk,
        desc="samples",
    ).reshape(len(ids), n_eval)
    ref, ref_src = _reference(ref_rewards, scorer, ids)

    per = {n: per_prompt_win(r, ref, n) for n in ns}
    complete = not missing
    note = "complete" if complete else "INCOMPLETE: " + "; ".join(missing)
    if n_eval < n_max:
        note += f"; win rate reported only for n <= {n_eval}, the sample count every evaluated prompt has"
    return {
        "win_rate": {n: float(v.mean()) for n, v in per.items()},
        "ci95": bootstrap_ci(per, n_resamples=n_bootstrap, seed=seed),
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
        "quirk": bool(scorer.quirk),
        "ref_rewards": ref_src,
        "rm_truncated": int(getattr(scorer, "num_truncated", 0)),
        "scores_path": str(spath),
        "bootstrap": {"resamples": n_bootstrap, "seed": seed, "level": 0.95},
    }


# --------------------------------------------------------------------------------------- standard AlpacaEval 2
def standard_model_outputs(
    samples: SampleSet,
    *,
    which: Literal["first", "best"] = "first",
    rewards: np.ndarray | None = None,
    prompt_ids: Sequence[int] | None = None,
    generator: str = "ts2",
) -> list[dict[str, str]]:
    """Records for ``alpaca_eval.evaluate``: one output per prompt, sample 0 (``first``) or the highest-reward
    sample among each prompt's contiguous samples (``best``; ``rewards[k][j]`` for the k-th prompt id)."""
    ids = sorted(samples.by_prompt) if prompt_ids is None else list(prompt_ids)
    instr = alpaca_instructions()
    rows = reference_outputs()
    out = []
    for k, pid in enumerate(ids):
        if samples.prefix_count(pid) == 0:
            raise ValueError(f"{samples.path}: prompt {pid} has no sample 0.")
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
                "output": samples.by_prompt[pid][j].completion,
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

    Needs ``OPENAI_API_KEY`` (and optionally ``OPENAI_BASE_URL`` for an OpenAI-compatible endpoint) in the
    environment; without a key nothing is sent and ``status`` is ``"skipped: OPENAI_API_KEY not set"`` with no
    number. Plain win rate (``fn_metric="get_winrate"``): the length-controlled one needs a download.
    """
    if not os.environ.get("OPENAI_API_KEY"):
        return {"status": SKIPPED_NO_KEY, "win_rate": None, "annotators_config": annotators_config}
    samples = read_samples(samples_path)
    ids = sorted(samples.by_prompt) if prompt_ids is None else sorted({int(i) for i in prompt_ids})
    rewards = None
    if which == "best":
        if rm is None:
            raise ValueError("which='best' needs an rm to pick each prompt's best sample.")
        scorer = _as_scorer(rm)
        n = min(samples.prefix_count(i) for i in ids)
        flat = [s for i in ids for s in samples.first(i, n)]
        instr = alpaca_instructions()
        rewards = _score_cached(
            scorer,
            default_scores_path(samples.path, scorer.fingerprint),
            [(s.prompt_id, s.sample_idx) for s in flat],
            [instr[s.prompt_id] for s in flat],
            [s.completion for s in flat],
            None,
            chunk=256,
            desc="samples",
        ).reshape(len(ids), n)
    model_outputs = standard_model_outputs(
        samples, which=which, rewards=rewards, prompt_ids=ids, generator=generator
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


# ------------------------------------------------------------------------------------------------- diversity
def diversity_groups(
    samples: SampleSet,
    *,
    text: Literal["templated", "response"] = "templated",
    n: int | None = None,
    prompt_ids: Sequence[int] | None = None,
) -> list[list[str]]:
    """Per prompt, its first n samples as strings: ``templated`` = chat-templated prompt + completion (what the
    paper's diversity code scores, PAPER.md §4), ``response`` = the completion alone."""
    if text not in ("templated", "response"):
        raise ValueError(f"text must be 'templated' or 'response', got {text!r}.")
    ids = sorted(samples.by_prompt) if prompt_ids is None else list(prompt_ids)
    k = min(samples.prefix_count(i) for i in ids) if n is None else n
    groups = []
    for pid in ids:
        if samples.prefix_count(pid) < k:
            raise ValueError(
                f"{samples.path}: prompt {pid} has {samples.prefix_count(pid)} samples, need {k}."
            )
        group = []
        for s in samples.first(pid, k):
            if text == "templated":
                if s.prompt is None:
                    raise ValueError(f"{samples.path}:{s.line}: text='templated' needs the 'prompt' field.")
                group.append(s.prompt + s.completion)
            else:
                group.append(s.completion)
        groups.append(group)
    return groups


def chat_diversity(
    samples_path: str | os.PathLike[str],
    *,
    text: Literal["templated", "response"] = "templated",
    n: int | None = None,
    self_bleu_mode: str = "paper",
    model: Any = None,
    prompt_ids: Sequence[int] | None = None,
    num_workers: int = 1,
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    max_seq_length: int | None = None,
) -> dict[str, Any]:
    """N-gram / 100 − Self-BLEU / Sent-BERT diversity (×100) of the AlpacaEval samples via ``ts2.eval.diversity``.

    ``num_workers``, ``batch_size``, ``cache_dir`` and ``max_seq_length`` go to
    :func:`ts2.eval.diversity.diversity_report`.
    """
    try:
        from ts2.eval.diversity import diversity_report
    except ImportError as err:
        raise ImportError(
            f"ts2.eval.diversity is not available ({err}); chat diversity cannot be computed."
        ) from err
    samples = read_samples(samples_path)
    groups = diversity_groups(samples, text=text, n=n, prompt_ids=prompt_ids)
    report = dict(
        diversity_report(
            groups,
            self_bleu_mode=self_bleu_mode,
            model=model,
            num_workers=num_workers,
            batch_size=batch_size,
            cache_dir=cache_dir,
            max_seq_length=max_seq_length,
        )
    )
    report.update(
        {"text": text, "num_prompts": len(groups), "n": len(groups[0]), "self_bleu_mode": self_bleu_mode}
    )
    return report
