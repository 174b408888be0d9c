"""A tiny reward model for CPU-scale runs of the AlpacaEval best-of-N protocol (TS², PAPER.md §4).

The paper's judge is ``sfairXC/FsfairX-LLaMA3-RM-v0.1`` (8B). At the tiny scale we train a stand-in offline: a
``LlamaForSequenceClassification`` (num_labels=1) on the tiny byte-level BPE tokenizer of
:mod:`ts2.models.tiny`, trained on the local UltraFeedback chosen/rejected pairs with the Bradley–Terry loss

    L = −log σ(r(x, y_chosen) − r(x, y_rejected)),   mean over pairs,

where r(x, y) is the score-head logit at the read position of :mod:`ts2.models.scoring` (same chat template and
``quirk`` convention as at scoring time, same left truncation to ``max_length`` tokens). Pairs whose chosen
and rejected texts are identical carry no signal and are skipped.

Held-out pairwise accuracy on ``<data_dir>/ultrafeedback/*eval*.jsonl`` (fraction of pairs with
r_chosen > r_rejected, ties counted ½) is written to ``rm_eval.json`` in the model folder and printed, with its
95% Wilson interval. It is a *tiny-scale* number (1,000 training pairs, 199 held-out pairs).

Initialisation: by default (``base.pretrained = "tiny_base"``) the backbone and tokenizer are those of the
pretrained tiny base (:mod:`ts2.models.tiny_base`), as the paper's RM is a pretrained Llama-3 with a score head;
the score head starts at zero, so every reward is 0 and the loss is exactly log 2 before training. With a
random-init ``base`` (a plain :class:`~ts2.models.tiny.TinySpec`, as the fast tests use) the whole model is
seeded random init.

Deterministic for a given spec and machine (``torch.manual_seed``; a seeded shuffle). Cached under
``<cache_dir>/models/tiny-rm-<fingerprint>``, written to a temporary sibling folder and renamed into place.

Training runs through :func:`ts2.models.tiny.train_loop` (why not ``transformers.Trainer``: that docstring); the
weights are the same, bit for bit, as those of the loop this module had before (same operation order and RNG use).

Command: ``python -m ts2.models.tiny rm [--set KEY=VALUE ...]`` trains (or finds) the tiny RM, prints its folder and
accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ts2.eval.stats import wilson_interval  # the statistics live in one module
from ts2.models.tiny import TinySpec, build_tiny_model, init_llama, spec_from_dict, train_loop
from ts2.paths import atomic_dir, cache_dir, data_dir

log = logging.getLogger("ts2.tiny_rm")


@dataclass(frozen=True)
class TinyRMSpec:
    """Everything that determines the tiny RM; each distinct spec is cached in its own folder."""

    name: str = "tiny-rm"
    # tokenizer + backbone: the pretrained tiny base (default) or a random-init TinySpec
    base: TinySpec = field(default_factory=lambda: TinySpec(pretrained="tiny_base"))
    quirk: bool = True  # read convention used in training; conf/rm/tiny.yaml applies the same
    max_length: int = 128
    epochs: int = 3
    batch_size: int = 16  # pairs per step
    learning_rate: float = 1e-3  # from the pretrained base; what was tried: experiments/table1/README.md
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    train_glob: str = "ultrafeedback/*train*.jsonl"
    eval_glob: str = "ultrafeedback/*eval*.jsonl"
    max_train_pairs: int | None = None
    max_eval_pairs: int | None = None
    version: int = 2  # bump when the training code changes meaningfully (2: initialised from the base)

    def __post_init__(self) -> None:
        if isinstance(self.base, Mapping):
            object.__setattr__(self, "base", TinySpec(**dict(self.base)))
        for key in ("max_length", "epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"TinyRMSpec.{key} must be >= 1, got {getattr(self, key)}.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TinyRMSpec:
        """From a config mapping (``conf/rm/tiny.yaml``'s ``tiny`` block), rejecting unknown keys."""
        return spec_from_dict(cls, d, "tiny RM")

    def fingerprint(self) -> str:
        """Hash of the spec, and of the base's weights when it starts from the pretrained base (a rebuilt base
        gives a new RM folder, never a stale one)."""
        blob = asdict(self)
        if self.base.pretrained:
            man = json.loads((build_tiny_model(self.base) / "manifest.json").read_text())
            blob["base_weights_sha256"] = man["weights_sha256"]
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:10]


Pair = tuple[str, str, str]  # (prompt, chosen, rejected)


