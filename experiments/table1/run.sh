#!/usr/bin/env bash
# Table 1 end to end: train the 8 methods, sample every benchmark, score, write results/.
#
#   SCALE=tiny  (default) CPU, offline. Every SFT starts from the pretrained tiny base (model=tiny_base,
#               committed under assets/tiny_base/); the judge is the tiny RM trained from that base; a subset
#               of prompts. Measured stage times: experiments/table1/README.md ("Time budget").
#   SCALE=paper GPUs, hub access (gated Llama-3.1 licence, Qwen-2), vllm, the FsfairX RM (PAPER.md §3-4); both
#               models of the poster's Table 1 (MODELS=llama31_8b,qwen2_7b).
#   DRY_RUN=1   print the plan (every job, its config, its outputs, done/todo; GPU-hours at paper scale) and check
#               the prerequisites (GPUs, vllm, weights, disk), naming what is missing. Runs nothing.
#
# Knobs (environment): METHODS (default: `python -m ts2.conf methods`), SEEDS=k (training seeds 1234..1234+k-1;
# default 1), JOBS (parallel method jobs; tiny default 2 = the 2 cores, one thread each), PROMPTS / HE_PROMPTS /
# N / NEW_TOKENS (tiny sampling subset: 40 prompts, 20 for HumanEval, 8 samples, 48 new tokens), RUN_NAME (runs/<RUN_NAME>/ and results/<RUN_NAME>.*), PY (python).
# A rerun skips every finished stage (a trained run, a complete sample file, a metrics file), so a crash costs
# only the unfinished work. At the end it prints the per-stage time breakdown (also in runs/<name>/stage_times.tsv).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
SCALE=${SCALE:-tiny}
DRY_RUN=${DRY_RUN:-0}
SEEDS=${SEEDS:-1}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-$([ "$SCALE" = tiny ] && echo 1 || echo 0)}
export TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-offline}

METHODS=${METHODS:-$("$PY" -m ts2.conf methods)}  # the 8 rows, from conf/method/ (the one list)

case "$SCALE" in
  tiny)
    MODELS=${MODELS:-tiny_base}
    JOBS=${JOBS:-2}
    THREADS=1                       # one torch thread per job: JOBS jobs share the cores
    TSPD_ROWS=${TSPD_ROWS:-40}      # held-out rows for the TSPD meter
    PROMPTS=${PROMPTS:-40}; HE_PROMPTS=${HE_PROMPTS:-20}; N=${N:-8}; NEW_TOKENS=${NEW_TOKENS:-48}
    EVALS=${EVALS:-alpaca_eval,creative_poem,creative_story,humaneval}
    SAMPLER=(sampler=hf sampler.torch_threads=1)
    # The tiny judge of the Table: trained from the base, reward read at the last response token (quirk=false),
    # 6 epochs: 57% held-out accuracy, the only setting tried whose 95% CI excludes 50% (README "The tiny reward model").
    RM_SET=(quirk=false epochs=6)
    EVAL_ARGS=(rm=tiny rm.quirk=false +rm.tiny.quirk=false +rm.tiny.epochs=6 diversity.num_workers=1)
    ;;
  paper)
    MODELS=${MODELS:-llama31_8b,qwen2_7b}
    JOBS=1
    THREADS=""
    EVALS=${EVALS:-alpaca_eval,creative_poem,creative_story,humaneval}
    PROMPTS=""; N=""; NEW_TOKENS=""
    SAMPLER=(sampler=vllm sampler.tensor_parallel_size="${TP:-1}")
    EVAL_ARGS=(rm=fsfairx)
    ;;
  *) echo "SCALE must be tiny or paper, got '$SCALE'" >&2; exit 2 ;;
esac

name_of() {  # results name of a model (RUN_NAME overrides it: runs/<RUN_NAME>/, results/<RUN_NAME>.*)
  if [ -n "${RUN_NAME:-}" ]; then echo "$RUN_NAME"; return; fi
  case "$1" in tiny_base) echo table1_tiny ;; *) echo "table1_$1" ;; esac
}
experiment_of() {
  case "$1" in tiny_base) echo table1_tiny ;; *) echo "paper_$1" ;; esac
}
seed_list() { local s; for ((s = 0; s < SEEDS; s++)); do echo $((1234 + s)); done; }
seed_args() { [ "$SEEDS" -gt 1 ] && echo "seed=$1" || true; }  # one seed: the paper's 1234, no folder suffix

