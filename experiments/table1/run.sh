#!/usr/bin/env bash
# Table 1 end to end: train the methods, sample every benchmark, score, write results/.
#
# What runs is configured, not typed here: each experiment's `pipeline:` block in conf/experiment/<id>.yaml (methods,
# seeds, jobs, sampling subset, sampler, judge; `python -m ts2.conf pipeline <id>` prints it as this script reads it).
#   SCALE=tiny  (default) experiment table1_tiny: CPU, offline, every SFT from the pretrained tiny base
#               (assets/tiny_base/), the tiny judge trained from that base, a prompt subset.
#   SCALE=paper experiments paper_llama31_8b and paper_qwen2_7b (the poster's two models): GPUs, hub access, vllm,
#               the FsfairX judge (PAPER.md §3-4). Training through experiments/table1/train_paper.sh (the launcher
#               of `make train-paper`; BACKEND=deepspeed_zero2 | fsdp2), sampling as one shard per visible GPU.
#   DRY_RUN=1   print the plan (`python -m ts2.plan table1`: settings, each job's config and done/todo, cost,
#               prerequisites), then every command this script would run, [todo] or [done]. Runs nothing; exits 1
#               when a prerequisite is missing or the run would be refused.
#
# Knobs (environment): EXPERIMENTS (default: by SCALE), METHODS=a,b (a subset: runs/<name>_subset_a-b/ and
# results/<name>_subset_a-b/, never over the full table), SEEDS=k (training seeds 1234..), JOBS=k, RUN_NAME
# (runs/<RUN_NAME>/ and results/<RUN_NAME>/), OVERRIDES (Hydra overrides of the experiment: `pipeline.*` size the
# stages, e.g. "pipeline.sample.prompts=4 pipeline.sample.n=2"; the others go to every training command), BACKEND, PY.
# A training run is reused only if its run.json config_hash equals the hash of the config this script would train
# (ts2.plan.train_jobs; a debug run is another config). Any other run folder under runs/<name>/ stops the script
# before it runs anything: the report reads every folder there. A rerun skips every finished stage, so a crash costs
# only the unfinished work. At the end: the time of every stage (also in runs/<name>/stage_times.tsv).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
SCALE=${SCALE:-tiny}
DRY_RUN=${DRY_RUN:-0}
case "$SCALE" in
  tiny) EXPERIMENTS=${EXPERIMENTS:-table1_tiny} ;;
  paper) EXPERIMENTS=${EXPERIMENTS:-paper_llama31_8b,paper_qwen2_7b} ;;
  *) echo "SCALE must be tiny or paper, got '$SCALE'" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-$([ "$SCALE" = tiny ] && echo 1 || echo 0)}
export TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-offline}
read -r -a ARGS <<<"${OVERRIDES:-}"  # the knobs as overrides of the experiment config (ts2.conf.pipeline)
ARGS+=(${METHODS:+"pipeline.methods=[$METHODS]"} ${SEEDS:+"pipeline.seeds=$SEEDS"} ${JOBS:+"pipeline.jobs=$JOBS"}
       ${RUN_NAME:+"name=$RUN_NAME"})
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
seed_args() { [ "${#SEEDS[@]}" -gt 1 ] && echo "seed=$1" || true; }  # one seed: the paper's 1234, no folder suffix

