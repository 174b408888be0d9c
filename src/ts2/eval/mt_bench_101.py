"""MT-Bench-101 (Bai et al., ACL 2024): a GPT-4 judge rates every judged turn, PAPER.md §4.

Protocol (the reference OpenCompass evaluation, restated in PAPER.md §4):

- the model answered user turn t given turns < t with their *golden* assistant answers
  (:func:`ts2.sampling.prompts.mt_bench_101`, prompt_id ``"<dialogue id>_<t>"``);
- the first turn of FR, CR, AR, SA, SC and CM is context only and is not judged: 3,615 of 4,208 turns are;
- the judge sees a shared instruction plus the task's rubric (``evaluation/mt_bench_101/rubrics.yaml``),
  the earlier golden turns, the user's message and the model's answer; for MR and GR also the golden answer
  of the judged turn as the reference solution; it rates 1-10 as ``[[N]]`` (:mod:`ts2.eval.judge`);
- dialogue score d = min over its judged turns of the rating; task score T_k = mean of d over the task's
  dialogues; overall = (1/13) Σ_k T_k, the plain mean of the 13 task scores (the poster's "Avg.").

A judgment that stays unparseable after its re-asks is counted (``unparsed``) and left out of its dialogue's
minimum (a dialogue with no parsed turn is left out of its task); a judge call that keeps failing, or a
judged turn without a sample, leaves its dialogue out and marks the result incomplete (``complete=False``).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ts2.eval.result import ScoreResult

log = logging.getLogger("ts2.mt_bench_101")

# MT-Bench-101's task order (perceptivity: CM SI AR TS CC; adaptability: CR FR SC SA MR GR; interactivity:
# IC PI) -- the poster's column order (PAPER.md §5).
TASKS = ("CM", "SI", "AR", "TS", "CC", "CR", "FR", "SC", "SA", "MR", "GR", "IC", "PI")
SKIP_FIRST_TURN = frozenset({"FR", "CR", "AR", "SA", "SC", "CM"})  # first turn is context only
REFERENCE_TASKS = frozenset({"MR", "GR"})  # the judge sees the golden answer of the judged turn
SAMPLE_FIELDS = ("task", "dialogue_id", "turn", "question", "history", "reference", "judged")
DEFAULT_RUBRICS = "evaluation/mt_bench_101/rubrics.yaml"


# ----------------------------------------------------------------------------------------------- aggregation
def overall_from_tasks(task_scores: Mapping[str, float]) -> float:
    """The benchmark average: the plain mean of the 13 task scores (PAPER.md §4/§5; every task required)."""
    missing = [t for t in TASKS if t not in task_scores]
    unknown = sorted(set(task_scores) - set(TASKS))
    if missing or unknown:
        raise ValueError(
            f"MT-Bench-101 overall needs exactly the 13 tasks; missing {missing}, unknown {unknown}."
        )
    return sum(float(task_scores[t]) for t in TASKS) / len(TASKS)


def aggregate(turn_ratings: Iterable[tuple[str, Hashable, int]]) -> dict[str, Any]:
    """Aggregate judged-turn ratings ``(task, dialogue_id, rating)`` as MT-Bench-101 does.

    dialogue score = min over its turns' ratings; task score = mean over the task's dialogues;
    ``overall`` = mean of the 13 task scores when all 13 are present, else the mean over the tasks present
    (``all_tasks`` False says so). Returns ``{"overall", "tasks", "dialogues", "all_tasks"}`` with
    ``dialogues`` = ``{(task, dialogue_id): score}``.
    """
    dialogue: dict[tuple[str, Hashable], int] = {}
    for task, did, rating in turn_ratings:
        if task not in TASKS:
            raise ValueError(f"Unknown MT-Bench-101 task {task!r} (known: {', '.join(TASKS)}).")
        if not isinstance(rating, int) or not 1 <= rating <= 10:
            raise ValueError(f"Rating {rating!r} of dialogue {did!r} ({task}) is not an integer in 1..10.")
        key = (task, did)
        dialogue[key] = min(rating, dialogue.get(key, rating))
    per_task: dict[str, list[int]] = defaultdict(list)
    for (task, _), d in dialogue.items():
        per_task[task].append(d)
    tasks = {t: sum(per_task[t]) / len(per_task[t]) for t in TASKS if per_task.get(t)}
    all_tasks = len(tasks) == len(TASKS)
    overall = (
        overall_from_tasks(tasks) if all_tasks else (sum(tasks.values()) / len(tasks) if tasks else math.nan)
    )
    return {"overall": overall, "tasks": tasks, "dialogues": dialogue, "all_tasks": all_tasks}


# ----------------------------------------------------------------------------------------------- judge prompts
def load_rubrics(path: str | Path = DEFAULT_RUBRICS) -> dict[str, Any]:
    """The judge templates (``evaluation/mt_bench_101/rubrics.yaml``), checked: all 13 tasks, needed keys."""
    import yaml

    from ts2.sampling.prompts import repo_path

    p = repo_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"MT-Bench-101 rubric file {p} does not exist (eval.metrics.rubrics).")
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    for key in ("system", "user", "reference", "empty_dialogue", "tasks"):
        if key not in (data or {}):
            raise ValueError(f"{p}: missing top-level key {key!r}.")
    tasks = data["tasks"]
    missing = [t for t in TASKS if t not in tasks]
    unknown = sorted(set(tasks) - set(TASKS))
    if missing or unknown:
        raise ValueError(
            f"{p}: tasks must be exactly the 13 MT-Bench-101 tasks; missing {missing}, unknown {unknown}."
        )
    for t in TASKS:
        for key in ("name", "ability", "rubric", "reference"):
            if key not in tasks[t]:
                raise ValueError(f"{p}: task {t} has no {key!r}.")
        if bool(tasks[t]["reference"]) != (t in REFERENCE_TASKS):
            raise ValueError(
                f"{p}: task {t}: reference must be {t in REFERENCE_TASKS} (PAPER.md §4: MR and GR only)."
            )
    data["path"] = str(p)
    return data


def judge_messages(
    rubrics: Mapping[str, Any],
    task: str,
    history: Sequence[Mapping[str, str]],
    question: str,
    answer: str,
    reference: str | None,
) -> list[dict[str, str]]:
    """The judge's chat for one turn: system = shared instruction + the task's rubric; user = the dialogue
    (golden earlier turns), the user's message, the model's answer and, for MR/GR, the reference solution."""
    spec = rubrics["tasks"][task]
    system = rubrics["system"].format(
        ability=spec["ability"], task_name=spec["name"], rubric=spec["rubric"].strip()
    )
    turns = [f"User: {h['user']}\n\nAssistant: {h['bot']}" for h in history]
    dialogue = "\n\n".join(turns) if turns else rubrics["empty_dialogue"]
    ref_block = rubrics["reference"].format(reference=reference or "") if spec["reference"] else ""
    user = rubrics["user"].format(
        dialogue=dialogue, question=question, answer=answer, reference_block=ref_block
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------------------------- scorer
def _cfg_get(node: Any, key: str, default: Any = None) -> Any:
    if node is None:
        return default
    value = node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)
    return default if value is None else value


def _expected_turns(cfg: Any) -> list[tuple[str, str, Any, bool]] | None:
    """(prompt_id, task, dialogue_id, judged) of the prompts the sampler made (first ``limit``), or None without a builder."""
    prompts = _cfg_get(cfg.eval, "prompts")
    if prompts is None:
        return None
    from hydra.utils import get_method
    from omegaconf import OmegaConf

    kwargs = OmegaConf.to_container(prompts, resolve=True) if OmegaConf.is_config(prompts) else dict(prompts)
    builder = get_method(kwargs.pop("_target_"))
    records = builder(**kwargs)  # called directly: a missing data file raises its own clear error
    limit = _cfg_get(cfg, "limit")
    records = records[:limit] if limit else records
    return [
        (r.prompt_id, r.fields["task"], r.fields["dialogue_id"], bool(r.fields["judged"])) for r in records
    ]


def _default_cache(cfg: Any) -> Path:
    metrics_dir = _cfg_get(cfg, "metrics_dir")
    if metrics_dir:
        return Path(metrics_dir) / ".cache" / "judge" / "mt_bench_101.jsonl"
    from ts2.paths import cache_dir

    return cache_dir() / "judge" / "mt_bench_101.jsonl"


def score(samples: Sequence[Any], cfg: Any) -> ScoreResult:
    """Judge the samples of ``mt_bench_101.jsonl`` and aggregate (module docstring).

    ``cfg.eval.metrics``: ``rubrics`` (template file), ``sample_idx`` (which sample of a turn is judged, 0),
    ``judge`` (:class:`ts2.eval.judge.JudgeSettings` fields plus ``cache``: the JSONL judgment cache, default
    ``<metrics_dir>/.cache/judge/mt_bench_101.jsonl``). ``cfg.limit``: only the first ``limit`` prompts were
    sampled. Raises :class:`ts2.eval.judge.JudgeConfigError` when the endpoint is not usable.
    """
    from ts2.eval.judge import Judge, JudgeSettings, JudgmentCache

    m = cfg.eval.metrics
    rubrics = load_rubrics(_cfg_get(m, "rubrics", DEFAULT_RUBRICS))
    settings = JudgeSettings.from_config(_cfg_get(m, "judge", {}))
    which = int(_cfg_get(m, "sample_idx", 0))

    # one sample per turn, its fields checked
    turns: dict[Any, Any] = {}
    for s in samples:
        if s["sample_idx"] != which:
            continue
        missing = [f for f in SAMPLE_FIELDS if s.get(f) is None]
        if missing:
            raise ValueError(
                f"mt_bench_101 sample {s['prompt_id']!r}: missing field(s) {missing}; sample with "
                f"`python -m ts2.sample eval=mt_bench_101` (prompt builder ts2.sampling.prompts.mt_bench_101)."
            )
        if s["task"] not in TASKS:
            raise ValueError(
                f"mt_bench_101 sample {s['prompt_id']!r}: unknown task {s['task']!r} (known: {', '.join(TASKS)})."
            )
        turns[s["prompt_id"]] = s

    expected = _expected_turns(cfg)
    if expected is None:  # no prompt builder configured: trust the sample file
        expected = [(pid, s["task"], s["dialogue_id"], bool(s["judged"])) for pid, s in turns.items()]
    judged_ids = [pid for pid, _, _, judged in expected if judged]
    missing_ids = [pid for pid in judged_ids if pid not in turns]
    present = [pid for pid in judged_ids if pid in turns]

    cache_path = _cfg_get(_cfg_get(m, "judge", {}), "cache") or _default_cache(cfg)
    cache = JudgmentCache(cache_path)
    judge = Judge(settings, cache)
    try:
        chats = [
            judge_messages(
                rubrics,
                turns[pid]["task"],
                turns[pid]["history"],
                turns[pid]["question"],
                turns[pid]["completion"],
                turns[pid]["reference"],
            )
            for pid in present
        ]
        judgments = judge.judge_many(chats)
    finally:
        cache.close()

    # which dialogues can be scored: every judged turn sampled and judged (failures make a dialogue unscored)
    task_of = {pid: task for pid, task, _, _ in expected}
    dialogue_of = {pid: did for pid, _, did, _ in expected}
    broken: set[Hashable] = {dialogue_of[pid] for pid in missing_ids}
    ratings: list[tuple[str, Hashable, int]] = []
    unparsed_ids, failed_ids = [], []
    for pid, j in zip(present, judgments, strict=True):
        if j.failed:
            failed_ids.append(pid)
            broken.add(dialogue_of[pid])
        elif j.rating is None:
            unparsed_ids.append(pid)
        else:
            ratings.append((task_of[pid], dialogue_of[pid], j.rating))
    agg = aggregate(r for r in ratings if r[1] not in broken)

    expected_tasks = sorted({task for _, task, _, judged in expected if judged}, key=TASKS.index)
    problems = []
    if missing_ids:
        problems.append(f"{len(missing_ids)} judged turns have no sample (e.g. {missing_ids[:3]})")
    if failed_ids:
        problems.append(
            f"the judge failed on {len(failed_ids)} turns (e.g. {failed_ids[:3]}); rerun to retry them"
        )
    if not agg["all_tasks"]:
        absent = [t for t in TASKS if t not in agg["tasks"]]
        problems.append(f"no scored dialogue for task(s) {absent}: overall is the mean over the other tasks")
    complete = not problems
    notes = list(problems)
    if unparsed_ids:
        notes.append(
            f"{len(unparsed_ids)} judgments had no valid [[N]] after re-asking and were left out of their dialogue's minimum"
        )
    metrics = {"overall": agg["overall"], **agg["tasks"]}
    dialogues = agg["dialogues"]
    details = {
        "tasks": agg["tasks"],
        "judged_turns": len(judged_ids),
        "rated_turns": len(ratings),
        "unparsed": len(unparsed_ids),
        "failed": len(failed_ids),
        "missing": len(missing_ids),
        "unparsed_ids": unparsed_ids[:100],
        "failed_ids": failed_ids[:100],
        "dialogues_scored": len(dialogues),
        "dialogues_per_task": {t: sum(1 for (tk, _) in dialogues if tk == t) for t in TASKS},
        "expected_tasks": expected_tasks,
        "dialogue_scores": {f"{t}/{d}": v for (t, d), v in dialogues.items()},
        "judge": {**settings.__dict__, "cache": str(cache_path), "rubrics": rubrics["path"]},
        "judge_stats": judge.stats.as_dict(),
        "complete": complete,
    }
    if not complete:
        log.warning("MT-Bench-101 result is INCOMPLETE: %s", "; ".join(problems))
    error = None
    if failed_ids:  # a judge that kept failing: written incomplete, and ts2.evaluate then exits non-zero
        errors = judge.stats.errors
        error = (
            f"the judge failed on {len(failed_ids)} of {len(present)} turns after its retries "
            f"(errors: {dict(sorted(errors.items(), key=lambda kv: -kv[1])[:3]) or 'see the log'}); "
            "rerun the same command to retry them (answered turns are cached)"
        )
    return ScoreResult(
        metrics=metrics,
        num_prompts=len(present),
        num_samples=len(turns),
        complete=complete,
        details=details,
        note=("INCOMPLETE: " if not complete else "") + "; ".join(notes) if notes else None,
        error=error,
    )
