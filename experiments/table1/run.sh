#!/usr/bin/env bash
# Table 1 end to end: train the methods, sample every benchmark, score, write results/.
#
# What runs is configured, not typed here: each experiment's `pipeline:` block in conf/experiment/<id>.yaml (methods,
# seeds per method, TS²'s selected α, jobs, sampling subset, sampler, judge, reference-LM score, judge controls,
# temperature frontiers, report settings; `python -m ts2.conf pipeline <id>` prints it as this script reads it, and
# `python -m ts2.plan runs <id>` the training jobs).
#   SCALE=tiny  (default) experiment table1_tiny: CPU, offline, every SFT from the pretrained tiny base
#               (assets/tiny_base/), the tiny judge trained from that base, a prompt subset.
#   SCALE=small experiment table1_small: CPU, offline, every SFT from SmolLM2-135M-Instruct (its GGUF, converted
#               once), the SmolLM2 Bradley-Terry judge, a prompt subset.
#   SCALE=paper experiments paper_llama31_8b and paper_qwen2_7b (the poster's two models): GPUs, hub access, vllm,
#               the FsfairX judge (PAPER.md §3-4). Training through experiments/table1/train_paper.sh (the launcher
#               of `make train-paper`; BACKEND=deepspeed_zero2 | fsdp2), sampling as one shard per visible GPU.
#   DRY_RUN=1   print the plan (`python -m ts2.plan table1`: settings, each job's config and done/todo, the controls
#               and frontiers, the cost, prerequisites), then every command this script would run, [todo] or
#               [done]. Runs nothing; exits 1 when a prerequisite is missing or the run would be refused.
#
# Stages, per experiment: [1] the base model (the tiny base's check; the GGUF conversion of SmolLM2, which the
# reference-LM score reads at every scale it is on); [2] the judge (built beside the first training jobs) and every
# training job (a method's seeds, TS²'s two α rows); [3] per run: sample + score each benchmark, the reference-LM
# score, held-out CE and TSPD; per temperature-frontier point: AlpacaEval sampled at that temperature into
# <run>/frontier/t<T>/ and scored (judge + reference LM); per judge control: its samples in runs/<name>/control=<kind>/,
# scored as the runs are; then the token-distribution data; [4] the report; [5] the time of every stage.
#
# Knobs (environment): EXPERIMENTS (default: by SCALE), METHODS=a,b (a subset: runs/<name>_subset_a-b/ and
# results/<name>_subset_a-b/, never over the full table), SEEDS=k (every method k training seeds 1234.., instead of
# the block's seeds/seeds_for), JOBS=k, RUN_NAME (runs/<RUN_NAME>/ and results/<RUN_NAME>/), RESULTS_DIR (another
# folder instead of results/, e.g. for a check run: the tables, figures and token-distribution data), OVERRIDES (Hydra
# overrides of the experiment: `pipeline.*` size the stages, e.g. "pipeline.sample.prompts=4 pipeline.sample.n=2";
# the others go to every training command), BACKEND, PY.
# A training run is reused only if its run.json config_hash equals the hash of the config this script would train
# (ts2.plan.train_jobs; a debug run is another config). Any other run folder under runs/<name>/ (but the judge's
# control=<kind>/ folders) stops the script before it runs anything: the report reads every folder there. A rerun
# skips every finished stage, so a crash costs only the unfinished work. At the end: the time of every stage (also
# in runs/<name>/stage_times.tsv).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
SCALE=${SCALE:-tiny}
DRY_RUN=${DRY_RUN:-0}
case "$SCALE" in
  tiny) EXPERIMENTS=${EXPERIMENTS:-table1_tiny} ;;
  small) EXPERIMENTS=${EXPERIMENTS:-table1_small} ;;
  paper) EXPERIMENTS=${EXPERIMENTS:-paper_llama31_8b,paper_qwen2_7b} ;;
  *) echo "SCALE must be tiny, small or paper, got '$SCALE'" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-$([ "$SCALE" = paper ] && echo 0 || echo 1)}
export TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-offline}
read -r -a ARGS <<<"${OVERRIDES:-}"  # the knobs as overrides of the experiment config (ts2.conf.pipeline)
ARGS+=(${METHODS:+"pipeline.methods=[$METHODS]"} ${SEEDS:+"pipeline.seeds=$SEEDS" ++pipeline.seeds_for=null}
       ${JOBS:+"pipeline.jobs=$JOBS"} ${RUN_NAME:+"name=$RUN_NAME"})
LAUNCH_ARGS=()  # paper: the training overrides of the launcher's BACKEND, so the planner composes what it launches
if [ "$SCALE" = paper ]; then
  read -r -a LAUNCH_ARGS <<<"$(PRINT=settings bash experiments/table1/train_paper.sh | tr '\n' ' ')"
fi

# -------------------------------------------------------------------------------------------- timing, dry run
START_ALL=$(date +%s)
TIMES=""
record() {  # record STAGE JOB SECONDS STATUS
  [ -n "$TIMES" ] && printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TIMES"
  return 0
}
skip() {  # skip STAGE JOB: its output is already complete
  record "$1" "$2" 0 skipped
  if [ "$DRY_RUN" = 1 ]; then echo "  [done] $1 $2"; fi
}
timed() {  # timed STAGE JOB LOG cmd...: run the command (DRY_RUN=1: print it), log to LOG, record wall seconds
  local stage=$1 job=$2 log=$3 t0 rc=0
  shift 3
  if [ "$DRY_RUN" = 1 ]; then
    if declare -F "$1" >/dev/null; then "$@"; else echo "  [todo] $stage $job: $*"; fi
    return 0
  fi
  t0=$(date +%s)
  "$@" >>"$log" 2>&1 || rc=$?
  record "$stage" "$job" $(($(date +%s) - t0)) "$([ $rc = 0 ] && echo ran || echo "FAILED($rc)")"
  if [ $rc != 0 ]; then echo "!! $stage $job failed (rc=$rc): see $log" >&2; tail -20 "$log" >&2; fi
  return $rc
}