train_job() {  # train_job METHOD SEED
  local m=$1 seed=$2 log="$RUNS_DIR/$NAME/logs/train_$1$2.log" args
  if [ -n "${TRAINED[$m/$seed]:-}" ]; then skip train "$m/$seed"; return 0; fi
  args=("experiment=$EXPERIMENT" "method=$m" "name=$NAME" $(seed_args "$seed") train.resume=true
        ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
  if [ "$LAUNCHER" = accelerate ]; then  # the launcher of make train-paper, with its --config_file
    local line cmd=()
    line=$(PY="$PY" PRINT=1 bash experiments/table1/train_paper.sh "${args[@]}")
    while IFS= read -r a; do cmd+=("$a"); done <<<"$line"
    timed train "$m/$seed" "$log" "${cmd[@]}"
  else
    timed train "$m/$seed" "$log" env OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" -m ts2.train "${args[@]}"
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

samples_done() { "$PY" -m ts2.plan done samples "$1" "$2" "${LIMIT[$2]}" "$SAMPLE_N" "$SAMPLE_MAX_NEW_TOKENS"; }
metrics_done() { "$PY" -m ts2.plan done metrics "$@"; }

eval_job() {  # eval_job METHOD SEED: sample + score every benchmark, held-out CE, TSPD
  local m=$1 seed=$2 run=${RUN[$1/$2]} log="$RUNS_DIR/$NAME/logs/eval_$1$2.log" b lim list env=(env)
  if [ "$DRY_RUN" != 1 ] && ! grep -q '"status": *"finished"' "$run/run.json" 2>/dev/null; then
    echo "!! no finished training run for $m (seed $seed) in $run" >&2; return 1
  fi
  [ -n "$THREADS" ] && env=(env OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS)
  # benchmarks grouped by prompt limit: one sample and one evaluate process per group (imports, model load once)
  for lim in $(for b in "${EVALS[@]}"; do echo "${LIMIT[$b]}"; done | sort -u); do
    local sub=() esub=() todo=() etodo=()
    if [ "$lim" != all ]; then
      sub=(sample.limit="$lim" sample.n="$SAMPLE_N" sample.max_new_tokens="$SAMPLE_MAX_NEW_TOKENS")
      esub=(eval.sample.limit="$lim" eval.sample.n="$SAMPLE_N" eval.sample.max_new_tokens="$SAMPLE_MAX_NEW_TOKENS")
    fi
    for b in "${EVALS[@]}"; do
      [ "${LIMIT[$b]}" = "$lim" ] || continue
      samples_done "$run" "$b" || todo+=("$b")
      metrics_done "$run" "$b" "$lim" "$SAMPLE_N" || etodo+=("$b")
    done
    if [ ${#todo[@]} -gt 0 ]; then
      list=$(IFS=,; echo "${todo[*]}")
      local cmd=("$PY" -m ts2.sample "run_dir='$run'" "eval=[$list]" "${sub[@]}" "${SAMPLER[@]}")
      if [ "$SHARDS" = gpus ]; then timed sample "$m/$seed:$list" "$log" shards "$log" "$run" "$list" "${cmd[@]}"
      else timed sample "$m/$seed:$list" "$log" "${env[@]}" "${cmd[@]}"; fi
    else
      skip sample "$m/$seed:$lim"
    fi
    if [ ${#etodo[@]} -gt 0 ]; then
      list=$(IFS=,; echo "${etodo[*]}")
      timed evaluate "$m/$seed:$list" "$log" "${env[@]}" "$PY" -m ts2.evaluate "run_dir='$run'" "eval=[$list]" \
        "${esub[@]}" "${EVALUATE[@]}"
    else
      skip evaluate "$m/$seed:$lim"
    fi
  done
  if metrics_done "$run" heldout_ce; then skip heldout_ce "$m/$seed"; else
    timed heldout_ce "$m/$seed" "$log" "${env[@]}" "$PY" -m ts2.evaluate "run_dir='$run'" eval=heldout_ce
  fi
  # TSPD (head preservation / tail mass per held-out token; issue #13), on the first TSPD_ROWS held-out rows
  if metrics_done "$run" tspd; then skip tspd "$m/$seed"; else
    timed tspd "$m/$seed" "$log" "${env[@]}" "$PY" -m ts2.evaluate "run_dir='$run'" eval=tspd \
      ${TSPD_ROWS:+eval.sample.limit="$TSPD_ROWS"}
  fi
}

pool() {  # pool JOBFN: JOBFN method seed for every method and seed, JOBS at a time (DRY_RUN=1: one by one)
  local fn=$1 m seed failed=0
  for m in "${METHODS[@]}"; do
    for seed in "${SEEDS[@]}"; do
      if [ "$DRY_RUN" = 1 ]; then "$fn" "$m" "$seed"; continue; fi
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || failed=1; done
      echo "   .. $fn $m (seed $seed)"
      "$fn" "$m" "$seed" &
    done
  done
  while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
  return $failed
}

rm_job() {  # the tiny judge (pipeline.rm: its TinyRMSpec), built from the base beside training, cached
  if "$PY" -m ts2.plan done rm "${RM[@]}"; then skip rm tiny_rm; return 0; fi
  timed rm tiny_rm "$RUNS_DIR/$NAME/logs/tiny_rm.log" env OMP_NUM_THREADS=1 "$PY" -m ts2.models.tiny_rm \
    $(printf -- '--set %s ' "${RM[@]}")
}

# -------------------------------------------------------------------------------------------- run
REFUSED=0
for EXPERIMENT_ID in ${EXPERIMENTS//,/ }; do
  SETTINGS=$("$PY" -m ts2.conf pipeline "$EXPERIMENT_ID" ${ARGS[@]+"${ARGS[@]}"})
  eval "$SETTINGS"  # the pipeline block: NAME, METHODS, SEEDS, JOBS, EVALS, LIMIT, SAMPLE_*, SAMPLER, EVALUATE, ...
  JOBS_STATE=$("$PY" -m ts2.plan runs "$EXPERIMENT_ID" ${ARGS[@]+"${ARGS[@]}"} ${LAUNCH_ARGS[@]+"${LAUNCH_ARGS[@]}"})
  eval "$JOBS_STATE"  # RUN[method/seed] (the folder), TRAINED[...] (a finished run of the same config), CONFLICTS
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
  echo "== [0/5] $EXPERIMENT -> $RUNS_DIR/$NAME/ (methods ${METHODS[*]}; seeds ${SEEDS[*]}; $JOBS job(s))"
  if [ "$SCALE" = tiny ]; then
    echo "== [1/5] pretrained tiny base (committed copy, checked against its manifest; else built: ~1 h)"
    timed base tiny_base "$RUNS_DIR/$NAME/logs/tiny_base.log" env OMP_NUM_THREADS=1 "$PY" -m ts2.models.tiny_base
    [ "$DRY_RUN" = 1 ] || tail -1 "$RUNS_DIR/$NAME/logs/tiny_base.log"
  fi
  echo "== [2/5] ${RM:+tiny RM + }train ${METHODS[*]} (logs: $RUNS_DIR/$NAME/logs/)"
  if [ -n "${RM:-}" ]; then  # the tiny judge (pipeline.rm), built beside the first training jobs
    if [ "$DRY_RUN" = 1 ]; then rm_job; else rm_job & fi
  fi
  pool train_job
  wait
  echo "== [3/5] sample ${EVALS[*]} + evaluate + held-out CE + TSPD, per method"
  pool eval_job
  if [ "$TOKEN_DISTRIBUTION" = true ]; then  # the token-distribution figure's data (our models beside the official 8B)
    mapfile -t RUNS < <(printf '%s\n' "${RUN[@]}" | sort)
    timed token_distribution "$NAME" "$RUNS_DIR/$NAME/logs/token_distribution.log" env OMP_NUM_THREADS=1 \
      "$PY" -m ts2.analysis.token_distribution "${RUNS[@]}" --out "$RESULTS"
  fi
  echo "== [4/5] report -> $RESULTS/${NAME}.{md,csv,tex} + $RESULTS/figures/"
  timed report "$NAME" "$RUNS_DIR/$NAME/logs/report.log" "$PY" -m ts2.report runs_dir="$RUNS_DIR/${NAME}" \
    name="${NAME}" out_dir="$RESULTS"
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