def load_pairs(glob: str, limit: int | None = None) -> tuple[list[Pair], int]:
    """UltraFeedback pairs from ``<data_dir>/<glob>`` in file order; also returns how many identical pairs were skipped."""
    files = sorted(data_dir().glob(glob))
    if not files:
        raise FileNotFoundError(f"No preference file matches {glob!r} under the data directory {data_dir()}.")
    pairs: list[Pair] = []
    skipped = 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    p, c, r = row["prompt"], row["chosen"], row["rejected"]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(
                        f"{f}:{lineno}: not a {{prompt, chosen, rejected}} JSON row ({err})."
                    ) from err
                if not all(isinstance(t, str) for t in (p, c, r)):
                    raise ValueError(f"{f}:{lineno}: prompt, chosen and rejected must be strings.")
                if c == r:
                    skipped += 1
                    continue
                pairs.append((p, c, r))
                if limit is not None and len(pairs) >= limit:
                    return pairs, skipped
    return pairs, skipped


def encode_pairs(
    tokenizer: Any, pairs: Sequence[Pair], spec: TinyRMSpec
) -> list[tuple[list[int], list[int]]]:
    """(chosen ids, rejected ids) rendered and truncated exactly as ``RewardScorer`` (:mod:`ts2.models.reward_model`) does."""
    from ts2.models.scoring import render_ids

    def enc(x: str, y: str) -> list[int]:
        return render_ids(tokenizer, x, y, quirk=spec.quirk)[-spec.max_length :]

    return [(enc(p, c), enc(p, r)) for p, c, r in pairs]


def init_rm_model(spec: TinyRMSpec, tokenizer: Any) -> Any:
    """The untrained tiny RM: ``LlamaForSequenceClassification`` with num_labels=1, pad id set.

    From the pretrained base (its backbone; a zero score head) when ``spec.base.pretrained``, else seeded init.
    """
    import torch
    from transformers import LlamaForSequenceClassification

    b = spec.base
    if b.pretrained:
        torch.manual_seed(spec.seed)
        model = LlamaForSequenceClassification.from_pretrained(
            build_tiny_model(b), num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=torch.float32
        )
        torch.nn.init.zeros_(model.score.weight)
        return model
    return init_llama(
        b,
        seed=spec.seed,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        max_position_embeddings=max(b.max_position_embeddings, spec.max_length),
    )


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    return ids, mask


def bt_loss(model: Any, batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Any:
    """Bradley–Terry loss −log σ(r_c − r_r), mean over the batch's pairs."""
    import torch.nn.functional as F

    ids, mask = _pad([c for c, _ in batch] + [r for _, r in batch], pad_id)
    r = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].float()
    k = len(batch)
    return -F.logsigmoid(r[:k] - r[k:]).mean()


