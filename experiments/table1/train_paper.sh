#!/usr/bin/env bash
# One paper-scale SFT through the virtual environment's accelerate: the one launcher of `make train-paper` and of
# experiments/table1/run.sh at SCALE=paper (README "Scale-out").
#
#   bash experiments/table1/train_paper.sh experiment=paper_llama31_8b method=ts2 [overrides ...]
#     = <venv>/bin/accelerate launch --config_file conf/accelerate/$BACKEND.yaml [--num_processes $NPROC] \
#           -m ts2.train <overrides> <the backend's training overrides>
#
# BACKEND=deepspeed_zero2 (default): ZeRO-2 from the DeepSpeed JSON that both the accelerate config and the
#   experiment's train.deepspeed name; no training override.
# BACKEND=fsdp2: train.deepspeed=null train.gradient_checkpointing=false (FSDP checkpoints activations itself).
# NPROC=k: processes (default: the accelerate config's 8). PY: the venv's python, whose accelerate is used.
# PRINT=1 prints the command, one argument per line, instead of running it; PRINT=settings prints the backend's
# training overrides (what run.sh's planner composes with, so it names the folder the launch writes).
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND=${BACKEND:-deepspeed_zero2}
case "$BACKEND" in
  deepspeed_zero2) SETTINGS=() ;;
  fsdp2) SETTINGS=(train.deepspeed=null train.gradient_checkpointing=false) ;;
  *) echo "BACKEND=$BACKEND: no conf/accelerate/$BACKEND.yaml; use deepspeed_zero2 or fsdp2" >&2; exit 2 ;;
esac
if [ "${PRINT:-0}" = settings ]; then
  if [ ${#SETTINGS[@]} -gt 0 ]; then printf '%s\n' "${SETTINGS[@]}"; fi
  exit 0
fi
PYBIN=$(command -v "${PY:-python}") || { echo "PY=${PY:-python}: no such python" >&2; exit 2; }
CMD=("$(dirname "$PYBIN")/accelerate" launch --config_file "conf/accelerate/$BACKEND.yaml"
     ${NPROC:+--num_processes "$NPROC"} -m ts2.train "$@" ${SETTINGS[@]+"${SETTINGS[@]}"})
if [ "${PRINT:-0}" = 1 ]; then
  printf '%s\n' "${CMD[@]}"
  exit 0
fi
# accelerate's DeepSpeed launcher would fail with a traceback: say it in one line, before anything starts
if [ "$BACKEND" = deepspeed_zero2 ] && ! "$PYBIN" -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("deepspeed"))'; then
  echo "error: BACKEND=deepspeed_zero2 needs deepspeed, which $PYBIN does not have: run make install-gpu on the GPU node (or use BACKEND=fsdp2, which needs none)" >&2
  exit 1
fi
exec "${CMD[@]}"
