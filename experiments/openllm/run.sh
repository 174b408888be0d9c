#!/usr/bin/env bash
# OpenLLM generalisation for the Table-1 runs, in both protocols (PAPER.md §4):
#   official: zero-shot generative, N=32 samples, answers parsed ("paper" parser by default), majority-vote and
#             any-correct accuracy at n = 1..32, six tasks (python -m ts2.sample + ts2.evaluate eval=openllm_*);
#   harness:  lm-eval-harness log-likelihood, Open LLM Leaderboard v1 shots (ts2.evaluate eval=openllm_harness).
#   SCALE=tiny  (default) runs/table1_tiny/*: 20 questions x 4 samples x 32 tokens; harness limit=2 per task.
#   SCALE=paper runs/table1_llama31_8b/*: everything, vllm.
#   PROTOCOL=official|harness|both (default both). PARSER=paper|strict (official protocol; default paper).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
SCALE=${SCALE:-tiny}
PROTOCOL=${PROTOCOL:-both}
PARSER=${PARSER:-paper}
TASKS=openllm_arc_challenge,openllm_hellaswag,openllm_winogrande,openllm_mmlu,openllm_truthfulqa,openllm_gsm8k

case "$SCALE" in
  tiny)
    NAME=${NAME:-table1_tiny}
    SUBSET=(eval.sample.limit=20 eval.sample.n=4 eval.sample.max_new_tokens=32)
    SAMPLER=()
    HARNESS=(limit=2 eval.harness.device=cpu eval.harness.dtype=float32 '+eval.harness.gen_kwargs.max_gen_toks=32')
    ;;
  paper)
    NAME=${NAME:-table1_llama31_8b}
    SUBSET=()
    SAMPLER=(sampler=vllm sampler.tensor_parallel_size="${TP:-1}")
    HARNESS=(eval.harness.backend=vllm eval.harness.dtype=bfloat16 eval.harness.batch_size=auto)
    ;;
  *) echo "SCALE must be tiny or paper, got '$SCALE'" >&2; exit 2 ;;
esac

shopt -s nullglob
runs=(runs/"${NAME}"/*/)
[ ${#runs[@]} -gt 0 ] || { echo "No runs in runs/${NAME}/: train them first (experiments/table1/run.sh)." >&2; exit 1; }
for run in "${runs[@]}"; do
  [ -f "${run}run.json" ] || continue
  run=${run%/}
  if [ "$PROTOCOL" != harness ]; then
    echo "== official protocol: sample ${run}"
    "$PY" -m ts2.sample "run_dir='${run}'" "eval=[${TASKS}]" "${SUBSET[@]}" "${SAMPLER[@]}"
    echo "== official protocol: score ${run} (parser=${PARSER})"
    "$PY" -m ts2.evaluate "run_dir='${run}'" "eval=[${TASKS}]" "${SUBSET[@]}" "eval.metrics.parser=${PARSER}"
  fi
  if [ "$PROTOCOL" != official ]; then
    echo "== harness protocol: ${run}"
    "$PY" -m ts2.evaluate "run_dir='${run}'" eval=openllm_harness "${HARNESS[@]}"
  fi
done

"$PY" - "runs/${NAME}" <<'PY'
import json, sys
from pathlib import Path
tasks = ["arc_challenge", "hellaswag", "winogrande", "mmlu", "truthfulqa", "gsm8k"]
runs = sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "metrics").is_dir())
def cell(path, key):
    if not path.is_file():
        return "–"
    m = json.loads(path.read_text())
    v = m["metrics"].get(key)
    return "–" if v is None else f"{v:.1f}" + ("" if m["complete"] else "*")
print("Official protocol: majority@N / any@N (%), N = the largest n sampled")
print("| run | " + " | ".join(tasks) + " |")
print("|---" * (len(tasks) + 1) + "|")
for r in runs:
    row = []
    for t in tasks:
        f = r / "metrics" / f"openllm_{t}.json"
        if f.is_file():
            m = json.loads(f.read_text())["metrics"]
            n = max(int(k.split("@")[1]) for k in m if k.startswith("majority@"))
            row.append(f"{m[f'majority@{n}']:.1f} / {m[f'any@{n}']:.1f}")
        else:
            row.append("–")
    print(f"| {r.name} | " + " | ".join(row) + " |")
print("\nHarness protocol (Open LLM Leaderboard v1 metrics, %; * = incomplete)")
print("| run | " + " | ".join(tasks) + " | average |")
print("|---" * (len(tasks) + 2) + "|")
for r in runs:
    f = r / "metrics" / "openllm_harness.json"
    print(f"| {r.name} | " + " | ".join(cell(f, t) for t in tasks + ["average"]) + " |")
PY
