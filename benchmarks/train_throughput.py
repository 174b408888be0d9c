"""Training throughput (tokens/s) of CE against TS² through the real training objective.

Issue #3 target: training tokens/s with TS² >= 0.9x CE's (this CPU, 2 threads, fp32). Each row runs
forward + loss + backward + AdamW step of a Llama-architecture model on fixed random token batches, through
`ts2.objective.CausalLMObjective` with the fast loss kernels (the same code `python -m ts2.train` uses; a
step that is not a logging step, so no extra CE pass), unfused and fused. Two models: the tiny model's shape (V = 1,024) and the same depth with V = 128,256
(Llama-3 vocabulary), where the loss over the vocabulary dominates. Ratios are against unfused CE measured
in the same process: ``ce_torch`` is torch's ``F.cross_entropy`` (the reference CE), ``ce`` and ``ts2`` the
fast kernels that training uses by default.

    python benchmarks/train_throughput.py            # both models, B x T = 8 x 256 tokens per step
    python benchmarks/train_throughput.py --quick    # fewer repetitions
    python benchmarks/train_throughput.py --model smollm2_135m --batch 4 --threads 1   # a real model, fused only
                                                     # (ratios then against its fused CE row)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measure, provenance  # noqa: E402

from ts2.losses import LOSSES, CrossEntropyLoss  # noqa: E402
from ts2.objective import CausalLMObjective, fused_head  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks"


def _model(vocab: int, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


class ReferenceCE(CrossEntropyLoss):
    """CE whose call is its reference (torch's ``F.cross_entropy`` per token): the ``ce_torch`` baseline."""

    def __call__(self, logits, labels, **kw):
        return self.reference(logits, labels, **kw)


def _conf_model(model_id: str):
    """A ``conf/model/<id>.yaml`` model as training loads it (``ts2.models.load_model``): a factory and its vocab."""
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR
    from ts2.models import load_model, resolve_model_path

    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{model_id}.yaml")
    path = resolve_model_path(cfg)
    model = load_model(cfg, path)
    return lambda: load_model(cfg, path), model.config.vocab_size


def _step_fn(
    vocab: int, hidden: int, layers: int, loss_id: str, fused: bool, batch: int, seq: int, make=None
):
    """One training step; ``loss_id="ce_torch"`` is the reference CE (torch ``F.cross_entropy``); ``make``: a
    factory of a real model (``--model``) instead of the random Llama of the given shape."""
    loss = ReferenceCE() if loss_id == "ce_torch" else LOSSES[loss_id]()
    model = (make() if make else _model(vocab, hidden, layers)).train()
    model.config.use_cache = False  # as ts2.train
    if fused:  # as ts2.train: the forward returns hidden states + head weight (kept patched: a benchmark)
        fused_head(model).__enter__()
    objective = CausalLMObjective(loss, fused=fused)
    objective.log_ce_now = False  # a step that is not logged (training logs CE every logging_steps only)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 4] = -100  # the prompt part carries no loss, as in SFT
    n_items = int(labels[:, 1:].ne(-100).sum())

    def step() -> None:
        out = model(input_ids=ids)
        loss = objective(out, labels, num_items_in_batch=n_items)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, n_items


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--model", default=None, help="a conf/model id (e.g. smollm2_135m): fused CE and TS² on it"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = 2 if args.quick else args.reps
    shapes = [("tiny (V=1,024)", 1024, 64, 2, None), ("V=128,256", 128256, 256, 2, None)]
    runs = (("ce_torch", False), ("ce", False), ("ts2", False), ("ce", True), ("ts2", True))
    if args.model:
        make, vocab = _conf_model(args.model)
        shapes, runs = [(f"{args.model} (V={vocab:,})", vocab, 0, 0, make)], (("ce", True), ("ts2", True))
    rows = []
    for name, vocab, hidden, layers, make in shapes:
        base = None
        for loss_id, fused in runs:
            step, n_tok = _step_fn(vocab, hidden, layers, loss_id, fused, args.batch, args.seq, make)
            m = measure(step, reps=reps, warmup=1, memory=True)
            tps = n_tok / (m.median_ms / 1e3)
            base = base or tps
            rows.append(
                {
                    "model": name,
                    "loss": loss_id,
                    "fused": fused,
                    "tokens_per_s": round(tps, 1),
                    "ratio_vs_ce": round(tps / base, 3),
                    "step_ms": round(m.median_ms, 1),
                    "peak_mib": round(m.peak_mib, 1),
                }
            )
            r = rows[-1]
            print(
                f"{name:16s} {loss_id:4s} fused={str(fused):5s} {r['tokens_per_s']:10.1f} tok/s "
                f"x{r['ratio_vs_ce']:.3f} vs torch CE  step {r['step_ms']:8.1f} ms  peak {r['peak_mib']:8.1f} MiB",
                flush=True,
            )
    OUT.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    path = OUT / (f"train_throughput_{args.model}.csv" if args.model else "train_throughput.csv")
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], *prov])
        w.writeheader()
        for r in rows:
            w.writerow({**r, **prov})
    print(
        "\n| model | loss | fused | tokens/s | × torch CE | step ms | peak MiB |\n|---|---|---|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['model']} | {r['loss']} | {r['fused']} | {r['tokens_per_s']} | {r['ratio_vs_ce']} | "
            f"{r['step_ms']} | {r['peak_mib']} |"
        )
    print(
        f"\nwrote {path}  ({prov['device']}, torch {prov['torch']}, {prov['torch_threads']} threads, {prov['date']})"
    )


if __name__ == "__main__":
    main()