# -------------------------------------------------------------------------------------------- timing
START_ALL=$(date +%s)
TIMES=""
record() {  # record STAGE JOB SECONDS STATUS
  [ -n "$TIMES" ] && printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TIMES"
  return 0
}
timed() {  # timed STAGE JOB LOG cmd...: run, log to LOG, record wall seconds
  local stage=$1 job=$2 log=$3 t0 rc=0
  shift 3
  t0=$(date +%s)
  "$@" >>"$log" 2>&1 || rc=$?
  record "$stage" "$job" $(($(date +%s) - t0)) "$([ $rc = 0 ] && echo ran || echo "FAILED($rc)")"
  if [ $rc != 0 ]; then echo "!! $stage $job failed (rc=$rc): see $log" >&2; tail -20 "$log" >&2; fi
  return $rc
}

# -------------------------------------------------------------------------------------------- state checks
# run_dir_of NAME METHOD SEED: the finished (or started) training run folder of that method and seed, if any.
run_dir_of() {
  "$PY" - "$@" <<'EOF'
import json, sys
from pathlib import Path
name, method, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
for rj in sorted(Path("runs", name).glob("*/run.json")):
    meta = json.loads(rj.read_text())
    cfg = rj.parent / "config.yaml"
    s = None
    if cfg.is_file():
        from omegaconf import OmegaConf
        s = OmegaConf.load(cfg).get("seed")
    if meta.get("method") == method and (s is None or int(s) == seed):
        print(rj.parent)
        break
EOF
}
run_finished() { [ -n "$1" ] && grep -q '"status": *"finished"' "$1/run.json" 2>/dev/null; }
samples_done() {  # samples_done RUN BENCH LIMIT: complete sample file of the requested size
  "$PY" - "$1/samples/$2.meta.json" "${3:-0}" "${N:-0}" "${NEW_TOKENS:-0}" <<'EOF'
import json, sys
p, prompts, n, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    m = json.load(open(p))
except OSError:
    sys.exit(1)
s = m.get("sample", {})
ok = m.get("complete") and (not prompts or (s.get("limit") == prompts and s.get("n") == n and s.get("max_new_tokens") == new))
sys.exit(0 if ok else 1)
EOF
}
metrics_done() {  # metrics_done RUN BENCH [LIMIT]: a complete metrics file (of LIMIT x N samples when given)
  "$PY" - "$1/metrics/$2.json" "${3:-0}" "${N:-0}" <<'EOF' 2>/dev/null
import json, sys
lim, n = int(sys.argv[2]), int(sys.argv[3] or 0)
try:
    m = json.load(open(sys.argv[1]))
except OSError:
    sys.exit(1)
ok = m.get("complete") and (not lim or (m.get("num_prompts") == lim and m.get("num_samples") == lim * n))
sys.exit(0 if ok else 1)
EOF
}

# -------------------------------------------------------------------------------------------- jobs
train_job() {  # train_job MODEL METHOD SEED
  local model=$1 m=$2 seed=$3 name exp run
  name=$(name_of "$model"); exp=$(experiment_of "$model")
  run=$(run_dir_of "$name" "$m" "$seed")
  if run_finished "$run"; then record train "$m/$seed" 0 skipped; return 0; fi
  mkdir -p "runs/$name/logs"
  if [ "$SCALE" = paper ]; then
    timed train "$m/$seed" "runs/$name/logs/train_$m$seed.log" accelerate launch -m ts2.train \
      "experiment=$exp" "method=$m" "name=$name" $(seed_args "$seed") train.resume=true
  else
    timed train "$m/$seed" "runs/$name/logs/train_$m$seed.log" env OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS \
      "$PY" -m ts2.train "experiment=$exp" "method=$m" "name=$name" $(seed_args "$seed") train.resume=true
  fi
}