def train_rm(
    model: Any,
    data: Sequence[tuple[list[int], list[int]]],
    spec: TinyRMSpec,
    pad_id: int,
    after_epoch: Callable[[int, Any], None] | None = None,
) -> list[float]:
    """AdamW on the Bradley–Terry loss (:func:`ts2.models.tiny.train_loop`); returns the loss of every step.

    ``after_epoch(epoch, model)`` (1-based) runs after each epoch's last step, e.g. to score a selection split
    (experiments/judge_selection); it may evaluate, but must not change the model or draw random numbers, so the
    weights after epoch e are those of a run with ``epochs=e`` (the learning rate is constant).
    """
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(spec.seed)

    def batches() -> Any:
        for _ in range(spec.epochs):
            perm = torch.randperm(len(data), generator=gen).tolist()
            for start in range(0, len(perm), spec.batch_size):
                yield [data[i] for i in perm[start : start + spec.batch_size]]

    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    losses: list[float] = []
    per_epoch = -(-len(data) // spec.batch_size)
    with tqdm(total=spec.epochs * per_epoch, desc="tiny RM training", unit="step", dynamic_ncols=True) as bar:

        def after_step(step: int, loss: Any, grad_norm: Any) -> None:
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update(1)
            if after_epoch is not None and (step + 1) % per_epoch == 0:
                after_epoch((step + 1) // per_epoch, model)

        train_loop(
            model,
            opt,
            batches(),
            lambda m, batch: bt_loss(m, batch, pad_id),
            max_grad_norm=spec.max_grad_norm,
            after_step=after_step,
        )
    return losses


def pairwise_accuracy(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> float:
    """Fraction of pairs with r_chosen > r_rejected (ties ½)."""
    if len(r_chosen) != len(r_rejected) or not r_chosen:
        raise ValueError("pairwise_accuracy needs two equally long, non-empty score lists.")
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_chosen, r_rejected, strict=True))
    return wins / len(r_chosen)


def _train_and_evaluate(
    spec: TinyRMSpec, tok: Any, progress: bool
) -> tuple[Any, list[float], dict[str, Any]]:
    import numpy as np

    from ts2.models.scoring import score_token_sequences

    t0 = time.perf_counter()
    train_pairs, train_skipped = load_pairs(spec.train_glob, spec.max_train_pairs)
    eval_pairs, eval_skipped = load_pairs(spec.eval_glob, spec.max_eval_pairs)
    train = encode_pairs(tok, train_pairs, spec)
    held = encode_pairs(tok, eval_pairs, spec)
    model = init_rm_model(spec, tok)
    losses = train_rm(model, train, spec, tok.pad_token_id)
    seqs = [s for pair in held for s in pair]
    scores = score_token_sequences(model, seqs, batch_size=2 * spec.batch_size, progress=progress)
    steps = int(np.ceil(len(train) / spec.batch_size))
    report = {
        "scale": "tiny",
        "note": (
            "tiny-scale reward model (Bradley-Terry on the local UltraFeedback subset); its accuracy says nothing "
            "about FsfairX-LLaMA3-RM-v0.1, the paper's RM"
        ),
        "pairwise_accuracy": (acc := pairwise_accuracy(scores[0::2].tolist(), scores[1::2].tolist())),
        "pairwise_accuracy_ci95": wilson_interval(acc * len(held), len(held)),
        "ci_method": "Wilson score interval, 95%, over held-out pairs (ties counted 1/2)",
        "num_eval_pairs": len(held),
        "num_eval_identical_skipped": eval_skipped,
        "eval_glob": spec.eval_glob,
        "num_train_pairs": len(train),
        "num_train_identical_skipped": train_skipped,
        "train_loss_epoch_means": [
            float(np.mean(losses[i : i + steps])) for i in range(0, len(losses), steps)
        ],
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return model, losses, report


def rm_folder(spec: TinyRMSpec) -> Path:
    """The cache folder of ``spec``: ``<cache_dir>/models/tiny-rm-<fingerprint>``."""
    return cache_dir() / "models" / f"{spec.name}-{spec.fingerprint()}"


def build_tiny_rm(spec: TinyRMSpec | None = None, *, force: bool = False, progress: bool = False) -> Path:
    """Train (or find in the cache) the tiny RM and return its folder (model, tokenizer, rm_build/rm_eval.json)."""
    import torch
    from transformers import AutoTokenizer

    spec = spec or TinyRMSpec()
    target = rm_folder(spec)
    if (target / "rm_eval.json").is_file() and not force:
        return target
    log.info(
        "building the tiny reward model once (Bradley-Terry, %d epoch(s) on <data_dir>/%s, from the %s backbone; "
        "about 2.5 min of one CPU core for the default spec), cached in %s for every later run",
        spec.epochs,
        spec.train_glob,
        spec.base.pretrained or "random-init",
        target,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = AutoTokenizer.from_pretrained(build_tiny_model(spec.base))
    if tok.pad_token_id is None:
        raise ValueError(
            "The tiny tokenizer has no pad token; rebuild it with `python -m ts2.models.tiny model --force`."
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # a 64-wide model gains nothing from threads; one thread also fixes reduction order
    try:
        model, losses, report = _train_and_evaluate(spec, tok, progress)
    finally:
        torch.set_num_threads(threads)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "rm_build.json").write_text(
            json.dumps({"spec": asdict(spec), "train_losses": losses}, indent=2)
        )
        (tmp / "rm_eval.json").write_text(json.dumps(report, indent=2))
    log.info(
        "tiny reward model built in %.0f s: held-out pairwise accuracy %.3f -> %s",
        report["train_seconds"],
        report["pairwise_accuracy"],
        target,
    )
    return target


def settings_from_args(items: Sequence[str], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``base`` with ``--set`` items like ``["quirk=false", "epochs=6"]`` set on it (values parsed as JSON, else
    kept as strings)."""
    d = dict(base or {})
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE.")
        try:
            d[key] = json.loads(val)
        except json.JSONDecodeError:
            d[key] = val
    return d


def spec_from_args(items: Sequence[str]) -> TinyRMSpec:
    """``["quirk=false", "epochs=6"]`` -> TinyRMSpec (:func:`settings_from_args`)."""
    return TinyRMSpec.from_dict(settings_from_args(items))


if (
    __name__ == "__main__"
):  # the old command; experiments/table1/run.sh calls it (= python -m ts2.models.tiny rm)
    from ts2 import cli
    from ts2.models.tiny import main

    cli.run(lambda: main(["rm", *sys.argv[1:]]), interrupted=cli.RERUN)
