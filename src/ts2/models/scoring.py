"""Score token sequences with a scalar sequence-classification model (the reward models of PAPER.md §4).

A reward model is an ``AutoModelForSequenceClassification`` with one output: reward r(x, y) = w · h_t, the score
head applied to the last hidden state at one read position t. The conversation [user: x, assistant: y] is
rendered with the *RM tokenizer's* chat template (:func:`render_ids`); the read position is the last token.

Read-position quirk (official code): the template is applied with ``add_generation_prompt=True``, so an empty
assistant header follows the response's ``<|eot_id|>`` and the score is read at the last token of that header.
``quirk=False`` reads at the last token of the response turn instead.

Padding: transformers' ``GenericForSequenceClassification`` reads the logit at the *rightmost token whose id
differs from* ``config.pad_token_id``. We right-pad, so real tokens never attend to padding and keep positions
0..L-1 (identical to an unpadded forward), and choose the pad id per batch so that it never equals a row's last
real token (:func:`_safe_pad_id`).

Used by the tiny RM's training/evaluation (:mod:`ts2.models.tiny_rm`) and by the scorer of
:mod:`ts2.models.reward_model`, so both read the same position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def render_ids(tokenizer: Any, user: str, response: str, *, quirk: bool) -> list[int]:
    """Token ids of [user, assistant: response] under the tokenizer's chat template.

    ``quirk=True`` appends the empty assistant header (``add_generation_prompt=True``), as the paper's code does.
    The template already holds the BOS token, so the text is tokenized without added special tokens.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"RM tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template.")
    conv = [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=quirk)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _safe_pad_id(preferred: int | None, last_tokens: set[int], vocab_size: int) -> int:
    """A pad id that is no row's last real token (else the model would read one position too early)."""
    if preferred is not None and preferred not in last_tokens:
        return int(preferred)
    for cand in range(vocab_size):
        if cand not in last_tokens:
            return cand
    raise ValueError("No usable pad id: every vocabulary id ends some sequence in the batch.")


@torch.no_grad()
def score_token_sequences(
    model: Any,
    seqs: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    pad_id: int | None = None,
    desc: str = "RM scoring",
    progress: bool = True,
    pooling: str = "last",
) -> np.ndarray:
    """Score each token sequence with a sequence-classification model (num_labels=1): the logit at its last token
    (``pooling="last"``), or the mean over its tokens of the score head applied at each (``"mean"``, the reward of
    the mean-pooled feature, as the head is linear: :mod:`ts2.models.feature_rm`).

    Rows are length-sorted (longest first, so memory problems show at once), right-padded, and batched; results
    come back in input order as float64.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}.")
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"Sequence {i} is empty: nothing to score.")
    text_cfg = model.config.get_text_config()
    preferred = pad_id if pad_id is not None else text_cfg.pad_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = np.empty(len(seqs), dtype=np.float64)
    saved = text_cfg.pad_token_id
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            rows = [list(seqs[i]) for i in idx]
            width = max(len(r) for r in rows)
            pid = _safe_pad_id(preferred, {r[-1] for r in rows}, int(text_cfg.vocab_size))
            ids = torch.full((len(rows), width), pid, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[j, : len(r)] = 1
            text_cfg.pad_token_id = pid  # the model finds the read position from it
            if pooling == "mean":
                out[idx] = _mean_pooled(model, ids.to(device), mask.to(device))
                continue
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            if logits.shape[-1] != 1:
                raise ValueError(f"Reward model returns {logits.shape[-1]} logits per sequence; expected 1.")
            out[idx] = logits[:, 0].float().cpu().numpy()
    finally:
        text_cfg.pad_token_id = saved
    return out


def _mean_pooled(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Mean over the real tokens of ``score(h_t)`` (the decoder's last hidden states, the linear score head)."""
    head = getattr(model, "score", None)
    if head is None or getattr(head, "out_features", 1) != 1:
        raise ValueError(
            f"pooling='mean' needs a single-output `score` head; {type(model).__name__} has none."
        )
    hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    per_token = head(hidden)[..., 0].float()
    m = mask.to(per_token.dtype)
    return ((per_token * m).sum(1) / m.sum(1)).cpu().numpy()


def _tensor_digest(h: Any, t: torch.Tensor, limit: int = 1 << 16) -> None:
    flat = t.detach().reshape(-1)
    h.update(str(tuple(t.shape)).encode())
    h.update(flat[:limit].float().cpu().numpy().tobytes())
    h.update(flat[-limit:].float().cpu().numpy().tobytes())
