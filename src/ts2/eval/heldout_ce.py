"""Held-out response cross-entropy: how well a trained model fits the SFT target distribution.

Diversity bought with a worse fit is not the paper's claim (TS² keeps more diversity than CE *at comparable
quality*; PAPER.md §1, issue #15 item 3a). At tiny scale the reward model is weak, so the direct measure of
quality is the fit to held-out SFT answers: for each held-out UltraFeedback row (prompt x, chosen answer y,
rendered by :func:`ts2.data.build_sft_dataset` exactly as in training, assistant tokens only), with
p_t = softmax(z_t) the model's *sampling* distribution (TS² samples with softmax),

    CE(row) = -(1/|y|) Σ_t log p_t(y_t)                      (nats per response token)

Metrics (``metrics/heldout_ce.json`` through ``python -m ts2.evaluate run_dir=... eval=heldout_ce``):

* ``heldout_ce``: the mean of CE(row) over rows; ``per_prompt["heldout_ce"]`` holds CE(row) in row order
  (for paired bootstrap between methods); 95% CI: percentile bootstrap over rows (:mod:`ts2.eval.stats`).
* ``heldout_ce_token``: total nats / total response tokens (the token-weighted average the training loss
  uses); 95% CI: bootstrap over rows of the ratio.
* ``heldout_ppl_token``: exp(heldout_ce_token).

Lower is a better fit. The LM head is applied to ``chunk_size`` response positions at a time, so the logits
never exceed chunk_size x V.

Commands::

    python -m ts2.evaluate "run_dir='runs/table1_tiny/method=ce'" eval=heldout_ce
    python -m ts2.evaluate eval=heldout_ce model=tiny_base metrics_dir=/tmp/base    # the base itself
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ts2.eval.result import ScoreResult
from ts2.models.source import cfg_get, model_source_of

IGNORE_INDEX = -100


def response_hidden_states(
    model: Any,
    examples: Sequence[dict[str, list[int]]],
    *,
    batch_size: int = 4,
    pad_token_id: int = 0,
    device: Any = "cpu",
) -> Iterator[tuple[Any, Any, np.ndarray]]:
    """Per batch of ``examples`` (longest first, right-padded): the base model's hidden states [n, d] at the
    positions whose next token is a response token, those tokens [n] (both on ``device``) and the index of the
    example each belongs to [n]. Call it under ``torch.no_grad()``.

    ``examples``: ``{"input_ids", "attention_mask", "labels"}`` lists (as :func:`ts2.data.build_sft_dataset`
    gives); the label at t+1 is predicted from the hidden state at t; positions labelled -100 are not counted.
    """
    import torch

    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(examples[i]["input_ids"]) for i in idx)
        ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
        att = torch.zeros((len(idx), width), dtype=torch.long)
        lab = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
        for r, i in enumerate(idx):
            ex, n = examples[i], len(examples[i]["input_ids"])
            ids[r, :n] = torch.tensor(ex["input_ids"])
            att[r, :n] = torch.tensor(ex["attention_mask"])
            lab[r, :n] = torch.tensor(ex["labels"])
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=att.to(device)).last_hidden_state
        nxt = lab[:, 1:]
        mask = nxt.ne(IGNORE_INDEX)
        owner = torch.tensor(idx).unsqueeze(1).expand_as(mask)[mask].numpy()
        yield hidden[:, :-1][mask.to(device)], nxt[mask].to(device), owner


def response_nll(
    model: Any,
    examples: Sequence[dict[str, list[int]]],
    *,
    batch_size: int = 4,
    chunk_size: int = 1024,
    pad_token_id: int = 0,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of -log p(y_t), number of response tokens) per example, in example order
    (``examples`` as :func:`response_hidden_states`)."""
    import torch

    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}.")
    head = model.get_output_embeddings()
    sums = np.zeros(len(examples))
    counts = np.zeros(len(examples), dtype=np.int64)
    with torch.no_grad():
        batches = response_hidden_states(
            model, examples, batch_size=batch_size, pad_token_id=pad_token_id, device=device
        )
        for h, targets, owner in batches:
            for c in range(0, h.shape[0], chunk_size):
                z = head(h[c : c + chunk_size]).float()
                nll = torch.nn.functional.cross_entropy(z, targets[c : c + chunk_size], reduction="none")
                np.add.at(sums, owner[c : c + chunk_size], nll.cpu().double().numpy())
                np.add.at(counts, owner[c : c + chunk_size], 1)
    return sums, counts


