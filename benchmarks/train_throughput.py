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
    python benchmarks/train_throughput.py --model smollm2_135m --batch 4 --losses ce --threads 1,2 \
        --trainable full,10   # the small scale's freeze setting against full fine-tuning, 1 and 2 threads

``--trainable``: ``full`` (every parameter), ``k`` (the top k decoder layers + final norm, embeddings and LM head
frozen: ``model.trainable_layers=k model.train_embeddings=false``, ts2.models.freeze) or ``k+emb`` (the same with
the embeddings trained). ``--threads`` may list several counts; every row of one process is also given as a ratio
to the first row (``ratio_vs_first``), so one process measures the freeze and thread speed-ups under the same load.
Tokens/s counts the tokens that carry loss (3/4 of each sequence); ``seq_tokens_per_s`` counts every token.

Only the default run writes results/benchmarks/train_throughput.csv (the committed file the README cites); any
other run (``--quick`` included) writes a scratch CSV (printed) unless ``--csv`` names one.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import csv_path, measure, provenance  # noqa: E402

from ts2.losses import LOSSES, CrossEntropyLoss  # noqa: E402
from ts2.objective import CausalLMObjective, fused_head  # noqa: E402


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


def _trainable(item: str):
    """``full`` | ``k`` | ``k+emb`` (``--trainable``) -> a :class:`ts2.models.freeze.Trainable`."""
    from ts2.models.freeze import Trainable

    if item == "full":
        return Trainable()
    k, _, emb = item.partition("+")
    if not k.isdigit() or emb not in ("", "emb"):
        raise SystemExit(f"--trainable {item!r}: use full, k (top k layers, embeddings frozen) or k+emb.")
    return Trainable(layers=int(k), embeddings=emb == "emb")


def _step_fn(
    vocab: int,
    hidden: int,
    layers: int,
    loss_id: str,
    fused: bool,
    batch: int,
    seq: int,
    make=None,
    trainable=None,
):
    """One training step; ``loss_id="ce_torch"`` is the reference CE (torch ``F.cross_entropy``); ``make``: a
    factory of a real model (``--model``) instead of the random Llama of the given shape; ``trainable``: what
    trains (ts2.models.freeze, applied as ts2.train does; the optimizer gets the trained parameters only)."""
    from ts2.models.freeze import apply_trainable

    loss = ReferenceCE() if loss_id == "ce_torch" else LOSSES[loss_id]()
    model = (make() if make else _model(vocab, hidden, layers)).train()
    model.config.use_cache = False  # as ts2.train
    if trainable is not None:
        apply_trainable(model, trainable)
    patch = (
        fused_head(model) if fused else None
    )  # as ts2.train: the forward returns hidden states + head weight
    if patch is not None:
        patch.__enter__()  # kept patched for the benchmark
    objective = CausalLMObjective(loss, fused=fused)
    objective.log_ce_now = False  # a step that is not logged (training logs CE every logging_steps only)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 4] = -100  # the prompt part carries no loss, as in SFT
    n_items = int(labels[:, 1:].ne(-100).sum())

    def step(_patch=patch) -> None:  # holds the patch: a collected context manager would undo it
        out = model(input_ids=ids)
        loss = objective(out, labels, num_items_in_batch=n_items)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, n_items


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", default="2", help="torch threads; a comma list (1,2) measures each")
    p.add_argument(
        "--model", default=None, help="a conf/model id (e.g. smollm2_135m): fused CE and TS² on it"
    )
    p.add_argument("--losses", default="ce,ts2", help="with --model: the fused losses to measure")
    p.add_argument("--trainable", default="full", help="with --model: full, k or k+emb, comma-separated")
    p.add_argument(
        "--csv",
        default=None,
        help="default: results/benchmarks/ for the default run only, else a scratch file",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    p = make_parser()
    args = p.parse_args(argv)
    path = csv_path(
        f"train_throughput_{args.model}.csv" if args.model else "train_throughput.csv", p, args, args.csv
    )
    threads = [int(t) for t in str(args.threads).split(",")]
    reps = 2 if args.quick else args.reps
    shapes = [("tiny (V=1,024)", 1024, 64, 2, None), ("V=128,256", 128256, 256, 2, None)]
    runs = (("ce_torch", False), ("ce", False), ("ts2", False), ("ce", True), ("ts2", True))
    settings = ["full"]
    if args.model:
        make, vocab = _conf_model(args.model)
        shapes = [(f"{args.model} (V={vocab:,})", vocab, 0, 0, make)]
        runs = tuple((loss, True) for loss in args.losses.split(","))
        settings = args.trainable.split(",")
    rows = []
    for name, vocab, hidden, layers, make in shapes:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for setting in settings:
                base = None
                for loss_id, fused in runs:
                    step, n_tok = _step_fn(vocab, hidden, layers, loss_id, fused, args.batch, args.seq, make,
                                           _trainable(setting) if args.model else None)  # fmt: skip
                    m = measure(step, reps=reps, warmup=1, memory=True)
                    tps = n_tok / (m.median_ms / 1e3)
                    base = base or tps
                    first = rows[0]["tokens_per_s"] if rows else tps
                    rows.append(
                        {
                            "model": name,
                            "threads": n_threads,
                            "trainable": setting,
                            "loss": loss_id,
                            "fused": fused,
                            "tokens_per_s": round(tps, 1),
                            "seq_tokens_per_s": round(tps * args.batch * args.seq / n_tok, 1),
                            "ratio_vs_ce": round(tps / base, 3),
                            "ratio_vs_first": round(tps / first, 3),
                            "step_ms": round(m.median_ms, 1),
                            "peak_mib": round(m.peak_mib, 1),
                        }
                    )
                    r = rows[-1]
                    print(
                        f"{name:16s} {n_threads}t {setting:6s} {loss_id:4s} fused={str(fused):5s} "
                        f"{r['tokens_per_s']:10.1f} tok/s x{r['ratio_vs_ce']:.3f} vs CE x{r['ratio_vs_first']:.3f} "
                        f"vs first  step {r['step_ms']:8.1f} ms  peak {r['peak_mib']:8.1f} MiB",
                        flush=True,
                    )
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], *prov])
        w.writeheader()
        for r in rows:
            w.writerow({**r, **prov})
    print(
        "\n| model | threads | trainable | loss | fused | tokens/s | all tokens/s | × CE | × first row | step ms | "
        "peak MiB |\n|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['model']} | {r['threads']} | {r['trainable']} | {r['loss']} | {r['fused']} | {r['tokens_per_s']} | "
            f"{r['seq_tokens_per_s']} | {r['ratio_vs_ce']} | {r['ratio_vs_first']} | {r['step_ms']} | {r['peak_mib']} |"
        )
    print(f"\nwrote {path}  ({prov['device']}, torch {prov['torch']}, {prov['date']})")


if __name__ == "__main__":
    main()
