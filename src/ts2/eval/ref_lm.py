"""Reference-LM quality score: how likely a pretrained instruct LM finds each answer (issue 19 item 2(c)).

For an answer a = (a_1..a_n) to an instruction x, under the reference LM p_ref (SmolLM2-135M-Instruct, loaded
offline from its GGUF by :mod:`ts2.models.gguf`, ``conf/model/smollm2_135m.yaml``)::

    ref_lm(x, a) = (1/n) Σ_t log p_ref(a_t | c(x), a_<t)          (nats per answer token; higher is better)

- c(x): the reference LM's *own* chat template around one user turn, [system (its default line), user: x] with
  the generation prompt, where x's tokens are cut from the left to ``context_tokens`` (a short context: the
  end of the instruction, which is what the answer follows, is kept).
- a: the answer's tokens (``tokenizer(answer)``), the first ``answer_tokens`` of them; when the answer ended by
  itself (``ended``: an EOS, not a length cut) and was not capped, the template's end-of-turn token follows it
  and is scored too, so an empty answer is scored by p_ref(end of turn | c).

Per sample this is one number; per prompt, the mean over its samples (``per_prompt``, so the score gets the
same prompt-bootstrap CI and paired comparisons as the other metrics); the metric ``ref_lm`` is the mean over
prompts. Gibberish (shuffled words, random tokens) scores far below fluent text.

Bias: a policy fine-tuned *from* the reference LM (the small scale's SmolLM2 runs) is scored by its own
ancestor, which favours answers close to the base model's; at that scale held-out CE and a validated reward
model carry quality, and this score is reported beside them, not instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ts2.eval.result import ScoreResult

_MARK = "\u2063ts2-ref-lm-instruction\u2063"


def encode_pairs(
    tokenizer: Any,
    instructions: Sequence[str],
    answers: Sequence[str],
    *,
    context_tokens: int = 128,
    answer_tokens: int = 256,
    ended: Sequence[bool] | bool = False,
) -> list[tuple[list[int], list[int]]]:
    """(context ids, scored answer ids) per pair (module doc: c(x) and a)."""
    if context_tokens < 1 or answer_tokens < 1:
        raise ValueError(f"context_tokens={context_tokens} and answer_tokens={answer_tokens} must be >= 1.")
    if len(instructions) != len(answers):
        raise ValueError(f"{len(instructions)} instructions but {len(answers)} answers.")
    ended = [ended] * len(answers) if isinstance(ended, bool) else list(ended)
    if len(ended) != len(answers):
        raise ValueError(f"ended has {len(ended)} flags for {len(answers)} answers.")
    from ts2.models.chat import end_of_turn_token

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _MARK}], tokenize=False, add_generation_prompt=True
    )
    pre, post = text.split(_MARK)

    def enc(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    pre_ids, post_ids = enc(pre), enc(post)
    eot = end_of_turn_token(tokenizer)
    eot_id = tokenizer.convert_tokens_to_ids(eot) if eot else tokenizer.eos_token_id
    out = []
    for x, a, done in zip(instructions, answers, ended, strict=True):
        if not isinstance(x, str) or not isinstance(a, str):
            raise ValueError(
                f"instructions and answers must be strings, got {type(x).__name__}/{type(a).__name__}."
            )
        ans = enc(a)
        capped = len(ans) > answer_tokens
        ans = ans[:answer_tokens]
        if done and not capped and eot_id is not None:
            ans.append(int(eot_id))
        out.append((pre_ids + enc(x)[-context_tokens:] + post_ids, ans))
    return out


def answer_logprobs(
    model: Any,
    tokenizer: Any,
    instructions: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 16,
    chunk_size: int = 2048,
    progress: bool = True,
    **encoding: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean log p_ref per scored answer token, number of scored tokens) for each (instruction, answer).

    ``encoding``: the keywords of :func:`encode_pairs` (``context_tokens``, ``answer_tokens``, ``ended``).
    The module doc's score, batched: pairs sorted by length, right-padded (real tokens never see padding and keep
    positions 0..L-1), the LM head applied to ``chunk_size`` answer positions at a time (never B x L x V logits).
    A pair with no scored token (an empty answer that did not end) gets NaN.
    """
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size={batch_size} and chunk_size={chunk_size} must be >= 1.")
    pairs = encode_pairs(tokenizer, instructions, answers, **encoding)
    sums = np.zeros(len(pairs))
    counts = np.array([len(a) for _, a in pairs], dtype=np.int64)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    model.eval()
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    with torch.no_grad():
        for idx in tqdm(batches, desc="ref-LM scoring", unit="batch", disable=not progress, mininterval=2):
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            att = torch.zeros((len(idx), width), dtype=torch.long)
            rows, cols, targets, owner = [], [], [], []
            for r, (i, s) in enumerate(zip(idx, seqs, strict=True)):
                ids[r, : len(s)] = torch.tensor(s)
                att[r, : len(s)] = 1
                start = len(pairs[i][0])
                for j, t in enumerate(pairs[i][1]):  # answer token at start + j, predicted at start + j - 1
                    rows.append(r)
                    cols.append(start + j - 1)
                    targets.append(t)
                    owner.append(i)
            if not targets:
                continue
            hidden = model.base_model(
                input_ids=ids.to(device), attention_mask=att.to(device)
            ).last_hidden_state
            h = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
            tgt = torch.tensor(targets, device=device)
            own = np.asarray(owner)
            for c in range(0, h.shape[0], chunk_size):
                logp = torch.log_softmax(head(h[c : c + chunk_size]).float(), dim=-1)
                picked = logp.gather(1, tgt[c : c + chunk_size, None]).squeeze(1)
                np.add.at(sums, own[c : c + chunk_size], picked.cpu().double().numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means, counts


def load_reference(m: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) of the reference LM named by ``eval.metrics`` (``ref_model``: a conf/model id;
    ``ref_model_path``: a folder with that model's files instead, e.g. a test copy)."""
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR
    from ts2.models import load_model, load_tokenizer, resolve_model_path

    name = str(m.get("ref_model") or "smollm2_135m")
    yaml = Path(CONF_DIR) / "model" / f"{name}.yaml"
    if not yaml.is_file():
        raise FileNotFoundError(
            f"eval.metrics.ref_model={name!r}: no {yaml} (a conf/model id, e.g. smollm2_135m)."
        )
    model_cfg = OmegaConf.to_container(OmegaConf.load(yaml), resolve=True)
    path = str(m.get("ref_model_path") or resolve_model_path(model_cfg))
    info = {"model": name, "model_path": path, "weights": model_cfg.get("provenance")}
    return load_model(model_cfg, path), load_tokenizer(model_cfg, path), info


def score(samples: list, cfg: Any) -> ScoreResult:
    """``ref_lm`` of each sample (module doc), averaged per prompt then over prompts, with a bootstrap CI.

    Settings (``cfg.eval.metrics``): ``ref_model`` / ``ref_model_path``, ``instruction_field`` (the sample field
    holding the instruction), ``context_tokens``, ``answer_tokens``, ``samples_per_prompt`` (score only the samples
    with ``sample_idx`` below it: the per-prompt mean of fewer samples, at a fraction of the cost; null: all),
    ``batch_size``, ``num_threads``, ``n_bootstrap``. An answer counts as ended when its ``finish_reason`` is ``stop`` and the benchmark has no
    stop strings (then "stop" can only be the EOS).
    """
    import torch

    from ts2.eval.stats import bootstrap_cis
    from ts2.models.source import cfg_get
    from ts2.sampling.store import group_by_prompt

    m = cfg.eval.metrics
    field = str(cfg_get(m, "instruction_field", "instruction"))
    k = cfg_get(m, "samples_per_prompt")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(
                f"eval.metrics.samples_per_prompt={k!r} must be a number >= 1, or null for all samples."
            )
        samples = [s for s in samples if s.sample_idx < k]
    missing = next((s for s in samples if not isinstance(s.fields.get(field), str)), None)
    if missing is not None:
        raise ValueError(
            f"eval={cfg.eval.id}: sample (prompt {missing.prompt_id!r}, line {missing.line}) has no string field "
            f"{field!r}; set eval.metrics.instruction_field to the field that holds the instruction."
        )
    stops = bool(cfg_get(cfg, "eval.sample.stop"))
    threads = torch.get_num_threads()
    if cfg_get(m, "num_threads"):
        torch.set_num_threads(int(cfg_get(m, "num_threads")))
    try:
        model, tokenizer, info = load_reference(m)
        means, counts = answer_logprobs(
            model,
            tokenizer,
            [s.fields[field] for s in samples],
            [s.completion for s in samples],
            context_tokens=int(cfg_get(m, "context_tokens", 128)),
            answer_tokens=int(cfg_get(m, "answer_tokens", 256)),
            ended=[s.finish_reason == "stop" and not stops for s in samples],
            batch_size=int(cfg_get(m, "batch_size", 16)),
        )
    finally:
        torch.set_num_threads(threads)
    value = {(s.prompt_id, s.sample_idx): float(v) for s, v in zip(samples, means, strict=True)}
    by = group_by_prompt(samples)
    ids = list(by)
    per_prompt = []
    for pid in ids:
        vals = [value[(pid, s.sample_idx)] for s in by[pid]]
        if all(np.isnan(vals)):
            raise ValueError(f"eval={cfg.eval.id}: prompt {pid!r} has only empty answers: nothing to score.")
        per_prompt.append(float(np.nanmean(vals)))
    empty = int(np.isnan(means).sum())
    return ScoreResult(
        metrics={"ref_lm": float(np.mean(per_prompt))},
        num_prompts=len(ids),
        num_samples=len(samples),
        complete=True,
        ci=bootstrap_cis({"ref_lm": per_prompt}, n_resamples=int(cfg_get(m, "n_bootstrap", 1000))),
        per_prompt={"ref_lm": per_prompt},
        prompt_ids=ids,
        details={
            "reference_lm": info,
            "unit": "mean log p_ref per answer token (nats; higher is better)",
            "scored_tokens": int(counts.sum()),
            "ref_lm_token": float(np.nansum(means * counts) / max(int(counts.sum()), 1)),
            "empty_unscored_answers": empty,
            "settings": {
                key: cfg_get(m, key)
                for key in ("context_tokens", "answer_tokens", "samples_per_prompt", "instruction_field")
            },
        },
        note=f"{empty} empty answers not scored" if empty else None,
    )
