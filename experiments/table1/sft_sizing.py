"""SFT sizing for Table 1: how far does a scale's SFT move the held-out response CE from the base model?

Trains one method's SFT with the repo's data pipeline (``ts2.data.build_sft_dataset``), objective
(``ts2.objective.CausalLMObjective``, fused when ``loss.fused``, so ``loss=ts2`` is the real Sparsemax+), freeze
setting (``ts2.models.freeze``) and AdamW with linear warm-up + cosine decay, and every ``--eval-every`` steps
measures the held-out response CE (``ts2.eval.heldout_ce.response_nll``, nats per answer token, mean over rows) on
held-out rows of uf_binarized_subset_eval200 (``--eval-split``: by default the *selection* rows, each 4th, so the
rows the table reports never size anything), with its paired difference to the base (step 0) and that
difference's 95% paired-bootstrap CI over rows: the SFT is big enough when CE's CI excludes 0 and the curve has
flattened. One JSON line per evaluation, then the CPU seconds spent training.

Two ways to say what is trained:

* ``--experiment table1_small [hydra overrides ...]``: the experiment's own model, data, loss, freeze setting and
  ``train.*`` (batch x accumulation, epochs, learning rate, warm-up ratio, β2, weight decay, clip), composed
  exactly as ``python -m ts2.train`` composes them, with ``method=ce`` unless a ``method=`` is given; overrides as
  on its command line, e.g. ``train.learning_rate=3e-4 method=ts2``. The curve of the small Table 1 (a quiet 2-core machine, ~5 min per
  curve: 37 steps x ~2,000 tokens at ~590 tokens/s, plus ~15 s per evaluation)::

      python experiments/table1/sft_sizing.py --experiment table1_small --eval-every 6
      python experiments/table1/sft_sizing.py --experiment table1_small --eval-every 6 train.learning_rate=3e-4
      python experiments/table1/sft_sizing.py --experiment table1_small --eval-every 6 method=ts2

* ``--base <folder>`` with the flags below (the tiny recipe's original command, experiments/table1/README.md)::

      python experiments/table1/sft_sizing.py --base assets/tiny_base --limit 400 --batch-size 4 --lr 1e-3

Threads: ``--threads`` (default 1, a fixed reduction order).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True)
class Recipe:
    """What one sizing run trains: a config composed like ``ts2.train``'s, and where its model lives."""

    cfg: DictConfig
    model_path: str
    batch_size: int  # sequences per optimizer step
    epochs: float


