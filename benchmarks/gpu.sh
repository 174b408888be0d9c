#!/usr/bin/env bash
# The GPU check in one command (issue 21, item 9), <= 10 min on one GPU, CSVs in $OUT (device machine) or
# results/benchmarks/:
#   1. fused TS² against torch CE and Liger's fused linear CE: time and peak memory, from hidden [N, d] and the
#      LM head [V, d] to the loss and gradients (V = 128,256) -> gpu_losses.csv
#   2. a short bf16 SFT of the tiny base with the fused TS² loss, and vLLM sampling of it (benchmarks/gpu_check.py)
#      -> gpu_check.csv
# Needs torch (+ triton for Liger, vllm for 2's sampling row; transformers): the ts2 modules come from src/ via
# PYTHONPATH, no hydra or datasets. Liger is used if importable, or installed from a carried wheel (LIGER_WHEEL,
# wheels/, shared/wheels/).
#
#   bash benchmarks/gpu.sh                        # N=16384 d=4096 V=128256 bf16 on cuda
#   DEVICE=cpu bash benchmarks/gpu.sh             # the reduced version on CPU (N=128 d=64, 4 SFT steps, 4 prompts):
#                                                 # CSVs in $OUT or ${TMPDIR:-/tmp}/ts2-benchmarks, never results/
#
# COMPILE=1 (default on cuda) adds a row with the per-chunk kernel under torch.compile (warmup compiles).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
DEVICE="${DEVICE:-cuda}"
export DEVICE

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu.sh: no CUDA GPU here (torch.cuda.is_available() is False); for the reduced CPU version run: DEVICE=cpu bash benchmarks/gpu.sh" >&2
  exit 2
fi
if [ "$DEVICE" = cpu ]; then  # reduced sizes, unless set; never into results/ (not GPU numbers)
  export N="${N:-128}" D="${D:-64}" REPS="${REPS:-1}" COMPILE="${COMPILE:-0}"
  CHECK_ARGS=(--steps 4 --batch 4 --max-length 256 --prompts 4 --n 4 --tokens 16)
  OUT_DIR="${OUT:-${TMPDIR:-/tmp}/ts2-benchmarks}"
else
  CHECK_ARGS=()
  OUT_DIR="${OUT:-results/benchmarks}"
fi
export OUT_DIR

if ! "$PY" -c "import liger_kernel" 2>/dev/null; then
  wheel="${LIGER_WHEEL:-$(ls wheels/liger_kernel-*.whl shared/wheels/liger_kernel-*.whl 2>/dev/null | head -n1 || true)}"
  if [ -n "$wheel" ]; then
    "$PY" -m pip install --no-deps --no-index --quiet "$wheel" || echo "liger wheel $wheel did not install"
  fi
fi

"$PY" - <<'EOF'
import csv
import importlib.metadata
import math
import os
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import measure, provenance
from ts2.losses import CrossEntropyLoss, TS2Loss, reference, ts2_loss
from ts2.losses.fused import fused_linear_loss

N, D, V = (int(os.environ.get(k, d)) for k, d in (("N", 16384), ("D", 4096), ("V", 128256)))
REPS = int(os.environ.get("REPS", 5))
CHUNK = int(os.environ["CHUNK"]) if os.environ.get("CHUNK") else None
device = torch.device(os.environ.get("DEVICE", "cuda"))
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[os.environ.get("DTYPE", "bf16")]
if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True


def bench(fn):
    m = measure(fn, reps=REPS, warmup=1, device=device)  # peak memory on the warmup call
    return m.median_ms, m.peak_mib


