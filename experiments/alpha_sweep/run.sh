#!/usr/bin/env bash
# The α sweep of TS² (issue #13 item 4; `make sweep-alpha`): one TS² training run per (α, clamp), each sampled
# and scored on AlpacaEval (best-of-n win rate against the reference answers, judged by the tiny RM, and the
# three diversity metrics, every number with its 95% bootstrap CI over prompts), then the figure
# results/figures/<NAME>/alpha_sweep.png and the table alpha_sweep.csv beside it (ts2.report figures=[alpha_sweep]).
#
# Default grid: ALPHAS=0,0.1,0.25,0.5,1,2 (0 = the sparsemax loss alone; 0.25 = the official Llama value)
# x CLAMPS=0.99,null (the official cap on the tail mass, and the exact uncapped penalty) = 12 runs.
# Every run is the tiny Table 1's SFT (experiment=table1_tiny, its sizes in conf/experiment/table1_tiny.yaml) with
# loss.alpha and loss.clamp swept, so the α = 0.25 / clamp 0.99 run is the Table-1 TS² row's config. Sampling,
# sampler and judge come from the same experiment's `pipeline:` block as Table 1's, so the sweep's points line up
# with the table. The estimated cost is printed first (`python -m ts2.plan alpha_sweep`).
#
# Knobs (environment): ALPHAS, CLAMPS, EXPERIMENT (default table1_tiny: the training and the sizes), NAME
# (runs/<NAME>/, default alpha_sweep_tiny), OVERRIDES (Hydra overrides of the experiment: `pipeline.*` change the sampling sizes,
# e.g. "pipeline.sample.prompts=20"; the others go to training, e.g. "debug=cpu seed=1"), EVAL_EXTRA (more
# `ts2.evaluate` overrides, e.g. another judge: "rm=fsfairx"), RUNS_DIR (default runs), RESULTS (default results),
# PY (python), DRY_RUN=1 (print the plan, run nothing).
# Every stage resumes: a rerun skips finished training runs (train.resume=true) and existing metrics files.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
ALPHAS=${ALPHAS:-0,0.1,0.25,0.5,1,2}
CLAMPS=${CLAMPS:-0.99,null}
EXPERIMENT=${EXPERIMENT:-table1_tiny}
SWEEP=${NAME:-alpha_sweep_tiny} SWEEP_RUNS=${RUNS_DIR:-runs} SWEEP_RESULTS=${RESULTS:-results}  # before the eval below
DRY_RUN=${DRY_RUN:-0}
read -r -a ARGS <<<"${OVERRIDES:-}"
read -r -a EVAL_EXTRA <<<"${EVAL_EXTRA:-}"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-offline}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
SETTINGS=$("$PY" -m ts2.conf pipeline "$EXPERIMENT" ${ARGS[@]+"${ARGS[@]}"})
eval "$SETTINGS"  # Table 1's sizes: LIMIT, SAMPLE_N, SAMPLE_MAX_NEW_TOKENS, SAMPLER, EVALUATE; TRAIN_ARGS (and
                  # the table's NAME, RUNS_DIR, RESULTS, ..., which the sweep does not use)

# The Hydra multirun: method=ts2 with loss.alpha and loss.clamp swept (the cartesian product).
TRAIN_OVERRIDES=(method=ts2 "experiment=${EXPERIMENT}" "loss.alpha=${ALPHAS}" "loss.clamp=${CLAMPS}" "name=${SWEEP}"
                 "paths.runs_dir=${SWEEP_RUNS}" train.resume=true ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
SIZES=("limit=${LIMIT[alpaca_eval]}" "n=${SAMPLE_N}" "max_new_tokens=${SAMPLE_MAX_NEW_TOKENS}")
SAMPLE_ARGS=(eval=alpaca_eval "${SIZES[@]/#/sample.}" "${SAMPLER[@]}")
EVAL_ARGS=(eval=alpaca_eval "${SIZES[@]/#/eval.sample.}" "${EVALUATE[@]}" ${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"})

"$PY" -m ts2.plan alpha_sweep "$EXPERIMENT" ${ARGS[@]+"${ARGS[@]}"} -- "${TRAIN_OVERRIDES[@]}"
if [ "$DRY_RUN" = 1 ]; then
  echo "DRY_RUN=1: the plan (nothing is run)"
  echo "train: $PY -m ts2.train -m ${TRAIN_OVERRIDES[*]}"
  echo "then, per run folder ${SWEEP_RUNS}/${SWEEP}/<overrides>/:"
  echo "  $PY -m ts2.sample run_dir=<run> ${SAMPLE_ARGS[*]}"
  echo "  $PY -m ts2.evaluate run_dir=<run> ${EVAL_ARGS[*]}"
  echo "figure: $PY -m ts2.report runs_dir='${SWEEP_RUNS}/${SWEEP}' name=${SWEEP} out_dir=${SWEEP_RESULTS} figures=[alpha_sweep]"
  printf 'TRAIN_OVERRIDE %s\n' "${TRAIN_OVERRIDES[@]}"
  exit 0
fi

START=$(date +%s)
echo "== [1/3] train the TS² runs (α ∈ {${ALPHAS}} x clamp ∈ {${CLAMPS}}) -> ${SWEEP_RUNS}/${SWEEP}/"
"$PY" -m ts2.train -m "${TRAIN_OVERRIDES[@]}"

for run in "${SWEEP_RUNS}/${SWEEP}"/*/; do
  [ -f "${run}run.json" ] || continue
  run=${run%/}
  if [ -f "${run}/metrics/alpaca_eval.json" ]; then echo "== ${run}: metrics already there (skipped)"; continue; fi
  echo "== [2/3] sample + evaluate ${run}"
  "$PY" -m ts2.sample "run_dir='${run}'" "${SAMPLE_ARGS[@]}"
  "$PY" -m ts2.evaluate "run_dir='${run}'" "${EVAL_ARGS[@]}"
done

echo "== [3/3] figure -> ${SWEEP_RESULTS}/figures/${SWEEP}/alpha_sweep.{png,csv}"
"$PY" -m ts2.report "runs_dir='${SWEEP_RUNS}/${SWEEP}'" "name=${SWEEP}" "out_dir=${SWEEP_RESULTS}" "figures=[alpha_sweep]"
echo "α sweep done in $(( ($(date +%s) - START) / 60 )) min $(( ($(date +%s) - START) % 60 )) s"