# -------------------------------------------------------------------------------------------- jobs
samples_done() { "$PY" -m ts2.plan done samples "$@"; }  # FOLDER BENCH LIMIT N MAX_NEW_TOKENS
metrics_done() { "$PY" -m ts2.plan done metrics "$@"; }  # FOLDER BENCH [LIMIT N]
threads() { [ -n "$THREADS" ] && echo env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" || echo env; }

train_job() {  # train_job KEY: the training run of one job (ts2.plan runs: its method, seed and row overrides)
  local key=$1 log="$RUNS_DIR/$NAME/logs/train_${1//\//_}.log" args
  if [ -n "${TRAINED[$key]:-}" ]; then skip train "$key"; return 0; fi
  args=("experiment=$EXPERIMENT" "method=${METHOD_OF[$key]}" "name=$NAME" ${JOB_ARGS[$key]:-} train.resume=true
        ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
  if [ "$LAUNCHER" = accelerate ]; then  # the launcher of make train-paper, with its --config_file
    local line cmd=()
    line=$(PY="$PY" PRINT=1 bash experiments/table1/train_paper.sh "${args[@]}")
    while IFS= read -r a; do cmd+=("$a"); done <<<"$line"
    timed train "$key" "$log" "${cmd[@]}"
  else
    timed train "$key" "$log" $(threads) "$PY" -m ts2.train "${args[@]}"
  fi
}

shards() {  # shards LOG RUN BENCHES cmd...: cmd shard=i/k on each visible GPU (CUDA_VISIBLE_DEVICES), every shard
            # waited for (one failing fails the job), then merged into <run>/samples/<bench>.jsonl
  local log=$1 run=$2 benches=$3 i k=${#GPU_IDS[@]} pids=() rc=0
  shift 3
  for ((i = 0; i < k; i++)); do
    if [ "$DRY_RUN" = 1 ]; then echo "  [todo] sample shard $i/$k: CUDA_VISIBLE_DEVICES=${GPU_IDS[i]} $* shard=$i/$k &"
    else CUDA_VISIBLE_DEVICES=${GPU_IDS[i]} "$@" "shard=$i/$k" >>"${log%.log}.shard$i.log" 2>&1 & pids+=($!); fi
  done
  for i in "${!pids[@]}"; do  # each shard's own exit status (a bare `wait` would return 0)
    wait "${pids[i]}" || { rc=$?; echo "!! sampling shard $i/$k failed: ${log%.log}.shard$i.log" >&2; }
  done
  [ $rc = 0 ] || return $rc
  if [ "$DRY_RUN" = 1 ]; then echo "  [todo] merge: $PY -m ts2.sampling.shards merge $run ${benches//,/ }"; return 0; fi
  "$PY" -m ts2.sampling.shards merge "$run" ${benches//,/ }
}

score_alpaca() {  # score_alpaca STAGE JOB LOG FOLDER WHERE...: AlpacaEval (the judge, diversity) and the reference-LM
                  # score of FOLDER/samples into FOLDER/metrics (WHERE: evaluate's run_dir/samples_dir/metrics_dir)
  local stage=$1 job=$2 log=$3 folder=$4
  shift 4
  if metrics_done "$folder" alpaca_eval "${LIMIT[alpaca_eval]}" "$SAMPLE_N"; then skip "$stage" "$job:alpaca_eval"; else
    timed "$stage" "$job:alpaca_eval" "$log" $(threads) "$PY" -m ts2.evaluate "$@" eval=alpaca_eval "${EVAL_AE[@]}" \
      "${EVALUATE[@]}"
  fi
  [ ${#REF_LM[@]} -gt 0 ] || return 0
  if metrics_done "$folder" ref_lm "${LIMIT[alpaca_eval]}" "$REF_LM_N"; then skip "$stage" "$job:ref_lm"; else
    timed "$stage" "$job:ref_lm" "$log" $(threads) "$PY" -m ts2.evaluate "$@" eval=ref_lm "${EVAL_AE[@]}" "${REF_LM[@]}"
  fi
}

eval_job() {  # eval_job KEY: sample + score every benchmark, the reference-LM score, held-out CE, TSPD of one run
  local key=$1 run=${RUN[$1]} log="$RUNS_DIR/$NAME/logs/eval_${1//\//_}.log" b lim list
  if [ "$DRY_RUN" != 1 ] && ! grep -q '"status": *"finished"' "$run/run.json" 2>/dev/null; then
    echo "!! no finished training run for $key in $run" >&2; return 1
  fi
  # benchmarks grouped by prompt limit: one sample and one evaluate process per group (imports, model load once)
  for lim in $(for b in "${EVALS[@]}"; do echo "${LIMIT[$b]}"; done | sort -u); do
    local sub=() esub=() todo=() etodo=()
    if [ "$lim" != all ]; then
      sub=(sample.limit="$lim" sample.n="$SAMPLE_N" sample.max_new_tokens="$SAMPLE_MAX_NEW_TOKENS")
      esub=(eval.sample.limit="$lim" eval.sample.n="$SAMPLE_N" eval.sample.max_new_tokens="$SAMPLE_MAX_NEW_TOKENS")
    fi
    for b in "${EVALS[@]}"; do
      [ "${LIMIT[$b]}" = "$lim" ] || continue
      samples_done "$run" "$b" "${LIMIT[$b]}" "$SAMPLE_N" "$SAMPLE_MAX_NEW_TOKENS" || todo+=("$b")
      metrics_done "$run" "$b" "$lim" "$SAMPLE_N" || etodo+=("$b")
    done
    if [ ${#todo[@]} -gt 0 ]; then
      list=$(IFS=,; echo "${todo[*]}")
      local cmd=("$PY" -m ts2.sample "run_dir='$run'" "eval=[$list]" "${sub[@]}" "${SAMPLER[@]}")
      if [ "$SHARDS" = gpus ]; then timed sample "$key:$list" "$log" shards "$log" "$run" "$list" "${cmd[@]}"
      else timed sample "$key:$list" "$log" $(threads) "${cmd[@]}"; fi
    else
      skip sample "$key:$lim"
    fi
    if [ ${#etodo[@]} -gt 0 ]; then
      list=$(IFS=,; echo "${etodo[*]}")
      timed evaluate "$key:$list" "$log" $(threads) "$PY" -m ts2.evaluate "run_dir='$run'" "eval=[$list]" \
        "${esub[@]}" "${EVALUATE[@]}"
    else
      skip evaluate "$key:$lim"
    fi
  done
  if [ ${#REF_LM[@]} -gt 0 ]; then  # the reference-LM score of the AlpacaEval answers (pipeline.ref_lm)
    if metrics_done "$run" ref_lm "${LIMIT[alpaca_eval]}" "$REF_LM_N"; then skip ref_lm "$key"; else
      timed ref_lm "$key" "$log" $(threads) "$PY" -m ts2.evaluate "run_dir='$run'" eval=ref_lm "${EVAL_AE[@]}" \
        "${REF_LM[@]}"
    fi
  fi
  if metrics_done "$run" heldout_ce; then skip heldout_ce "$key"; else
    timed heldout_ce "$key" "$log" $(threads) "$PY" -m ts2.evaluate "run_dir='$run'" eval=heldout_ce \
      ${HELDOUT_CE[@]+"${HELDOUT_CE[@]}"}
  fi
  # TSPD (head preservation / tail mass per held-out token; issue #13), on the first TSPD_ROWS held-out rows
  if metrics_done "$run" tspd; then skip tspd "$key"; else
    timed tspd "$key" "$log" $(threads) "$PY" -m ts2.evaluate "run_dir='$run'" eval=tspd \
      ${TSPD_ROWS:+eval.sample.limit="$TSPD_ROWS"}
  fi
}

frontier_job() {  # frontier_job KEY T: AlpacaEval of KEY's run sampled at temperature T into <run>/frontier/t<T>/
  local key=$1 t=$2 run=${RUN[$1]} log="$RUNS_DIR/$NAME/logs/frontier_${1//\//_}_t$2.log"
  local dir="$run/frontier/t$t"
  if samples_done "$dir" alpaca_eval "${LIMIT[alpaca_eval]}" "$SAMPLE_N" "$SAMPLE_MAX_NEW_TOKENS"; then
    skip frontier "$key:t$t:sample"
  else
    timed frontier "$key:t$t:sample" "$log" $(threads) "$PY" -m ts2.sample "run_dir='$run'" eval=alpaca_eval \
      "${SAMPLE_AE[@]}" "sample.temperature=$t" "out_dir='$dir/samples'" "${SAMPLER[@]}"
  fi
  score_alpaca frontier "$key:t$t" "$log" "$dir" "run_dir='$run'" "samples_dir='$dir/samples'" \
    "metrics_dir='$dir/metrics'"
}

control_job() {  # control_job KIND: a judge control's AlpacaEval answers in runs/<name>/control=KIND/, scored as a run's
  local kind=$1 dir="$RUNS_DIR/$NAME/control=$1" log="$RUNS_DIR/$NAME/logs/control_$1.log"
  if samples_done "$dir" alpaca_eval "${LIMIT[alpaca_eval]}" "$SAMPLE_N" "$SAMPLE_MAX_NEW_TOKENS" &&
     "$PY" -m ts2.plan done control "$dir" "$kind"; then
    skip control "$kind:sample"
  elif [ "$kind" = base ]; then  # the untuned base model, sampled as the runs are, then marked as the control
    timed control "$kind:sample" "$log" $(threads) "$PY" -m ts2.sample "model=$BASE_MODEL" eval=alpaca_eval \
      "${SAMPLE_AE[@]}" "out_dir='$dir/samples'" "${SAMPLER[@]}"
    timed control "$kind:mark" "$log" "$PY" -m ts2.sampling.controls "$dir" base --model "$BASE_MODEL"
  else  # reference answers, their words shuffled, random tokens: made from the references (sampler=control)
    timed control "$kind:sample" "$log" $(threads) "$PY" -m ts2.sample "model=$BASE_MODEL" sampler=control \
      "sampler.kind=$kind" eval=alpaca_eval "${SAMPLE_AE[@]}" "out_dir='$dir/samples'"
  fi
  score_alpaca control "$kind" "$log" "$dir" "run_dir='$dir'"
}

pool() {  # pool "FN ARG..." ...: each command, JOBS at a time (DRY_RUN=1: one after the other)
  local item cmd failed=0
  for item in "$@"; do
    read -r -a cmd <<<"$item"
    if [ "$DRY_RUN" = 1 ]; then "${cmd[@]}"; continue; fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || failed=1; done
    echo "   .. $item"
    "${cmd[@]}" &
  done
  while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
  return $failed
}

rm_job() {  # the judge, built beside the first training jobs and cached: the tiny RM (pipeline.rm: its
            # TinyRMSpec), or another judge's build command (pipeline.rm_build, run with $PY; cached by itself)
  if [ ${#RM[@]} -gt 0 ]; then
    if "$PY" -m ts2.plan done rm "${RM[@]}"; then skip rm tiny_rm; else
      timed rm tiny_rm "$RUNS_DIR/$NAME/logs/rm.log" env OMP_NUM_THREADS=1 "$PY" -m ts2.models.tiny_rm \
        $(printf -- '--set %s ' "${RM[@]}")
    fi
  fi
  if [ ${#RM_BUILD[@]} -gt 0 ]; then
    timed rm judge "$RUNS_DIR/$NAME/logs/rm.log" env OMP_NUM_THREADS=1 "$PY" "${RM_BUILD[@]}"
  fi
}

# -------------------------------------------------------------------------------------------- run
REFUSED=0
for EXPERIMENT_ID in ${EXPERIMENTS//,/ }; do
  RM=()
  SETTINGS=$("$PY" -m ts2.conf pipeline "$EXPERIMENT_ID" ${ARGS[@]+"${ARGS[@]}"})
  eval "$SETTINGS"  # the pipeline block: NAME, METHODS, JOBS, EVALS, LIMIT, SAMPLE_*, SAMPLER, EVALUATE, REF_LM, ...
  RESULTS=${RESULTS_DIR:-results}${RESULTS#results}  # results[/<name>] under RESULTS_DIR
  JOBS_STATE=$("$PY" -m ts2.plan runs "$EXPERIMENT_ID" ${ARGS[@]+"${ARGS[@]}"} ${LAUNCH_ARGS[@]+"${LAUNCH_ARGS[@]}"})
  eval "$JOBS_STATE"  # JOB_KEYS, RUN[key] (the folder), TRAINED[key] (a finished run of the same config), METHOD_OF,
                      # JOB_ARGS (seed, row overrides), FRONTIER_KEYS, CONFLICTS
  SAMPLE_AE=() EVAL_AE=()  # AlpacaEval's subset (frontier points, controls, the reference-LM score)
  if [ "${LIMIT[alpaca_eval]:-all}" != all ]; then
    SAMPLE_AE=("sample.limit=${LIMIT[alpaca_eval]}" "sample.n=$SAMPLE_N" "sample.max_new_tokens=$SAMPLE_MAX_NEW_TOKENS")
    EVAL_AE=("${SAMPLE_AE[@]/#/eval.}")
  fi
  if [ "$SHARDS" = gpus ]; then
    mapfile -t GPU_IDS < <(if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES"
                           else nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true; fi)
    if [ ${#GPU_IDS[@]} = 0 ] && [ "$DRY_RUN" = 1 ]; then mapfile -t GPU_IDS < <(seq 0 $((GPUS - 1))); fi
    if [ ${#GPU_IDS[@]} = 0 ]; then echo "!! $EXPERIMENT samples one shard per GPU: no GPU is visible" >&2; exit 1; fi
  fi
  if [ "$DRY_RUN" = 1 ]; then
    "$PY" -m ts2.plan table1 "$EXPERIMENT_ID" ${ARGS[@]+"${ARGS[@]}"} ${LAUNCH_ARGS[@]+"${LAUNCH_ARGS[@]}"} || REFUSED=1
    echo "== the commands ([done]: the output is complete; [todo]: the command runs)"
  elif [ ${#CONFLICTS[@]} -gt 0 ]; then
    printf '!! refused, nothing run: %s\n' "${CONFLICTS[@]}" >&2
    exit 1
  fi
  if [ "$DRY_RUN" != 1 ]; then
    mkdir -p "$RUNS_DIR/$NAME/logs"
    TIMES="$RUNS_DIR/$NAME/stage_times.tsv"
    printf 'stage\tjob\tseconds\tstatus\n' >"$TIMES"
  fi
  echo "== [0/5] $EXPERIMENT -> $RUNS_DIR/$NAME/ (${#JOB_KEYS[@]} training jobs: ${JOB_KEYS[*]}; $JOBS job(s))"
  echo "== [1/5] base model $BASE_MODEL${GGUF[*]:+; GGUF conversion of ${GGUF[*]}}"
  if [ "$BASE_MODEL" = tiny_base ]; then  # the committed copy, checked against its manifest (else built: ~1 h)
    timed base tiny_base "$RUNS_DIR/$NAME/logs/tiny_base.log" env OMP_NUM_THREADS=1 "$PY" -m ts2.models.tiny_base
    [ "$DRY_RUN" = 1 ] || tail -1 "$RUNS_DIR/$NAME/logs/tiny_base.log"
  fi
  for m in ${GGUF[@]+"${GGUF[@]}"}; do  # converted once into the cache, then loaded like any model folder
    if "$PY" -m ts2.plan done gguf "$m"; then skip gguf "$m"; else
      timed gguf "$m" "$RUNS_DIR/$NAME/logs/gguf.log" "$PY" -m ts2.models.gguf "$m"
    fi
  done
  echo "== [2/5] judge + train ${JOB_KEYS[*]} (logs: $RUNS_DIR/$NAME/logs/)"
  if [ "$DRY_RUN" = 1 ]; then rm_job; else rm_job & fi
  ITEMS=()
  for key in "${JOB_KEYS[@]}"; do ITEMS+=("train_job $key"); done
  pool "${ITEMS[@]}"
  wait
  echo "== [3/5] per run: sample ${EVALS[*]} + evaluate${REF_LM[*]:+ + ref_lm} + held-out CE + TSPD;" \
       "frontiers (T = ${FRONTIER_TEMPERATURES[*]:-none}) of ${FRONTIER_KEYS[*]:-none}; controls ${CONTROLS[*]:-none}"
  ITEMS=()
  for key in "${JOB_KEYS[@]}"; do ITEMS+=("eval_job $key"); done
  for key in ${FRONTIER_KEYS[@]+"${FRONTIER_KEYS[@]}"}; do
    for t in "${FRONTIER_TEMPERATURES[@]}"; do ITEMS+=("frontier_job $key $t"); done
  done
  for kind in ${CONTROLS[@]+"${CONTROLS[@]}"}; do ITEMS+=("control_job $kind"); done
  pool "${ITEMS[@]}"
  if [ "$TOKEN_DISTRIBUTION" = true ]; then  # the token-distribution figure's data (our models beside the official 8B)
    mapfile -t RUNS < <(printf '%s\n' "${RUN[@]}" | sort)
    timed token_distribution "$NAME" "$RUNS_DIR/$NAME/logs/token_distribution.log" env OMP_NUM_THREADS=1 \
      "$PY" -m ts2.analysis.token_distribution "${RUNS[@]}" --out "$RESULTS" --name "$NAME"
  fi
  echo "== [4/5] report -> $RESULTS/${NAME}.{md,csv,tex} + $RESULTS/figures/${NAME}/"
  timed report "$NAME" "$RUNS_DIR/$NAME/logs/report.log" "$PY" -m ts2.report runs_dir="$RUNS_DIR/${NAME}" \
    name="${NAME}" out_dir="$RESULTS" ${REPORT[@]+"${REPORT[@]}"}
  [ "$DRY_RUN" = 1 ] && continue
  cat "$RESULTS/${NAME}.md"
  echo "== [5/5] time per stage (wall seconds; $JOBS job(s) in parallel, so job times add up to more than the wall)"
  awk -F'\t' -v wall=$(($(date +%s) - START_ALL)) '
    NR > 1 { if (!($1 in n)) order[++k] = $1; n[$1]++; skip[$1] += ($4 == "skipped"); sec[$1] += $3 }
    END {
      printf "%-28s %5s %8s %12s\n", "stage", "jobs", "skipped", "job-seconds"
      for (i = 1; i <= k; i++) { s = order[i]; printf "%-28s %5d %8d %12d\n", s, n[s], skip[s], sec[s]; sum += sec[s] }
      printf "%-28s %5s %8s %12d\n", "sum of job times", "", "", sum
      printf "%-28s %5s %8s %12d\n", "wall clock (whole script)", "", "", wall
    }' "$TIMES"
done
exit $REFUSED
