"""Benchmark the sampling stage's HF backend against a naive one-sample-at-a-time loop (project issue #4).

Both sides use the same model (the offline tiny model by default), the same AlpacaEval prompts rendered
with the model's chat template, the same sampling parameters (PAPER.md §4 AlpacaEval: T=0.6, top-k 50,
top-p 0.9) and the same ``HFBackend.generate``; the naive loop calls it once per (prompt, sample), the
batched side once per planned batch (``sampler.batch_size`` sequences). The two are timed alternately in
one process, ``--repeats`` times, and the ratio of total samples/s is reported (target: >= 5x on CPU).

    python benchmarks/sampling.py                       # 8 prompts x 8 samples x 64 tokens, 1 thread
    python benchmarks/sampling.py --prompts 16 --n 16 --csv results/bench_sampling.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
import time
from pathlib import Path

from omegaconf import OmegaConf


def _run(backend, records, plan, params) -> tuple[float, int, int]:
    from ts2.sample import render

    ids = [
        backend.tokenizer(render(backend.tokenizer, r), add_special_tokens=False)["input_ids"]
        for r in records
    ]
    t0, samples, tokens = time.perf_counter(), 0, 0
    for batch in plan:
        gens = backend.generate([ids[i] for i in batch.prompts], batch, params)
        samples += sum(len(g) for g in gens)
        tokens += sum(x.num_tokens for g in gens for x in g)
    return time.perf_counter() - t0, samples, tokens


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (batched side)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model-path", default=None, help="default: the offline tiny model")
    p.add_argument("--csv", default=None, help="also write the table here")
    args = p.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from ts2.models import resolve_model_path
    from ts2.sampling import Batch, HFBackend, SamplingParams
    from ts2.sampling.prompts import alpaca_eval

    model_cfg = OmegaConf.to_container(
        OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / "tiny.yaml")
    )
    path = args.model_path or resolve_model_path(model_cfg)
    backend = HFBackend(path, model_cfg, batch_size=args.batch_size, device="cpu", torch_threads=args.threads)
    params = SamplingParams(
        n=args.n, temperature=0.6, top_k=50, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=42
    )
    records = alpaca_eval()[: args.prompts]
    batched_plan = backend.plan(len(records), args.n)
    naive_plan = [Batch((i,), range(s, s + 1)) for i in range(len(records)) for s in range(args.n)]
    _run(backend, records[:1], [Batch((0,), range(1))], params)  # warm-up (allocations, first-call costs)

    totals = {"naive": [0.0, 0, 0], "batched": [0.0, 0, 0]}
    for _ in tqdm(range(args.repeats), desc="repeats"):
        for name, plan in (("naive", naive_plan), ("batched", batched_plan)):
            secs, samples, tokens = _run(backend, records, plan, params)
            t = totals[name]
            t[0], t[1], t[2] = t[0] + secs, t[1] + samples, t[2] + tokens

    base = totals["naive"][1] / totals["naive"][0]
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    rows = []
    for name, (secs, samples, tokens) in totals.items():
        rate = samples / secs
        rows.append(
            {
                "method": name,
                "samples": samples,
                "tokens": tokens,
                "seconds": round(secs, 3),
                "samples_per_s": round(rate, 2),
                "tokens_per_s": round(tokens / secs, 1),
                "speedup": round(rate / base, 2),
                **meta,
            }
        )

    print(f"\nHF sampling on {path} ({', '.join(f'{k}={v}' for k, v in meta.items())})")
    print(
        f"| {'method':8} | {'samples':>7} | {'tokens':>7} | {'seconds':>8} | {'samples/s':>9} | {'tokens/s':>9} | "
        f"{'speedup':>7} |"
    )
    print("|" + "|".join("-" * w for w in (10, 9, 9, 10, 11, 11, 9)) + "|")
    for r in rows:
        print(
            f"| {r['method']:8} | {r['samples']:>7} | {r['tokens']:>7} | {r['seconds']:>8.2f} | "
            f"{r['samples_per_s']:>9.2f} | {r['tokens_per_s']:>9.1f} | {r['speedup']:>6.2f}x |"
        )
    if args.csv:
        out = Path(args.csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
