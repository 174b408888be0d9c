"""TSPD meter: does a trained model keep the head of its distribution and suppress the tail?

The target property of TS² (ICLR 2026 poster; PAPER.md §1, "TSPD"). For a token with next-token
distribution p = softmax(z) (the *sampling* distribution: TS² samples with softmax) and label y, with
Top_m(p) the m largest entries:

    S := Top_m(p)                 if y is in Top_m(p)
         Top_{m-1}(p) ∪ {y}       otherwise
    head preservation  head@m = min_{j in S} p_j           (the poster wants it >= eps_head)
    tail mass          tail@m = sum_{j not in S} p_j       (the poster wants it <= eps_tail)

The paper's m and epsilons are not public, so the meter reports m in {2, 5, 10} and the whole
distribution of each quantity over tokens (mean and the 5/25/50/75/95% quantiles), not a pass/fail.
Alongside: the sparsemax support size |S_spm(z)| (PAPER.md §1: k* = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)})
and the softmax entropy H(p) = -sum_j p_j log p_j (nats).

Ties: y counts as inside Top_m(p) when fewer than m entries are strictly larger than p_y, so
head@m = p_(m) (the m-th largest probability) when y is in Top_m, and p_y otherwise (p_y <= p_(m) <= p_(m-1));
tail@m = 1 - sum_{j in S} p_j, computed as the sum over the complement (no cancellation).

Tokens: the assistant tokens of held-out SFT rows (``<data_dir>/ultrafeedback/*eval200.jsonl`` by default),
rendered and labelled by the repo's pipeline :func:`ts2.data.build_sft_dataset`. The model's hidden states
are computed per batch and the LM head is applied to ``chunk_size`` response positions at a time, so no
N x V logits tensor is ever held; only the per-token scalars are kept.

Commands (``python -m ts2.evaluate`` with ``eval=tspd``; ``eval.sample.limit=N``: the first N held-out rows)::

    python -m ts2.evaluate "run_dir='runs/train/method=ts2'" eval=tspd     # -> <run_dir>/metrics/tspd.json
    python -m ts2.evaluate eval=tspd model=tiny metrics_dir=/tmp/m eval.sample.limit=8
    python -m ts2.evaluate eval=tspd model_path=/ckpt/llama-ts2 model=llama31_8b metrics_dir=...

:func:`score` returns a :class:`ts2.eval.result.ScoreResult` (``metrics.scorer`` of conf/eval/tspd.yaml);
:func:`tspd_table` and the ``tspd`` figure (:func:`ts2.analysis.figures.tspd`) turn several runs' ``tspd.json``
into the per-method table and figure.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ts2.eval.heldout_ce import response_hidden_states
from ts2.eval.result import ScoreResult
from ts2.eval.stats import ratio_ci
from ts2.models.source import cfg_get, model_source_of

DEFAULT_MS: tuple[int, ...] = (2, 5, 10)
DEFAULT_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


def quantity_names(ms: Sequence[int] = DEFAULT_MS) -> list[str]:
    """Per-token quantities, in table order: head@m, tail@m for each m, then support and entropy."""
    return [f"{q}@{m}" for m in ms for q in ("head", "tail")] + ["support", "entropy"]


# ----------------------------------------------------------------------------------------------------
# Per-token maths


def sparsemax_support_size(z: Tensor) -> Tensor:
    """|S| of sparsemax(z) along the last dim: ``k* = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}`` (PAPER.md §1).

    z [n, V] float -> [n] int64. Exact. Since tau >= z_max - 1, the support lies inside
    {i : z_i > z_max - 1}; only the top-c logits of each row are sorted (c = the largest such count in
    the chunk), and the condition is evaluated on them (it holds exactly for k <= k*, so k* is found as long
    as the whole support is among them). -inf logits never enter the support.
    """
    if z.dim() != 2 or z.shape[-1] == 0:
        raise ValueError(f"sparsemax_support_size needs logits [n, V] with V >= 1, got {tuple(z.shape)}")
    z = z.float() if z.dtype != torch.float64 else z
    zs = z - z.amax(dim=-1, keepdim=True)  # shifted: max 0, support inside {zs > -1}
    c = int((zs > -1.0).sum(dim=-1).max().item()) if z.shape[0] else 1
    top = zs.topk(min(max(c, 1), z.shape[-1]), dim=-1, sorted=True).values
    k = torch.arange(1, top.shape[-1] + 1, device=z.device, dtype=top.dtype)
    return (1.0 + k * top > top.cumsum(dim=-1)).sum(dim=-1).clamp_min(1)


def token_stats(logits: Tensor, labels: Tensor, ms: Sequence[int] = DEFAULT_MS) -> dict[str, Tensor]:
    """The TSPD quantities of each token (module docstring) from its logits.

    logits [n, V] (any float dtype; computed in fp32, fp64 stays fp64), labels [n] in [0, V) ->
    ``{"head@m": [n], "tail@m": [n] for m in ms, "support": [n] (float), "entropy": [n] (nats)}``.
    """
    if logits.dim() != 2:
        raise ValueError(f"token_stats: logits must be [n, V], got shape {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"token_stats: labels must be [n] matching logits [n, V], got {tuple(labels.shape)} "
            f"for logits {tuple(logits.shape)}"
        )
    n, vocab = logits.shape
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
        raise ValueError(
            f"token_stats: labels must lie in [0, {vocab}), got range [{int(labels.min())}, {int(labels.max())}]"
        )
    ms = list(ms)
    if not ms or any((not isinstance(m, int)) or m < 1 or m > vocab for m in ms):
        raise ValueError(f"token_stats: every m must be an int in [1, V={vocab}], got {ms}")
    z = logits.double() if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    out: dict[str, Tensor] = {}
    p_y = p.gather(1, labels.unsqueeze(1)).squeeze(1)
    n_above = (p > p_y.unsqueeze(1)).sum(dim=1)  # entries strictly more likely than y
    top_v, top_i = p.topk(max(ms), dim=-1, sorted=True)
    for m in ms:
        inside = n_above < m
        head = torch.where(inside, top_v[:, m - 1], p_y)
        # S as index sets: top-m when y is inside, else top-(m-1) plus y.
        s_idx = top_i[:, :m].clone()
        s_idx[:, m - 1] = torch.where(inside, top_i[:, m - 1], labels)
        tail = p.scatter(1, s_idx, 0.0).sum(dim=-1)
        out[f"head@{m}"], out[f"tail@{m}"] = head, tail
    out["support"] = sparsemax_support_size(z).to(z.dtype)
    out["entropy"] = -torch.special.xlogy(p, p).sum(dim=-1)  # 0 log 0 = 0 (masked -inf logits)
    return {k: out[k] for k in quantity_names(ms)}


# ----------------------------------------------------------------------------------------------------
# Streaming over a model


class TSPDAccumulator:
    """Collects per-token quantities chunk by chunk (only scalars per token, never logits)."""

    def __init__(self, ms: Sequence[int] = DEFAULT_MS) -> None:
        self.ms = tuple(ms)
        self.values: dict[str, list[np.ndarray]] = {k: [] for k in quantity_names(self.ms)}
        self.prompt: list[np.ndarray] = []

    def add(self, logits: Tensor, labels: Tensor, prompt_index: Tensor | np.ndarray | int) -> None:
        stats = token_stats(logits, labels, self.ms)
        for k, v in stats.items():
            self.values[k].append(v.detach().double().cpu().numpy())
        idx = np.broadcast_to(np.asarray(prompt_index, dtype=np.int64), (labels.shape[0],))
        self.prompt.append(np.array(idx))

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self.values.items()}
        return cat, (np.concatenate(self.prompt) if self.prompt else np.zeros(0, dtype=np.int64))


def _logits_fn(model: Any):
    """hidden [n, d] -> logits [n, V] with the model's own LM head (and final soft-capping, if any)."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def fn(h: Tensor) -> Tensor:
        z = head(h)
        if cap:
            z = torch.tanh(z / cap) * cap
        return z

    return fn