def compose_train(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from ts2.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def recipe(a: argparse.Namespace, overrides: list[str]) -> Recipe:
    """From ``--experiment`` + overrides, or from ``--base`` and the flags (the tiny recipe's command)."""
    from ts2.models import resolve_model_path

    if a.experiment:
        method = [] if any(o.startswith("method=") for o in overrides) else ["method=ce"]  # CE unless named
        cfg = compose_train([f"experiment={a.experiment}", *method, *overrides])
        batch = int(cfg.train.per_device_train_batch_size) * int(cfg.train.gradient_accumulation_steps)
        return Recipe(cfg, resolve_model_path(cfg.model), batch, float(cfg.train.num_train_epochs))
    flags = [f"loss={a.loss}", f"data.limit={a.limit if a.limit else 'null'}", f"model.max_length={a.max_length}",
             f"train.learning_rate={a.lr}", "train.warmup_ratio=0.03", "train.adam_beta2=0.95",
             "train.weight_decay=0.0", "train.max_grad_norm=1.0", *overrides]  # fmt: skip
    cfg = compose_train(flags)
    cfg.model = OmegaConf.create({**OmegaConf.to_container(cfg.model), "tiny": None, "name_or_path": a.base})
    return Recipe(cfg, a.base, a.batch_size, a.epochs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--experiment", default=None, help="conf/experiment id (e.g. table1_small); overrides follow"
    )
    p.add_argument(
        "--base", default=None, help="a model folder (with the flags below) instead of --experiment"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--loss", default="ce")
    p.add_argument("--limit", type=int, default=None, help="first N training rows after the seed-42 shuffle")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-rows", type=int, default=None, help="first N rows of the split (default: all)")
    p.add_argument("--eval-split", default="selection", choices=("selection", "report", "all"))
    p.add_argument("--eval-max-length", type=int, default=512)
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (the schedule is kept)"
    )
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    a, overrides = p.parse_known_args(argv)
    if bool(a.experiment) == bool(a.base):
        p.error("give exactly one of --experiment and --base")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    from ts2.data import build_sft_dataset
    from ts2.data.sft import BadRow, load_conversations, tokenize_conversation
    from ts2.eval.heldout_ce import response_nll, split_rows
    from ts2.eval.stats import paired_bootstrap
    from ts2.models import load_model, load_tokenizer
    from ts2.models.freeze import apply_trainable, trainable_of
    from ts2.objective import CausalLMObjective, fused_head, make_loss

    r = recipe(a, overrides)
    cfg = r.cfg
    tok = load_tokenizer(cfg.model, r.model_path)
    model = load_model(cfg.model, r.model_path)
    trained = apply_trainable(model, trainable_of(cfg.model))
    train = build_sft_dataset(cfg.data, tok, int(cfg.model.max_length))
    held_cfg = OmegaConf.create({"source": "local", "local_dir": cfg.data.local_dir, "prompt_field": "prompt",
                                 "response_field": "chosen", "local_glob": "ultrafeedback/*eval200.jsonl",
                                 "shuffle_seed": None, "limit": None})  # fmt: skip
    held, held_ids = [], []
    for rid, messages in split_rows(load_conversations(held_cfg), a.eval_split)[: a.eval_rows]:
        try:
            held.append(tokenize_conversation(messages, tok, a.eval_max_length))
            held_ids.append(rid)
        except BadRow:
            continue
    loss, settings = make_loss(cfg.loss)
    objective = CausalLMObjective(loss, fused=settings.fused, chunk_size=settings.chunk_size)
    objective.log_ce_now = False
    ex = train.examples
    steps = math.ceil(len(ex) / r.batch_size * r.epochs)
    warm = max(1, round(float(cfg.train.warmup_ratio) * steps))
    lr0 = float(cfg.train.learning_rate)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr0,
                            betas=(float(cfg.train.adam_beta1), float(cfg.train.adam_beta2)),
                            weight_decay=float(cfg.train.weight_decay))  # fmt: skip
    pad = tok.pad_token_id
    base_rows: list[float] = []

    def evaluate(step: int, train_cpu: float) -> None:
        s, c = response_nll(model, held, batch_size=8, pad_token_id=pad)
        rows = (s / c).tolist()
        base_rows[:] = base_rows or rows
        d = paired_bootstrap(rows, base_rows)
        print(json.dumps({"step": step, "epoch": round(step * r.batch_size / len(ex), 3),
                          "heldout_ce": float((s / c).mean()), "heldout_ce_token": float(s.sum() / c.sum()),
                          "minus_base": round(d.diff, 4), "minus_base_ci95": [round(x, 4) for x in d.ci],
                          "moved": d.significant, "train_cpu_s": round(train_cpu, 1)}), flush=True)  # fmt: skip

    print(json.dumps({"experiment": a.experiment, "model": cfg.model.get("id"), "model_path": r.model_path,
                      "loss": cfg.loss.id, "fused": settings.fused, "lr": lr0, "epochs": r.epochs, "steps": steps,
                      "batch": r.batch_size, "train_rows": len(ex), "skipped": len(train.skipped),
                      "max_length": int(cfg.model.max_length), "trainable": trained,
                      "train_tokens_per_epoch": sum(len(e["input_ids"]) for e in ex),
                      "eval_rows": len(held), "eval_split": a.eval_split}), flush=True)  # fmt: skip
    train_cpu = 0.0
    evaluate(0, train_cpu)
    rng = random.Random(a.seed)
    order: list[int] = []
    t_wall = time.time()
    last = min(steps, a.max_steps or steps)
    for step in range(last):
        if not order:
            order = list(range(len(ex)))
            rng.shuffle(order)
        idx, order = order[: r.batch_size], order[r.batch_size :]
        t0 = cpu_seconds()
        progress = (step - warm) / max(1, steps - warm)
        lr = lr0 * (step + 1) / warm if step < warm else lr0 * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        width = max(len(ex[i]["input_ids"]) for i in idx)
        ids = torch.full((len(idx), width), pad)
        att = torch.zeros((len(idx), width), dtype=torch.long)
        lab = torch.full((len(idx), width), -100)
        for row, i in enumerate(idx):
            n = len(ex[i]["input_ids"])
            ids[row, :n], att[row, :n], lab[row, :n] = (
                torch.tensor(ex[i][k]) for k in ("input_ids", "attention_mask", "labels")
            )
        model.train()
        with fused_head(model) if settings.fused else _nothing():
            out = model(input_ids=ids, attention_mask=att)
            loss_value = objective(out, lab)
        opt.zero_grad(set_to_none=True)
        loss_value.backward()
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad],
                                       float(cfg.train.max_grad_norm))  # fmt: skip
        opt.step()
        train_cpu += cpu_seconds() - t0
        if (step + 1) % a.eval_every == 0 or step + 1 == last:
            evaluate(step + 1, train_cpu)
    done = {
        "done": True,
        "steps_run": last,
        "train_cpu_s": round(train_cpu, 1),
        "wall_s": round(time.time() - t_wall, 1),
    }
    print(json.dumps(done))


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


if __name__ == "__main__":
    main()
