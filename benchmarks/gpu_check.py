"""The training and sampling half of ``bash benchmarks/gpu.sh``: a short bf16 SFT of the tiny base and vLLM sampling.

Needs torch and transformers only (vLLM where importable; the GPU machine may lack hydra and datasets):

- **sft**: the pretrained tiny base (assets/tiny_base/, 4.0M parameters) fine-tuned ``--steps`` AdamW steps under
  bf16 autocast with the fused TS² loss as ``ts2.train`` runs it (`ts2.objective.fused_head` +
  `CausalLMObjective`), on chat-templated UltraFeedback rows of the data directory (assistant tokens only);
  reports tokens/s, peak memory and the first and last loss (which must fall).
- **vllm**: ``vllm.LLM`` on the same model, ``--prompts`` chat-templated prompts x ``--n`` samples x ``--tokens``
  new tokens at the AlpacaEval settings (T 0.6, top-k 50, top-p 0.9); reports engine start, samples/s and
  tokens/s. A row says "skipped" with the reason when vLLM is not importable.

    python benchmarks/gpu_check.py --device cuda --out results/benchmarks
    python benchmarks/gpu_check.py --device cpu --steps 4 --prompts 4 --n 4 --tokens 16   # the reduced version

Appends its rows to ``<out>/gpu_check.csv`` (part, metric, value, unit, note + provenance); without ``--out``,
to results/benchmarks/ for the default run only, else to a scratch folder (printed).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import csv_path, provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_BASE = REPO / "assets" / "tiny_base"


def _conversations(limit: int) -> list[list[dict[str, str]]]:
    """UltraFeedback rows of the data directory as [user, assistant] conversations."""
    from ts2.paths import data_dir

    root = data_dir(required=False)
    candidates = [root] if root else []
    candidates.append(REPO / "shared" / "data")  # the device machine carries shared/ inside the checkout
    for base in candidates:
        files = sorted((Path(base) / "ultrafeedback").glob("*train*.jsonl"))
        if files:
            rows = [json.loads(x) for x in files[0].read_text(encoding="utf-8").splitlines()[:limit]]
            return [
                [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]
                for r in rows
            ]
    raise FileNotFoundError(
        "No ultrafeedback/*train*.jsonl in the data directory (TS2_DATA_DIR or shared/data)."
    )


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    from _common import _rss_kib

    return _rss_kib("VmHWM") / 1024


def sft(device: torch.device, steps: int, batch: int, max_length: int) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ts2.data.sft import BadRow, tokenize_conversation
    from ts2.losses import TS2Loss
    from ts2.objective import CausalLMObjective, fused_head

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(TINY_BASE)
    model = AutoModelForCausalLM.from_pretrained(TINY_BASE, dtype=torch.float32).to(device).train()
    model.config.use_cache = False
    examples = []
    for conv in _conversations(batch * steps * 2):
        try:
            examples.append(tokenize_conversation(conv, tok, max_length))
        except BadRow:
            continue
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def collate(rows: list[dict]) -> tuple[dict, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], mask[i, :n], labels[i, :n] = (
                torch.tensor(r[k]) for k in ("input_ids", "attention_mask", "labels")
            )
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, labels.to(device)

    objective = CausalLMObjective(TS2Loss(alpha=0.25), fused=True)
    objective.log_ce_now = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    losses, tokens = [], 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with fused_head(model):
        for step in range(steps):
            inputs, labels = collate(examples[step * batch : (step + 1) * batch])
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(**inputs)
            loss = objective(out, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
            tokens += int(inputs["attention_mask"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    secs = time.perf_counter() - t0
    note = f"tiny base, {steps} steps x {batch} seqs <= {max_length} tokens, bf16 autocast, fused TS2 (alpha 0.25)"
    return [
        {"part": "sft", "metric": "tokens_per_s", "value": tokens / secs, "unit": "tok/s", "note": note},
        {"part": "sft", "metric": "peak_memory", "value": _peak_mib(device), "unit": "MiB", "note": note},
        {"part": "sft", "metric": "loss_first", "value": losses[0], "unit": "", "note": note},
        {"part": "sft", "metric": "loss_last", "value": losses[-1], "unit": "", "note": note},
    ]


def sample(device: torch.device, prompts: int, n: int, new_tokens: int) -> list[dict]:
    if importlib.util.find_spec("vllm") is None:
        return [
            {
                "part": "vllm",
                "metric": "skipped",
                "value": float("nan"),
                "unit": "",
                "note": "vllm not importable",
            }
        ]
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(TINY_BASE)
    texts = [
        tok.apply_chat_template(c[:1], tokenize=False, add_generation_prompt=True)
        for c in _conversations(prompts)
    ]
    t0 = time.perf_counter()
    kw = {"gpu_memory_utilization": 0.3} if device.type == "cuda" else {}
    llm = LLM(model=str(TINY_BASE), dtype="bfloat16" if device.type == "cuda" else "float32", seed=0, **kw)
    load = time.perf_counter() - t0
    params = SamplingParams(n=n, temperature=0.6, top_k=50, top_p=0.9, max_tokens=new_tokens, seed=0)
    llm.generate(texts[:1], params)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(texts, params)
    secs = time.perf_counter() - t0
    gen = sum(len(c.token_ids) for o in outs for c in o.outputs)
    note = f"tiny base, {len(texts)} prompts x {n} samples x <= {new_tokens} tokens, T 0.6 top-k 50 top-p 0.9"
    return [
        {"part": "vllm", "metric": "engine_start", "value": load, "unit": "s", "note": note},
        {
            "part": "vllm",
            "metric": "samples_per_s",
            "value": len(texts) * n / secs,
            "unit": "samples/s",
            "note": note,
        },
        {"part": "vllm", "metric": "tokens_per_s", "value": gen / secs, "unit": "tok/s", "note": note},
    ]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--out",
        default=None,
        help="default: results/benchmarks/ for the default run only, else a scratch folder",
    )
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    return p


def main(argv: list[str] | None = None) -> int:
    p = make_parser()
    args = p.parse_args(argv)
    path = csv_path("gpu_check.csv", p, args, Path(args.out) / "gpu_check.csv" if args.out else None)
    device = torch.device(args.device)
    rows = sft(device, args.steps, args.batch, args.max_length)
    try:
        rows += sample(device, args.prompts, args.n, args.tokens)
    except Exception as exc:  # an engine that does not start here is a result to report, not a crash
        rows.append(
            {
                "part": "vllm",
                "metric": "failed",
                "value": float("nan"),
                "unit": "",
                "note": f"{type(exc).__name__}: {exc}"[:300],
            }
        )
    prov = provenance(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["part", "metric", "value", "unit", "note", *prov])
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**r, **prov})
            print(f"{r['part']:5s} {r['metric']:14s} {r['value']:12.3f} {r['unit']:10s} {r['note']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