@torch.no_grad()
def stream_model_stats(
    model: Any,
    examples: Sequence[dict[str, list[int]]],
    *,
    ms: Sequence[int] = DEFAULT_MS,
    batch_size: int = 4,
    chunk_size: int = 1024,
    pad_token_id: int = 0,
    device: str | torch.device = "cpu",
) -> TSPDAccumulator:
    """Run the model over tokenised SFT examples and accumulate the TSPD quantities of every response token.

    examples: ``{"input_ids", "attention_mask", "labels"}`` lists (as :func:`ts2.data.build_sft_dataset`
    gives); the token at position t+1 is predicted from the hidden state at t. Batches are right-padded;
    the LM head is applied to at most ``chunk_size`` response positions at once.
    """
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    logits_of = _logits_fn(model)
    acc = TSPDAccumulator(ms)
    batches = response_hidden_states(
        model, examples, batch_size=batch_size, pad_token_id=pad_token_id, device=device
    )
    for h, targets, owner in batches:
        for c in range(0, h.shape[0], chunk_size):
            acc.add(logits_of(h[c : c + chunk_size]), targets[c : c + chunk_size], owner[c : c + chunk_size])
    return acc


# ----------------------------------------------------------------------------------------------------
# Summaries


def summarize(
    values: dict[str, np.ndarray],
    prompt_index: np.ndarray,
    *,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> ScoreResult:
    """Per-token values -> ScoreResult: for each quantity ``<q>/mean`` (over all tokens) and
    ``<q>/q05 ... <q>/q95`` (numpy's linear quantiles over tokens); ``ci`` of each mean by a bootstrap over
    prompts; ``details["per_prompt_mean"]`` the per-prompt token means (for paired comparisons)."""
    if any(not 0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
    n_tok = len(prompt_index)
    if n_tok == 0:
        raise ValueError("TSPD: no response tokens to measure (empty data or every answer truncated).")
    prompts, inverse, counts = np.unique(prompt_index, return_inverse=True, return_counts=True)
    metrics: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    per_prompt_mean: dict[str, list[float]] = {}
    for name, v in values.items():
        if len(v) != n_tok:
            raise ValueError(f"TSPD: quantity {name!r} has {len(v)} values for {n_tok} tokens")
        metrics[f"{name}/mean"] = float(v.mean())
        for q, x in zip(quantiles, np.quantile(v, list(quantiles)), strict=True):
            metrics[f"{name}/q{round(q * 100):02d}"] = float(x)
        sums = np.bincount(inverse, weights=v, minlength=len(prompts))
        ci[f"{name}/mean"] = (
            ratio_ci(sums, counts, n_resamples=n_bootstrap, seed=seed)
            if len(sums) >= 2 and n_bootstrap >= 1
            else (math.nan, math.nan)
        )
        per_prompt_mean[name] = (sums / counts).tolist()
    details = {
        "num_tokens": int(n_tok),
        "prompt_index": prompts.tolist(),
        "tokens_per_prompt": counts.tolist(),
        "per_prompt_mean": per_prompt_mean,
        "quantiles": list(quantiles),
        "ci_method": f"percentile bootstrap over prompts (ratio of token sums), {n_bootstrap} resamples",
    }
    return ScoreResult(
        metrics=metrics,
        num_prompts=int(len(prompts)),
        num_samples=int(n_tok),
        complete=True,
        ci=ci,
        details=details,
    )


# ----------------------------------------------------------------------------------------------------
# Model + data -> result


def score(source: str | Path | None, cfg: Any) -> ScoreResult:
    """TSPD of one model on the held-out SFT tokens of ``cfg.eval.data`` -> ScoreResult.

    ``source``: a training run folder (its ``model/``); None: ``cfg.model_path`` (a model folder / hub id),
    else ``cfg.model`` (e.g. the tiny config). Settings: ``cfg.eval.metrics`` (ms, quantiles, batch_size,
    chunk_size, max_length, n_bootstrap, seed, device) and ``cfg.limit`` (first N held-out rows).
    """
    from ts2.data import build_sft_dataset
    from ts2.models import load_model, load_tokenizer

    m = cfg.eval.metrics
    src = model_source_of(source or cfg_get(cfg, "model_path"), cfg)
    tokenizer = load_tokenizer(src.model_cfg, src.path)
    max_length = cfg_get(m, "max_length") or src.model_cfg.get("max_length") or 2048
    data_cfg = cfg.eval.data
    limit = cfg_get(cfg, "limit")
    if limit:
        from omegaconf import OmegaConf

        data_cfg = OmegaConf.merge(data_cfg, {"limit": int(limit)})
    data = build_sft_dataset(data_cfg, tokenizer, int(max_length))
    device = cfg_get(m, "device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(src.model_cfg, src.path).to(device)
    ms = [int(x) for x in cfg_get(m, "ms", DEFAULT_MS)]
    acc = stream_model_stats(
        model,
        data.examples,
        ms=ms,
        batch_size=int(cfg_get(m, "batch_size", 4)),
        chunk_size=int(cfg_get(m, "chunk_size", 1024)),
        pad_token_id=int(tokenizer.pad_token_id or 0),
        device=device,
    )
    values, owner = acc.arrays()
    res = summarize(
        values,
        owner,
        quantiles=[float(q) for q in cfg_get(m, "quantiles", DEFAULT_QUANTILES)],
        n_bootstrap=int(cfg_get(m, "n_bootstrap", 1000)),
        seed=int(cfg_get(m, "seed", 0)),
    )
    res.details.update(
        {
            "ms": ms,
            "model": src.info,
            "data": {"id": data_cfg.get("id"), "rows": len(data.examples), "skipped": len(data.skipped)},
            "max_length": int(max_length),
            "definition": "PAPER.md §1 TSPD: S = Top_m(p) if y in it else Top_{m-1}(p) ∪ {y}; "
            "head@m = min_{j in S} p_j, tail@m = sum_{j not in S} p_j, p = softmax(logits)",
        }
    )
    if data.skipped:
        res.note = f"{len(data.skipped)} held-out rows skipped ({data.skip_counts})"
    return res


def _scale(info: dict[str, Any]) -> str:
    """The scale label of the measured model: conf/model/<id>.yaml ``scale:`` if present, else by id."""
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR

    mid = info.get("model")
    f = Path(CONF_DIR) / "model" / f"{mid}.yaml"
    if mid and f.is_file():
        s = OmegaConf.load(f).get("scale")
        if s:
            return str(s)
    if mid and str(mid).startswith("tiny"):
        return "tiny"
    return "paper" if mid in ("llama31_8b", "qwen2_7b") else "unspecified"


def write_metrics(res: ScoreResult, cfg: Any, dest: str | Path) -> Path:
    """Write ``dest`` (``<run>/metrics/tspd.json``) in the metrics-file format, atomically."""
    from omegaconf import OmegaConf

    from ts2.provenance import git_sha

    out = {
        "benchmark": "tspd",
        "scale": _scale(res.details.get("model", {})),
        "complete": res.complete,
        "metrics": res.metrics,
        "num_prompts": res.num_prompts,
        "num_samples": res.num_samples,
        "ci": {k: list(v) for k, v in res.ci.items()},
        "per_prompt": res.per_prompt,
        "prompt_ids": res.prompt_ids,
        "note": res.note,
        "details": res.details,
        "config": OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else None,
        "git_sha": git_sha(),
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=float))
    os.replace(tmp, dest)
    return dest


# ----------------------------------------------------------------------------------------------------
# Table over runs


def load_tspd(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read ``tspd.json`` files (or run folders holding ``metrics/tspd.json``); label each by its method."""
    rows = []
    for p in paths:
        p = Path(p)
        f = p / "metrics" / "tspd.json" if p.is_dir() else p
        if not f.is_file():
            raise FileNotFoundError(
                f"No TSPD metrics file {f}: run `python -m ts2.evaluate run_dir=... eval=tspd` first."
            )
        d = json.loads(f.read_text())
        if d.get("benchmark") != "tspd" or "metrics" not in d:
            raise ValueError(f"{f} is not a TSPD metrics file (benchmark={d.get('benchmark')!r}).")
        info = (d.get("details") or {}).get("model") or {}
        d["_label"] = info.get("method") or info.get("model") or f.parent.parent.name
        rows.append(d)
    return rows


def tspd_table(paths: Iterable[str | Path], *, ms: Sequence[int] | None = None, stat: str = "q50") -> str:
    """Markdown table: one row per run (method), for each quantity ``mean [95% CI]`` and the median
    (or ``stat``) with the 5-95% range."""
    rows = load_tspd(paths)
    if not rows:
        raise ValueError("tspd_table: no runs given")
    ms = list(ms or rows[0]["details"].get("ms", DEFAULT_MS))
    names = quantity_names(ms)
    header = "| method | scale | tokens | " + " | ".join(names) + " |"
    lines = [
        f"TSPD on held-out SFT tokens: each cell is mean [95% CI over prompts]; {stat} (q05–q95).",
        "",
        header,
        "|" + "---|" * (3 + len(names)),
    ]
    for d in rows:
        met, ci = d["metrics"], d.get("ci", {})
        cells = []
        for n in names:
            lo, hi = (math.nan if x is None else x for x in ci.get(f"{n}/mean") or (None, None))
            fmt = "{:.0f}" if n == "support" else "{:.3g}"
            cells.append(
                f"{met[f'{n}/mean']:.3g} [{lo:.3g}, {hi:.3g}]; "
                + fmt.format(met[f"{n}/{stat}"])
                + f" ({met[f'{n}/q05']:.3g}–{met[f'{n}/q95']:.3g})"
            )
        lines.append(
            f"| {d['_label']} | {d.get('scale')} | {d.get('num_samples')} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"
