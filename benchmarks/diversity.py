"""Time the three diversity metrics (ts2.eval.diversity) at the paper's AlpacaEval size: 805 prompts × 32 samples.

Synthetic but realistic samples: for prompt p, the GPT-4-Turbo AlpacaEval reference answer p (data dir,
``alpaca_eval/gpt4_1106_preview_model_outputs.json``) is split into sentences; each sample shuffles them,
tops them up with sentences of other answers and is cut to 100–200 words, so a prompt's samples overlap
like real samples of one prompt but all differ. (The paper scores templated prompt + response strings;
MiniLM truncates at 256 word pieces either way, so the Sent-BERT cost per sample is about the same.)

    python benchmarks/diversity.py                 # 805 × 32, all metrics
    python benchmarks/diversity.py --quick         # 40 × 8, a smoke run
    python benchmarks/diversity.py --prompts 100 --samples 16 --workers 1 --metrics ngram self_bleu_paper

Prints a table of seconds per metric and the total; timings on a shared machine are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import version

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
    total = 0.0
    for name in args.metrics:
        t = time.perf_counter()
        score = runs[name]()
        dt = time.perf_counter() - t
        total += dt
        workers = 1 if name == "sent_bert" else args.workers
        print(f"| {name} | {workers} | {dt:.1f} | {score:.2f} |", flush=True)
    print(f"| total | | {total:.1f} | |")
    print(
        f"# load avg at end {os.getloadavg()[0]:.1f} (other jobs share this CPU: the times are upper bounds)"
    )


if __name__ == "__main__":
    main()
