#!/usr/bin/env bash
# MT-Bench-101 for the Table-1 runs: sample every user turn (greedy, N=1, golden history), then an LLM judge
# rates the 3,615 judged turns through an OpenAI-compatible endpoint; prints the table beside the poster's.
#   SCALE=tiny  (default) the tiny runs of experiments/table1 (runs/table1_tiny/*), first 40 turns, 64 tokens.
#   SCALE=paper runs/table1_llama31_8b/*, all 4,208 turns, vllm sampling.
# Needs OPENAI_BASE_URL and OPENAI_API_KEY (GPT-4: https://api.openai.com/v1; or a local `vllm serve`).
# JUDGE_MODEL (default gpt-4) picks the judge. Rerunning resumes: samples and judgments are cached.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
SCALE=${SCALE:-tiny}
JUDGE_MODEL=${JUDGE_MODEL:-gpt-4}
: "${OPENAI_BASE_URL:?set OPENAI_BASE_URL (https://api.openai.com/v1 for GPT-4, or http://localhost:8000/v1 for vllm serve)}"
: "${OPENAI_API_KEY:?set OPENAI_API_KEY (any non-empty string for a server without authentication)}"

case "$SCALE" in
  tiny)  NAME=${NAME:-table1_tiny};       SUBSET=(eval.sample.limit=40 eval.sample.max_new_tokens=64); SAMPLER=() ;;
  paper) NAME=${NAME:-table1_llama31_8b}; SUBSET=(); SAMPLER=(sampler=vllm sampler.tensor_parallel_size="${TP:-1}") ;;
  *) echo "SCALE must be tiny or paper, got '$SCALE'" >&2; exit 2 ;;
esac

shopt -s nullglob
runs=(runs/"${NAME}"/*/)
[ ${#runs[@]} -gt 0 ] || { echo "No runs in runs/${NAME}/: train them first (experiments/table1/run.sh)." >&2; exit 1; }
for run in "${runs[@]}"; do
  [ -f "${run}run.json" ] || continue
  run=${run%/}
  echo "== sample ${run}"
  "$PY" -m ts2.sample "run_dir='${run}'" eval=mt_bench_101 "${SUBSET[@]}" "${SAMPLER[@]}"
  echo "== judge ${run} (${JUDGE_MODEL})"
  "$PY" -m ts2.evaluate "run_dir='${run}'" eval=mt_bench_101 "${SUBSET[@]}" "eval.metrics.judge.model=${JUDGE_MODEL}"
done

"$PY" - "runs/${NAME}" <<'PY'
import json, sys
from pathlib import Path
import yaml
from ts2.eval.mt_bench_101 import TASKS
pub = yaml.safe_load(Path("experiments/table1/paper_numbers.yaml").read_text())["mt_bench_101"]
print("| run | Avg. | " + " | ".join(TASKS) + " | judged | unparsed | complete |")
print("|---" * (len(TASKS) + 5) + "|")
for f in sorted(Path(sys.argv[1]).glob("*/metrics/mt_bench_101.json")):
    m = json.loads(f.read_text()); d = m["details"]
    num = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "–"  # null: no value (a failed judge)
    cells = [num(m["metrics"].get(t)) for t in TASKS]
    print(f"| {f.parent.parent.name} | {num(m['metrics'].get('overall'))} | " + " | ".join(cells)
          + f" | {d['judged_turns']} | {d['unparsed']} | {m['complete']} |")
for method in ("ce", "gem", "ts2"):
    print(f"| poster {method} | {pub['avg'][method]:.2f} | " + " | ".join(f"{pub[method][t]:.2f}" for t in TASKS) + " | 3615 | | |")
PY