limit_of() {  # prompts sampled for benchmark $1 (tiny: HumanEval gets HE_PROMPTS, its long prompts cost most)
  if [ "$SCALE" = tiny ] && [ "$1" = humaneval ]; then echo "$HE_PROMPTS"; else echo "${PROMPTS:-all}"; fi
}

eval_job() {  # eval_job MODEL METHOD SEED: sample + score every benchmark + held-out CE
  local model=$1 m=$2 seed=$3 name run b log group lim list
  name=$(name_of "$model")
  run=$(run_dir_of "$name" "$m" "$seed")
  if ! run_finished "$run"; then echo "!! no finished training run for $m (seed $seed) in runs/$name" >&2; return 1; fi
  log="runs/$name/logs/eval_$m$seed.log"
  local env=(env)
  [ -n "$THREADS" ] && env=(env OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS)
  # benchmarks grouped by prompt limit: one sample and one evaluate process per group (imports, model load once)
  for lim in $(for b in ${EVALS//,/ }; do limit_of "$b"; done | sort -u); do
    local sub=() esub=() todo=() etodo=()
    if [ "$lim" != all ]; then
      sub=(sample.limit="$lim" sample.n="$N" sample.max_new_tokens="$NEW_TOKENS")
      esub=(eval.sample.limit="$lim" eval.sample.n="$N" eval.sample.max_new_tokens="$NEW_TOKENS")
    fi
    for b in ${EVALS//,/ }; do
      [ "$(limit_of "$b")" = "$lim" ] || continue
      samples_done "$run" "$b" "${lim/all/0}" || todo+=("$b")
      metrics_done "$run" "$b" "${lim/all/0}" || etodo+=("$b")
    done
    group=$lim
    if [ ${#todo[@]} -gt 0 ]; then
      list=$(IFS=,; echo "${todo[*]}")
      timed "sample" "$m/$seed:$list" "$log" "${env[@]}" "$PY" -m ts2.sample "run_dir='$run'" "eval=[$list]" \
        "${sub[@]}" "${SAMPLER[@]}"
    else
      record sample "$m/$seed:$group" 0 skipped
    fi
    if [ ${#etodo[@]} -gt 0 ]; then
      list=$(IFS=,; echo "${etodo[*]}")
      timed evaluate "$m/$seed:$list" "$log" "${env[@]}" "$PY" -m ts2.evaluate "run_dir='$run'" "eval=[$list]" \
        "${esub[@]}" "${EVAL_ARGS[@]}"
    else
      record evaluate "$m/$seed:$group" 0 skipped
    fi
  done
  if metrics_done "$run" heldout_ce; then record heldout_ce "$m/$seed" 0 skipped; else
    timed heldout_ce "$m/$seed" "$log" "${env[@]}" "$PY" -m ts2.evaluate "run_dir='$run'" eval=heldout_ce
  fi
  # TSPD (head preservation / tail mass per held-out token; issue #13), on the first TSPD_ROWS held-out rows
  if metrics_done "$run" tspd; then record tspd "$m/$seed" 0 skipped; else
    timed tspd "$m/$seed" "$log" "${env[@]}" "$PY" -m ts2.evaluate "run_dir='$run'" eval=tspd \
      ${TSPD_ROWS:+eval.sample.limit="$TSPD_ROWS"}
  fi
}

# pool JOBFN MODEL ITEMS...: run JOBFN MODEL item seed for every method item and seed, JOBS at a time.
pool() {
  local fn=$1 model=$2 m seed failed=0
  shift 2
  for m in "$@"; do
    for seed in $(seed_list); do
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || failed=1; done
      echo "   .. $fn $m (seed $seed)"
      "$fn" "$model" "$m" "$seed" &
    done
  done
  while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
  return $failed
}

rm_job() {  # the tiny judge, trained from the base (cached; ~5 min of one core)
  local name sets=() kv; name=$(name_of "$1")
  for kv in "${RM_SET[@]}"; do sets+=(--set "$kv"); done
  if "$PY" -c 'import sys; from ts2.models.tiny_rm import rm_folder, spec_from_args; sys.exit(0 if (rm_folder(spec_from_args(sys.argv[1:])) / "rm_eval.json").is_file() else 1)' "${RM_SET[@]}" 2>/dev/null; then
    record rm tiny_rm 0 skipped; return 0
  fi
  timed rm tiny_rm "runs/$name/logs/tiny_rm.log" env OMP_NUM_THREADS=1 "$PY" -m ts2.models.tiny_rm "${sets[@]}"
}

# -------------------------------------------------------------------------------------------- dry run
if [ "$DRY_RUN" = 1 ]; then
  exec "$PY" experiments/table1/plan.py --scale "$SCALE" --models "$MODELS" --methods "$METHODS" --evals "$EVALS" \
    --seeds "$SEEDS" --jobs "$JOBS" ${PROMPTS:+--prompts "$PROMPTS" --he-prompts "$HE_PROMPTS" --n "$N" --new-tokens "$NEW_TOKENS"}
fi

# -------------------------------------------------------------------------------------------- run
IFS=, read -ra METHOD_LIST <<<"$METHODS"
for model in ${MODELS//,/ }; do
  NAME=$(name_of "$model")
  mkdir -p "runs/$NAME/logs"
  TIMES="runs/$NAME/stage_times.tsv"
  printf 'stage\tjob\tseconds\tstatus\n' >"$TIMES"
  echo "== [0/5] ${SCALE}-scale Table 1 for model=$model -> runs/$NAME/ (methods $METHODS; seeds $SEEDS; $JOBS job(s))"
  if [ "$model" = tiny_base ]; then
    echo "== [1/5] pretrained tiny base (committed copy, checked against its manifest; else built: ~1 h)"
    timed base tiny_base "runs/$NAME/logs/tiny_base.log" env OMP_NUM_THREADS=1 "$PY" -m ts2.models.tiny_base
    tail -1 "runs/$NAME/logs/tiny_base.log"
    echo "== [2/5] tiny RM + train ${METHODS//,/ } (logs: runs/$NAME/logs/)"
    rm_job "$model" &
  else
    echo "== [2/5] train ${METHODS//,/ } (logs: runs/$NAME/logs/)"
  fi
  pool train_job "$model" "${METHOD_LIST[@]}"
  wait
  echo "== [3/5] sample ${EVALS//,/ } + evaluate + held-out CE, per method"
  pool eval_job "$model" "${METHOD_LIST[@]}"
  if [ "$SCALE" = tiny ]; then  # the token-distribution figure's data (our models beside the official 8B)
    timed token_distribution "$NAME" "runs/$NAME/logs/token_distribution.log" env OMP_NUM_THREADS=1 \
      "$PY" -m ts2.analysis.token_distribution $(dirname runs/"$NAME"/*/run.json) --out results
  fi
  echo "== [4/5] report -> results/${NAME}.{md,csv,tex} + results/figures/"
  timed report "$NAME" "runs/$NAME/logs/report.log" "$PY" -m ts2.report runs_dir="runs/${NAME}" name="${NAME}"
  cat "results/${NAME}.md"
  echo "== [5/5] time per stage (wall seconds; $JOBS job(s) in parallel, so job times add up to more than the wall)"
  "$PY" - "$TIMES" "$(($(date +%s) - START_ALL))" <<'EOF'
import csv, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
tot, cnt, skip = defaultdict(int), defaultdict(int), defaultdict(int)
for r in rows:
    tot[r["stage"]] += int(r["seconds"]); cnt[r["stage"]] += 1; skip[r["stage"]] += r["status"] == "skipped"
print(f"{'stage':28s} {'jobs':>5s} {'skipped':>8s} {'job-seconds':>12s}")
for s in tot:
    print(f"{s:28s} {cnt[s]:5d} {skip[s]:8d} {tot[s]:12d}")
print(f"{'sum of job times':28s} {'':5s} {'':8s} {sum(tot.values()):12d}")
print(f"{'wall clock (whole script)':28s} {'':5s} {'':8s} {int(sys.argv[2]):12d}")
EOF
done