g = torch.Generator(device="cpu").manual_seed(0)
x = torch.randn(N, D, generator=g).to(device, dtype).requires_grad_()
w = (torch.randn(V, D, generator=g) * (2.0 / math.sqrt(D))).to(device, dtype).requires_grad_()
y = torch.randint(0, V, (N,), generator=g).to(device)
y[: N // 8] = -100  # a prompt-like run of ignored tokens


def step(loss_fn):
    def fn():
        loss_fn().backward()
        x.grad = w.grad = None

    return fn


# Correctness on a slice, on this device: fused vs the unfused reference (autograd through the logits).
n_chk = min(N, 1024)
xc, yc = x[:n_chk].detach().float().requires_grad_(), y[:n_chk]
wc = w.detach().float().requires_grad_()
for loss, ref_fn in (("ce", reference.cross_entropy_loss), ("ts2", reference.ts2_loss)):
    ref = ref_fn(xc @ wc.t(), yc)
    gx, gw = torch.autograd.grad(ref, (xc, wc))
    got = fused_linear_loss(xc, wc, yc, CrossEntropyLoss() if loss == "ce" else TS2Loss())
    fx, fw = torch.autograd.grad(got, (xc, wc))
    print(f"check {loss}: |dloss| {abs(float((got - ref).detach())):.2e} |ddX| {float((fx - gx).abs().max()):.2e} "
          f"|ddW| {float((fw - gw).abs().max()):.2e}", flush=True)
del xc, wc, gx, gw, fx, fw

rows = []
cases = [
    ("unfused:torch_ce(fp32 logits)", lambda: F.cross_entropy((x @ w.t()).float(), y)),
    ("unfused:fast:ts2", lambda: ts2_loss(x @ w.t(), y)),
    ("fused:ce", lambda: fused_linear_loss(x, w, y, CrossEntropyLoss(), chunk_size=CHUNK)),
    ("fused:ts2", lambda: fused_linear_loss(x, w, y, TS2Loss(), chunk_size=CHUNK)),
    ("fused:ts2_adaptive", lambda: fused_linear_loss(x, w, y, TS2Loss(adaptive=True), chunk_size=CHUNK)),
]
try:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    liger = LigerFusedLinearCrossEntropyLoss()
    cases.append(("liger:fused_linear_ce", lambda: liger(w, x, y)))
except Exception as exc:  # absent, or no GPU driver
    print(f"liger-kernel unavailable: {type(exc).__name__}: {exc}")

COMPILE = os.environ.get("COMPILE", "1" if device.type == "cuda" else "0") == "1"
if COMPILE:  # the same fused path with its per-chunk row kernel compiled (inductor: triton on GPU)
    ts2_compiled = TS2Loss()
    object.__setattr__(ts2_compiled, "rows", torch.compile(ts2_compiled.rows, dynamic=True))  # this instance only
    cases.append(("fused:ts2(torch.compile)", lambda: fused_linear_loss(x, w, y, ts2_compiled, chunk_size=CHUNK)))

base = None
for name, loss_fn in cases:
    try:
        ms, peak = bench(step(loss_fn))
    except Exception:
        traceback.print_exc()
        ms, peak = math.nan, math.nan
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = base or (ms, peak)
    rows.append({"name": name, "N": N, "d": D, "V": V, "dtype": str(dtype).split(".")[-1], "ms": ms,
                 "time_vs_ce": ms / base[0], "peak_mib": peak, "mem_vs_ce": peak / base[1]})
    r = rows[-1]
    print(f"{name:32s} {ms:9.1f} ms {r['time_vs_ce']:6.2f}x  {peak:9.0f} MiB {r['mem_vs_ce']:6.2f}x", flush=True)

prov = provenance(device)
for package in ("triton", "liger-kernel"):
    try:
        prov[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        prov[package] = "absent"
out = Path(os.environ["OUT_DIR"])
out.mkdir(parents=True, exist_ok=True)
with (out / "gpu_losses.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(prov))
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **prov})
print(f"wrote {out / 'gpu_losses.csv'}  ({prov['device']}, torch {prov['torch']}, {prov['date']})")
EOF

VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" "$PY" benchmarks/gpu_check.py --device "$DEVICE" --out "$OUT_DIR" "${CHECK_ARGS[@]}"
