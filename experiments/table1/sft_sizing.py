"""SFT sizing for the tiny Table 1: how far does SFT from the pretrained tiny base move the held-out response CE?

Trains the base on the local UltraFeedback subset with the repo's own data pipeline (ts2.data.build_sft_dataset)
and loss (ts2.objective.make_loss / CausalLMObjective, so ``--loss ts2`` is the real Sparsemax+), AdamW with linear
warm-up (3%) + cosine decay as conf/experiment/table1_tiny.yaml, one thread; every ``--eval-every`` steps it
measures the held-out response CE (ts2.eval.heldout_ce.response_nll) on the first ``--eval-rows`` rows of
uf_binarized_subset_eval200. Prints one JSON line per evaluation, then the CPU seconds spent training.

    python experiments/table1/sft_sizing.py --base assets/tiny_base --lr 1e-3 --epochs 1 --max-length 512
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import time

import torch
from omegaconf import OmegaConf


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--loss", default="ce")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-rows", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--limit", type=int, default=None, help="first N training rows after the seed-42 shuffle")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ts2.conf import CONF_DIR
    from ts2.data import build_sft_dataset
    from ts2.eval.heldout_ce import response_nll
    from ts2.objective import make_loss
    from ts2.paths import data_dir

    tok = AutoTokenizer.from_pretrained(a.base)
    model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32)
    common = {"source": "local", "local_dir": str(data_dir()), "prompt_field": "prompt",
              "response_field": "chosen", "limit": None, "strict": False}  # fmt: skip
    train = build_sft_dataset(OmegaConf.create({**common, "local_glob": "ultrafeedback/*train*.jsonl",
                                                "shuffle_seed": 42, "limit": a.limit}), tok, a.max_length)  # fmt: skip
    held = build_sft_dataset(OmegaConf.create({**common, "local_glob": "ultrafeedback/*eval200.jsonl",
                                               "shuffle_seed": None, "limit": a.eval_rows}), tok, 512)  # fmt: skip
    from hydra import compose, initialize_config_dir

    from ts2.conf import register_resolvers, register_schemas

    register_resolvers()
    register_schemas()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loss_cfg = compose(config_name="train", overrides=[f"loss={a.loss}"]).loss
    loss_fn, _ = make_loss(loss_cfg)
    ex = train.examples
    steps = math.ceil(len(ex) / a.batch_size * a.epochs)
    warm = max(1, round(0.03 * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    pad = tok.pad_token_id

    def evaluate(step: int, train_cpu: float) -> None:
        s, c = response_nll(model, held.examples, batch_size=8, pad_token_id=pad)
        print(json.dumps({"step": step, "epoch": round(step * a.batch_size / len(ex), 3),
                          "heldout_ce": float((s / c).mean()), "heldout_ce_token": float(s.sum() / c.sum()),
                          "train_cpu_s": round(train_cpu, 1)}), flush=True)  # fmt: skip

    print(json.dumps({"base": a.base, "loss": a.loss, "lr": a.lr, "epochs": a.epochs, "steps": steps,
                      "train_rows": len(ex), "skipped": len(train.skipped), "max_length": a.max_length,
                      "train_tokens_per_epoch": sum(len(e["input_ids"]) for e in ex)}), flush=True)  # fmt: skip
    train_cpu = 0.0
    evaluate(0, train_cpu)
    rng = random.Random(a.seed)
    order: list[int] = []
    t_wall = time.time()
    for step in range(steps):
        if not order:
            order = list(range(len(ex)))
            rng.shuffle(order)
        idx, order = order[: a.batch_size], order[a.batch_size :]
        t0 = cpu_seconds()
        lr = (
            a.lr * (step + 1) / warm
            if step < warm
            else a.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        width = max(len(ex[i]["input_ids"]) for i in idx)
        ids = torch.full((len(idx), width), pad)
        att = torch.zeros((len(idx), width), dtype=torch.long)
        lab = torch.full((len(idx), width), -100)
        for r, i in enumerate(idx):
            n = len(ex[i]["input_ids"])
            ids[r, :n], att[r, :n], lab[r, :n] = (
                torch.tensor(ex[i][k]) for k in ("input_ids", "attention_mask", "labels")
            )
        model.train()
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        y = lab[:, 1:]
        m = y.ne(-100)
        loss = loss_fn(logits[m], y[m]).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_cpu += cpu_seconds() - t0
        if (step + 1) % a.eval_every == 0 or step + 1 == steps:
            evaluate(step + 1, train_cpu)
    print(
        json.dumps(
            {"done": True, "train_cpu_s": round(train_cpu, 1), "wall_s": round(time.time() - t_wall, 1)}
        )
    )


if __name__ == "__main__":
    main()
