#!/usr/bin/env bash
# Table 1 end to end: train the 8 methods, sample every benchmark, score, write results/.
# Every stage resumes: rerunning after a crash redoes only unfinished work.
#   SCALE=tiny  (default) CPU, offline, ~15 min on 2 cores: tiny Llama, tiny RM, a subset of prompts.
#   SCALE=paper 8x80GB GPUs, hub access (gated Llama-3.1 licence), vllm, the FsfairX RM (PAPER.md §3-4).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
SCALE=${SCALE:-tiny}
METHODS=ce,ce_wd,neft,gem,ce_ls,sparsemax,entmax15,ts2

case "$SCALE" in
  tiny)
    NAME=table1_tiny
    TRAIN=("$PY" -m ts2.train)
    TRAIN_ARGS=()
    EVALS="[alpaca_eval,creative_poem,humaneval]"
    # Tiny scale: 40 prompts per benchmark, 8 samples each, 64 new tokens (the paper: all prompts, N=32/16/200).
    SUBSET=(eval.sample.limit=40 eval.sample.n=8 eval.sample.max_new_tokens=64)
    SAMPLER=()
    EVAL_ARGS=(rm=tiny)
    ;;
  paper)
    NAME=table1_llama31_8b
    TRAIN=(accelerate launch -m ts2.train)
    TRAIN_ARGS=(experiment=paper_llama31_8b)
    EVALS="[alpaca_eval,creative_poem,creative_story,humaneval]"
    SUBSET=()
    SAMPLER=(sampler=vllm sampler.tensor_parallel_size="${TP:-1}")
    EVAL_ARGS=(rm=fsfairx)
    ;;
  *) echo "SCALE must be tiny or paper, got '$SCALE'" >&2; exit 2 ;;
esac

echo "== [1/4] train ${METHODS//,/ } (${SCALE} scale) -> runs/${NAME}/"
"${TRAIN[@]}" -m "method=${METHODS}" name="${NAME}" train.resume=true "${TRAIN_ARGS[@]}"

for run in runs/"${NAME}"/*/; do
  [ -f "${run}run.json" ] || continue
  run=${run%/}
  echo "== [2/4] sample ${run}"
  "$PY" -m ts2.sample "run_dir='${run}'" "eval=${EVALS}" "${SUBSET[@]}" "${SAMPLER[@]}"
  echo "== [3/4] evaluate ${run}"
  "$PY" -m ts2.evaluate "run_dir='${run}'" "eval=${EVALS}" "${SUBSET[@]}" "${EVAL_ARGS[@]}"
done

echo "== [4/4] report -> results/${NAME}.{md,csv,tex,png}"
"$PY" -m ts2.report runs_dir="runs/${NAME}" name="${NAME}"
cat "results/${NAME}.md"
