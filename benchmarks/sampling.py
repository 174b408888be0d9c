"""Benchmark the sampling stage: HF naive vs HF batched vs vLLM (project issues #4, #14).

All sides use the same model (the offline tiny model by default), the same AlpacaEval prompts rendered with
the model's chat template and the same sampling parameters (PAPER.md §4 AlpacaEval: T=0.6, top-k 50, top-p
0.9). The naive loop calls ``HFBackend.generate`` once per (prompt, sample), the batched side once per planned
batch (``sampler.batch_size`` sequences), the vLLM side ``VLLMBackend.generate`` once per planned batch (all
prompts, N samples each). The three are timed alternately in one process, ``--repeats`` times; samples/s and
tokens/s are reported, and the speedup against naive. Model load / engine start is reported separately
(``load_s``), not in the rates.

    python benchmarks/sampling.py                       # 8 prompts x 8 samples x 64 tokens, 1 thread
    python benchmarks/sampling.py --prompts 40 --n 8 --csv results/bench_sampling.csv
    python benchmarks/sampling.py --vllm off            # HF only (vLLM row when importable by default)
    python benchmarks/sampling.py --model smollm2_135m --n 8 --max-new-tokens 48 --naive off   # SmolLM2-135M
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.util
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


def main(argv: list[str] | None = None, vllm_backend=None) -> list[dict[str, object]]:
    """Run the benchmark; ``vllm_backend``: an already started ``VLLMBackend`` (tests share one engine)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (batched side)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="tiny", help="conf/model/<id>.yaml (tiny, smollm2_135m, ...)")
    p.add_argument("--model-path", default=None, help="default: the --model config's model")
    p.add_argument("--naive", choices=("on", "off"), default="on", help="one generate call per sample")
    p.add_argument("--csv", default=None, help="also write the table here")
    p.add_argument(
        "--vllm", choices=("auto", "on", "off"), default="auto", help="vLLM row (auto: when vllm imports)"
    )
    p.add_argument("--kv-cache-gb", type=float, default=1.0, help="vLLM KV-cache size (GiB)")
    args = p.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from ts2.models import resolve_model_path
    from ts2.sampling import Batch, HFBackend, SamplingParams
    from ts2.sampling.prompts import alpaca_eval

    model_cfg = OmegaConf.to_container(
        OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / f"{args.model}.yaml"), resolve=True
    )
    path = args.model_path or resolve_model_path(model_cfg)
    t0 = time.perf_counter()
    backend = HFBackend(path, model_cfg, batch_size=args.batch_size, device="cpu", torch_threads=args.threads)
    load = {"naive": time.perf_counter() - t0}
    load["batched"] = load["naive"]
    use_vllm = vllm_backend is not None or args.vllm == "on"
    use_vllm = use_vllm or (args.vllm == "auto" and importlib.util.find_spec("vllm") is not None)
    if use_vllm and vllm_backend is None:
        from ts2.sampling.backends import VLLMBackend

        t0 = time.perf_counter()
        vllm_backend = VLLMBackend(
            str(path),
            model_cfg,
            batch_size=max(1, args.prompts),
            kv_cache_gb=args.kv_cache_gb,
            torch_threads=args.threads,
        )
        load["vllm"] = time.perf_counter() - t0
    elif use_vllm:
        load["vllm"] = float("nan")  # started by the caller
    params = SamplingParams(
        n=args.n, temperature=0.6, top_k=50, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=42
    )
    records = alpaca_eval()[: args.prompts]
    batched_plan = backend.plan(len(records), args.n)
    naive_plan = [Batch((i,), range(s, s + 1)) for i in range(len(records)) for s in range(args.n)]
    sides = [("naive", backend, naive_plan)] if args.naive == "on" else []
    sides.append(("batched", backend, batched_plan))
    if vllm_backend is not None:
        sides.append(("vllm", vllm_backend, vllm_backend.plan(len(records), args.n)))
    for _, be, _ in sides[1 if args.naive == "on" else 0 :]:  # warm-up (allocations, first-call costs)
        _run(be, records[:1], [Batch((0,), range(1))], params)

    totals = {name: [0.0, 0, 0] for name, _, _ in sides}
    for _ in tqdm(range(args.repeats), desc="repeats"):
        for name, be, plan in sides:
            secs, samples, tokens = _run(be, records, plan, params)
            t = totals[name]
            t[0], t[1], t[2] = t[0] + secs, t[1] + samples, t[2] + tokens

    first = totals[sides[0][0]]
    base = first[1] / first[0]  # speedups against the first side (naive, else batched HF)
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model_path or args.model,
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
                "load_s": round(load[name], 1),
                **meta,
            }
        )

    if vllm_backend is not None:
        meta["vllm"] = vllm_backend.info().get("vllm")
        for r in rows:
            r["vllm"] = meta["vllm"]
    print(f"\nSampling on {path} ({', '.join(f'{k}={v}' for k, v in meta.items())})")
    print(
        f"| {'method':8} | {'samples':>7} | {'tokens':>7} | {'seconds':>8} | {'samples/s':>9} | {'tokens/s':>9} | "
        f"{'speedup':>7} | {'load_s':>6} |"
    )
    print("|" + "|".join("-" * w for w in (10, 9, 9, 10, 11, 11, 9, 8)) + "|")
    for r in rows:
        print(
            f"| {r['method']:8} | {r['samples']:>7} | {r['tokens']:>7} | {r['seconds']:>8.2f} | "
            f"{r['samples_per_s']:>9.2f} | {r['tokens_per_s']:>9.1f} | {r['speedup']:>6.2f}x | {r['load_s']:>6.1f} |"
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