def summarize(
    sums: np.ndarray, counts: np.ndarray, ids: Sequence[Any], *, n_bootstrap: int = 1000, seed: int = 0
) -> ScoreResult:
    """The metrics of the module docstring from per-row NLL sums and token counts."""
    from ts2.eval.stats import bootstrap_ci, bootstrap_indices, ratio_ci

    if len(sums) != len(counts) or len(sums) != len(ids):
        raise ValueError(f"summarize: {len(sums)} sums, {len(counts)} counts and {len(ids)} ids differ.")
    if len(sums) == 0 or (counts <= 0).any():
        raise ValueError("summarize: every held-out row needs at least one response token.")
    row_ce = sums / counts
    token_ce = float(sums.sum() / counts.sum())
    metrics = {
        "heldout_ce": float(row_ce.mean()),
        "heldout_ce_token": token_ce,
        "heldout_ppl_token": math.exp(token_ce),
    }
    ci: dict[str, tuple[float, float]] = {}
    if len(sums) >= 2 and n_bootstrap >= 1:
        idx = bootstrap_indices(len(sums), n_bootstrap, seed)
        ci["heldout_ce"] = bootstrap_ci(row_ce, indices=idx)
        lo, hi = ci["heldout_ce_token"] = ratio_ci(sums, counts, indices=idx)
        ci["heldout_ppl_token"] = (math.exp(lo), math.exp(hi))
    return ScoreResult(
        metrics=metrics,
        num_prompts=len(sums),
        num_samples=0,
        complete=True,
        ci=ci,
        per_prompt={"heldout_ce": [float(x) for x in row_ce]},
        prompt_ids=list(ids),
        details={"response_tokens": int(counts.sum()), "unit": "nats per response token"},
    )


SPLITS = ("report", "selection", "all")


def split_rows(rows: Sequence[Any], split: str, every: int = 4) -> list[Any]:
    """The held-out rows of one split (``eval.data.split``), by position in file order (0-based).

    ``selection``: positions 0, every, 2 every, ... (a quarter of the rows at ``every`` = 4), the rows on which a
    setting such as TS²'s α is chosen (experiments/alpha_selection); ``report``: the remaining rows, the ones the
    table reports, so a chosen setting is never judged on the rows that chose it; ``all``: every row.
    """
    if split not in SPLITS:
        raise ValueError(f"eval.data.split={split!r}: use one of {', '.join(SPLITS)}.")
    if every < 2:
        raise ValueError(f"eval.data.selection_every={every}: must be >= 2 (1 would leave no report rows).")
    if split == "all":
        return list(rows)
    return [r for i, r in enumerate(rows) if (i % every == 0) == (split == "selection")]


def score(source: str | Path | None, cfg: Any) -> ScoreResult:
    """Held-out response CE of one model (``eval.kind: model`` scorer of conf/eval/heldout_ce.yaml).

    ``source``: a finished training run folder; None: ``cfg.model_path`` (a model folder), else ``cfg.model``.
    Rows: ``cfg.eval.data``, its ``split`` (:func:`split_rows`; the first ``cfg.limit`` rows of it when set);
    settings: ``cfg.eval.metrics`` (batch_size, chunk_size, max_length,
    n_bootstrap, seed).
    """
    import torch
    from omegaconf import OmegaConf

    from ts2.data.sft import BadRow, load_conversations, tokenize_conversation
    from ts2.models import load_model, load_tokenizer

    m = cfg.eval.metrics
    src = model_source_of(source or cfg_get(cfg, "model_path"), cfg)
    tokenizer = load_tokenizer(src.model_cfg, src.path)
    max_length = int(cfg_get(m, "max_length") or src.model_cfg.get("max_length") or 2048)
    data_cfg = cfg.eval.data
    limit = cfg_get(cfg, "limit") or data_cfg.get("limit")
    rows = load_conversations(OmegaConf.merge(data_cfg, {"limit": None}))
    rows = split_rows(rows, data_cfg.get("split") or "all", int(data_cfg.get("selection_every") or 4))
    examples, ids, skipped = [], [], []
    for rid, messages in rows[: int(limit)] if limit else rows:
        try:
            examples.append(tokenize_conversation(messages, tokenizer, max_length))
            ids.append(rid)
        except BadRow as err:
            skipped.append({"id": rid, "reason": str(err)})
    if not examples:
        raise ValueError(f"heldout_ce: every held-out row was skipped ({skipped[:3]}...).")
    threads = torch.get_num_threads()
    if cfg_get(m, "num_threads"):
        torch.set_num_threads(int(cfg_get(m, "num_threads")))
    try:
        model = load_model(src.model_cfg, src.path)
        sums, counts = response_nll(
            model,
            examples,
            batch_size=int(cfg_get(m, "batch_size", 4)),
            chunk_size=int(cfg_get(m, "chunk_size", 1024)),
            pad_token_id=int(tokenizer.pad_token_id or 0),
        )
    finally:
        torch.set_num_threads(threads)
    res = summarize(
        sums, counts, ids, n_bootstrap=int(cfg_get(m, "n_bootstrap", 1000)), seed=int(cfg_get(m, "seed", 0))
    )
    res.details.update(
        {
            "model": src.info,
            "data": {
                "id": data_cfg.get("id"),
                "split": data_cfg.get("split") or "all",
                "rows": len(examples),
                "skipped": len(skipped),
            },  # fmt: skip
            "max_length": max_length,
        }
    )
    if skipped:
        res.note = f"{len(skipped)} held-out rows skipped (e.g. {skipped[0]['reason']})"
    return res
