"""Time the three diversity metrics (ts2.eval.diversity) at the paper's AlpacaEval size: 805 prompts × 32 samples.

Synthetic but realistic samples: for prompt p, the GPT-4-Turbo AlpacaEval reference answer p (data dir,
``alpaca_eval/gpt4_1106_preview_model_outputs.json``) is split into sentences; each sample shuffles them,
tops them up with sentences of other answers and is cut to 100–200 words, so a prompt's samples overlap
like real samples of one prompt but all differ. (The paper scores templated prompt + response strings,
which are longer; the model truncates at ``max_seq_length`` word pieces either way.)

For Sent-BERT the script also prints why it costs what it costs: the word pieces it encodes, the encoder's
matmul FLOPs for exactly those sequence lengths, and a GEMM of the encoder's own shape timed in the same
process (the CPU's practical ceiling). ``floor`` = FLOPs / ceiling is the time no fp32 implementation on this
machine beats; the projection scales the measured time to 805 × 32 when fewer prompts were run.

    python benchmarks/diversity.py                 # 805 × 32, all metrics
    python benchmarks/diversity.py --quick         # 40 × 8, a smoke run
    python benchmarks/diversity.py --prompts 50 --metrics sent_bert     # Sent-BERT cost model on 1,600 texts
    python benchmarks/diversity.py --csv results/benchmarks/diversity.csv

Prints a table of seconds per metric and the total; timings on a shared machine are upper bounds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from ts2.eval import diversity as D
from ts2.paths import data_file

METRICS = ("ngram", "self_bleu_paper", "self_bleu_all_refs", "sent_bert")


def synthetic_groups(prompts: int, samples: int, seed: int = 0) -> list[list[str]]:
    """``prompts`` groups of ``samples`` texts of 100–200 words built from real AlpacaEval answers."""
    outputs = [
        r["output"]
        for r in json.loads(data_file("alpaca_eval", "gpt4_1106_preview_model_outputs.json").read_text())
    ]
    sentences = [[s for s in re.split(r"(?<=[.!?])\s+", o) if s.strip()] for o in outputs]
    rng = random.Random(seed)
    groups = []
    for p in range(prompts):
        own = sentences[p % len(sentences)]
        group = []
        for _ in range(samples):
            pool = rng.sample(own, len(own))
            n_words = rng.randint(100, 200)
            while sum(len(s.split()) for s in pool) < n_words:
                pool.append(rng.choice(rng.choice(sentences)))
            group.append(" ".join(" ".join(pool).split()[:n_words]))
        groups.append(group)
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=805)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="40 prompts × 8 samples")
    ap.add_argument("--workers", type=int, default=2, help="processes for n-gram and self-BLEU")
    ap.add_argument("--batch-size", type=int, default=64, help="Sent-BERT encode batch size")
    ap.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS))
    ap.add_argument("--csv", default=None, help="also write the table (and the Sent-BERT cost model) here")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.samples = 40, 8

    t0 = time.perf_counter()
    groups = synthetic_groups(args.prompts, args.samples)
    print(
        f"# {args.prompts} prompts × {args.samples} samples, {time.perf_counter() - t0:.1f} s to build; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}), "
        f"load avg {os.getloadavg()[0]:.1f}; sacrebleu {version('sacrebleu')}, nltk {version('nltk')}, "
        f"sentence-transformers {version('sentence-transformers')}, torch {version('torch')}"
    )

    model = None
    if "sent_bert" in args.metrics:
        t = time.perf_counter()
        model = D.load_sentence_model()
        print(f"# MiniLM model load: {time.perf_counter() - t:.1f} s (not counted below)")

    runs: dict[str, Callable[[], float]] = {
        "ngram": lambda: D.ngram_diversity(groups, num_workers=args.workers),
        "self_bleu_paper": lambda: D.self_bleu_diversity(groups, "paper", num_workers=args.workers),
        "self_bleu_all_refs": lambda: D.self_bleu_diversity(groups, "all_refs", num_workers=args.workers),
        "sent_bert": lambda: D.sent_bert_diversity(groups, model, batch_size=args.batch_size),
    }
    print("| metric | workers | seconds | score (×100) |\n|---|---|---|---|")
    rows, total = [], 0.0
    for name in args.metrics:
        t = time.perf_counter()
        score = runs[name]()
        dt = time.perf_counter() - t
        total += dt
        workers = 1 if name == "sent_bert" else args.workers
        rows.append({"metric": name, "workers": workers, "seconds": round(dt, 2), "score": round(score, 4)})
        print(f"| {name} | {workers} | {dt:.1f} | {score:.2f} |", flush=True)
    print(f"| total | | {total:.1f} | |")
    if model is not None:
        row = rows[args.metrics.index("sent_bert")]
        row.update(sent_bert_cost(model, [s for g in groups for s in g], row["seconds"]))
    print(
        f"# load avg at end {os.getloadavg()[0]:.1f} (other jobs share this CPU: the times are upper bounds)"
    )
    if args.csv:
        out = Path(args.csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            fields = list(dict.fromkeys(k for r in rows for k in r))  # sent_bert adds its cost model
            w = csv.DictWriter(f, fieldnames=["prompts", "samples", *fields, "date"])
            w.writeheader()
            date = f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%MZ}"
            for r in rows:
                w.writerow({"prompts": args.prompts, "samples": args.samples, **r, "date": date})
        print(f"# wrote {out}")


def encoder_flops(seq_lens: np.ndarray, layers: int, hidden: int, ffn: int) -> float:
    """Matmul FLOPs of a BERT encoder over sequences of these lengths (2 FLOPs per multiply-add).

    Per layer and sequence of s tokens: projections Q, K, V, O = 4·s·h², feed-forward 2·s·h·f multiply-adds,
    attention scores and weighted sum 2·s²·h. Embeddings, layer norms, GELU and pooling are left out (a few %).
    """
    s = seq_lens.astype(np.float64)
    return float(2 * layers * (s * (4 * hidden**2 + 2 * hidden * ffn) + 2 * s**2 * hidden).sum())


def gemm_ceiling(rows: int, hidden: int, ffn: int, reps: int = 5) -> float:
    """GFLOP/s of the encoder's largest matmul shape ([rows, h] @ [h, f]) with this process's threads."""
    a, b = torch.randn(rows, hidden), torch.randn(hidden, ffn)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * rows * hidden * ffn * reps / (time.perf_counter() - t) / 1e9


def sent_bert_cost(model, texts: list[str], seconds: float) -> dict[str, float]:  # noqa: ANN001
    """Print (and return) word pieces, FLOPs, achieved vs ceiling GFLOP/s and the fp32 floor of the run."""
    cfg = model[0].auto_model.config
    lens = np.array(
        [min(len(ids), model.max_seq_length) for ids in model.tokenizer(texts, verbose=False)["input_ids"]]
    )
    flops = encoder_flops(lens, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size)
    ceiling = gemm_ceiling(64 * int(lens.mean()), cfg.hidden_size, cfg.intermediate_size)
    scale = (805 * 32) / len(texts)
    print(
        f"\n# Sent-BERT cost model ({cfg.num_hidden_layers} layers, h={cfg.hidden_size}, f={cfg.intermediate_size}, "
        f"max_seq_length {model.max_seq_length}, {torch.get_num_threads()} threads)\n"
        "| texts | mean word pieces | truncated | matmul TFLOP | achieved GFLOP/s | GEMM ceiling GFLOP/s "
        "| achieved/ceiling | floor s | measured s | projected 805×32 s | projected floor 805×32 s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {len(texts)} | {lens.mean():.0f} | {(lens == model.max_seq_length).mean():.0%} | {flops / 1e12:.2f} "
        f"| {flops / seconds / 1e9:.0f} | {ceiling:.0f} | {flops / seconds / 1e9 / ceiling:.2f} "
        f"| {flops / ceiling / 1e9:.0f} | {seconds:.0f} | {seconds * scale:.0f} | {flops * scale / ceiling / 1e9:.0f} |"
    )
    return {
        "word_pieces_mean": round(float(lens.mean()), 1),
        "matmul_tflop": round(flops / 1e12, 3),
        "achieved_gflops": round(flops / seconds / 1e9, 1),
        "gemm_ceiling_gflops": round(ceiling, 1),
        "fp32_floor_s": round(flops / ceiling / 1e9, 1),
    }


if __name__ == "__main__":
    main()
