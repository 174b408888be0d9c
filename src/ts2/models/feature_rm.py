"""The small scale's judge: a Bradley–Terry linear head on the frozen features of SmolLM2-135M-Instruct.

The paper's judge is an 8B sequence classifier (``FsfairX-LLaMA3-RM``, PAPER.md §4). At the small scale (issue 20)
the judge is built from the policies' own base model, offline and in minutes on a CPU: the backbone stays frozen
and only a linear reward ``r(x, y) = w · f(x, y)`` is fitted, where ``f`` is a feature of the conversation
[user: x, assistant: y] rendered with the backbone's own chat template (SmolLM2's ChatML, :func:`render_ids`, the
same rendering as every other stage), its last ``max_length`` tokens kept (the response end):

* ``layer``: the hidden state after the first ``layer`` decoder layers, passed through the model's final norm
  (``None``: all layers). The served RM *is* that truncated model (the GGUF's first ``layer`` layers,
  :mod:`ts2.models.gguf`), so a lower layer is also a cheaper judge.
* ``pooling``: ``last``, the state at the read position (the last token; ``quirk`` appends the empty assistant
  header first, as the paper's scorer reads, else the end of the answer's turn: ChatML's ``<|im_end|>\n``), or ``mean``, the mean over every
  token of the kept window.

Fit (Bradley–Terry, ``P(chosen ≻ rejected) = σ(r_c − r_r)``, Bradley & Terry 1952): with ``d_i = f(x_i, y_c) −
f(x_i, y_r)`` scaled per feature by its root mean square over the training pairs (``s``), minimise the
L2-regularised logistic loss without intercept (a BT model has none)

    L(w) = (1/n) Σ_i log(1 + exp(−w · d_i / s)) + (l2 / 2) ||w||²

by Newton's method in float64 (:func:`fit_bradley_terry`; convex, so the minimum is unique). The reward head is
``w / s``, saved as the ``score`` weight of a ``LlamaForSequenceClassification`` (no bias: a constant would cancel
in every comparison) on top of the truncated backbone, so the RM plugs into :class:`ts2.models.reward_model.
RewardScorer` like any other (``conf/rm/smollm2_bt.yaml``; ``pooling`` there must match).

Data (``<data_dir>/ultrafeedback``, :func:`ts2.models.tiny_rm.load_pairs`; identical chosen/rejected pairs are
skipped): training = the first ``max_train_pairs`` pairs of the train file; ``rm_eval.json`` reports the pairwise
accuracy (ties ½) with its 95% Wilson interval on the held-out eval file only (``eval200``, disjoint from
training). Pairs from :data:`SELECTION_FROM` on in the train file are the judge-selection split
(``experiments/judge_selection``), which training never reaches while ``max_train_pairs <= SELECTION_FROM``.

Cost: the backbone's forward over the pairs (2 sequences of <= ``max_length`` tokens each): at 192 tokens, 600
training and 199 held-out pairs 216 k + 72 k = 0.29 M tokens (counted), ~4.3 min of SmolLM2 forward at the
idle 2-core rate of ~1,100 tokens/s (ENVIRONMENT.md), less with ``layer`` < 30 (x layer/30); the fit takes a second. Cached in
``<cache_dir>/models/<name>-<fingerprint>`` (the spec and the backbone's GGUF sha256).

    python -m ts2.models.feature_rm [--set KEY=VALUE ...]      # build (or find) it; prints folder and accuracy
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ts2.models.tiny_rm import Pair, load_pairs, pairwise_accuracy, settings_from_args

POOLINGS = ("last", "mean")
SELECTION_FROM = 800
"""Pairs ``[SELECTION_FROM:]`` of the train file (file order, identical pairs skipped) are the judge-selection split
of both scales (experiments/judge_selection); the held-out split is the eval file."""


@dataclass(frozen=True)
class FeatureRMSpec:
    """Everything that determines the BT-head RM; each distinct spec (and backbone sha256) is its own folder."""

    name: str = "smollm2-bt"
    backbone: str = "smollm2_135m"  # conf/model/<id>.yaml with a gguf: block (the weights and their sha256)
    layer: int | None = None  # features after this many decoder layers (+ final norm); None: every layer
    pooling: str = "last"  # last | mean
    # read after an appended empty assistant header (the paper's position), or at the end of the answer's turn
    quirk: bool = False
    max_length: int = 192  # the last max_length tokens of each rendered conversation
    l2: float = 1e-2  # L2 strength on the standardised weights
    train_glob: str = "ultrafeedback/*train*.jsonl"
    eval_glob: str = "ultrafeedback/*eval200.jsonl"
    max_train_pairs: int | None = 600
    max_eval_pairs: int | None = None
    batch_size: int = 16  # sequences per forward
    version: int = 1

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"rm.bt.pooling={self.pooling!r}: use one of {', '.join(POOLINGS)}.")
        if self.layer is not None and int(self.layer) < 1:
            raise ValueError(f"rm.bt.layer={self.layer}: a number of decoder layers >= 1, or null for all.")
        if int(self.max_length) < 8 or int(self.batch_size) < 1:
            raise ValueError(
                f"rm.bt: max_length >= 8 and batch_size >= 1, got {self.max_length}, {self.batch_size}."
            )
        if float(self.l2) <= 0:
            raise ValueError(f"rm.bt.l2={self.l2}: must be > 0 (the fit has no unique minimum without it).")
        if (
            self.max_train_pairs is not None
            and self.max_train_pairs > SELECTION_FROM
            and "train" in self.train_glob
        ):
            raise ValueError(
                f"rm.bt.max_train_pairs={self.max_train_pairs} would train on the judge-selection pairs (from "
                f"{SELECTION_FROM} on): use at most {SELECTION_FROM}."
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FeatureRMSpec:
        from ts2.models.tiny import spec_from_dict

        return spec_from_dict(cls, d, "rm.bt (FeatureRMSpec)")

    def gguf(self) -> Any:
        """The backbone's :class:`~ts2.models.gguf.GGUFSpec`, cut to ``layer`` layers."""
        from omegaconf import OmegaConf

        from ts2.conf import CONF_DIR
        from ts2.models.gguf import GGUFSpec

        path = Path(CONF_DIR) / "model" / f"{self.backbone}.yaml"
        cfg = OmegaConf.load(path) if path.is_file() else None
        if cfg is None or cfg.get("gguf") is None:
            raise ValueError(
                f"rm.bt.backbone={self.backbone!r}: needs conf/model/{self.backbone}.yaml with a gguf: block."
            )
        return GGUFSpec(**{**OmegaConf.to_container(cfg.gguf), "num_hidden_layers": self.layer})

    def fingerprint(self) -> str:
        """sha256[:10] of the spec and the backbone's GGUF sha256 (a new GGUF gives a new folder)."""
        blob = {**asdict(self), "gguf_sha256": self.gguf().sha256}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------ features
def encode(tokenizer: Any, pairs: Sequence[Pair], *, quirk: bool, max_length: int) -> list[list[int]]:
    """[chosen, rejected] token ids of every pair, rendered as :class:`RewardScorer` renders them (user turn = the
    instruction) and cut to their last ``max_length`` tokens."""
    from ts2.models.scoring import render_ids

    return [render_ids(tokenizer, p, y, quirk=quirk)[-max_length:] for p, c, r in pairs for y in (c, r)]


def sequence_features(
    body: Any,
    seqs: Sequence[Sequence[int]],
    *,
    layers: Iterable[int],
    poolings: Iterable[str] = POOLINGS,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[tuple[int, str], np.ndarray]:
    """``{(layer, pooling): [len(seqs), d]}``: the normed hidden state after ``layer`` decoder layers of a decoder
    ``body`` (``LlamaModel``: ``layers``, ``norm``), read at the last token or averaged over the sequence.

    One forward per batch serves every layer (forward hooks on the decoder layers), so a candidate layer costs
    nothing extra. ``norm(h_layer)`` is what the ``layer``-layer truncated model returns as its last hidden state.
    """
    import torch
    from tqdm.auto import tqdm

    layers, poolings = sorted(set(layers)), list(poolings)
    if not layers or layers[0] < 1 or layers[-1] > len(body.layers):
        raise ValueError(f"layers {layers} must lie in 1..{len(body.layers)}.")
    captured: dict[int, Any] = {}

    def hook(i: int) -> Any:
        def keep(_module: Any, _args: Any, out: Any) -> None:
            captured[i] = out[0] if isinstance(out, tuple) else out

        return keep

    handles = [body.layers[i - 1].register_forward_hook(hook(i)) for i in layers]
    out = {(k, p): np.empty((len(seqs), body.config.hidden_size)) for k in layers for p in poolings}
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    body.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc="features", disable=not progress):
                idx = order[start : start + batch_size]
                width = max(len(seqs[i]) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for j, i in enumerate(idx):
                    ids[j, : len(seqs[i])] = torch.tensor(list(seqs[i]))
                    mask[j, : len(seqs[i])] = 1
                body(input_ids=ids, attention_mask=mask, use_cache=False)
                last = mask.sum(1) - 1
                m = mask.unsqueeze(-1).to(torch.float32)
                for k in layers:
                    h = body.norm(captured[k]).float()
                    if "last" in poolings:
                        out[(k, "last")][idx] = h[torch.arange(len(idx)), last].double().numpy()
                    if "mean" in poolings:
                        out[(k, "mean")][idx] = ((h * m).sum(1) / m.sum(1)).double().numpy()
    finally:
        for handle in handles:
            handle.remove()
    return out


# ------------------------------------------------------------------------------------------------------ fit
@dataclass(frozen=True)
class BTHead:
    """The fitted reward direction: ``r(f) = weight · f`` (``weight`` = w / s of the module docstring)."""

    weight: np.ndarray  # [d], float64
    scale: np.ndarray  # s: per-feature RMS of the training differences
    l2: float
    newton_steps: int
    train_loss: float  # L(w) at the optimum

    def rewards(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight


def fit_bradley_terry(diffs: np.ndarray, l2: float, *, tol: float = 1e-10, max_steps: int = 50) -> BTHead:
    """Minimise L(w) of the module docstring over the pair differences ``diffs`` [n, d] (chosen − rejected).

    Newton's method: g = −(1/n) Σ σ(−m_i) z_i + l2·w, H = (1/n) Σ σ(m_i) σ(−m_i) z_i z_iᵀ + l2·I with margins
    m_i = w · z_i, z = d / s; the step is halved until L falls enough (Armijo backtracking: near-separable data,
    576 features for 600 pairs, makes full Newton steps overshoot); stops when ||g||∞ < tol. L is strictly convex
    for l2 > 0, so H is positive definite and the minimum unique.
    """

    def expit(t: np.ndarray) -> np.ndarray:  # σ(t) = exp(−log(1 + e^{−t})), stable for both signs
        return np.exp(-np.logaddexp(0.0, -t))

    x = np.asarray(diffs, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"fit_bradley_terry needs [n, d] differences, got shape {x.shape}.")
    scale = np.sqrt((x * x).mean(axis=0))
    scale[scale == 0] = 1.0
    z = x / scale
    n, d = z.shape

    def objective(v: np.ndarray) -> float:
        return float(np.mean(np.logaddexp(0.0, -(z @ v))) + 0.5 * l2 * (v @ v))

    w = np.zeros(d)
    loss = objective(w)
    for step in range(1, max_steps + 1):  # noqa: B007 (the count is reported)
        m = z @ w
        g = -(z.T @ expit(-m)) / n + l2 * w
        if np.abs(g).max() < tol:
            break
        h = (z.T * (expit(m) * expit(-m))) @ z / n + l2 * np.eye(d)
        direction = np.linalg.solve(h, g)
        t = 1.0
        while (new := objective(w - t * direction)) > loss - 1e-4 * t * (g @ direction) and t > 1e-12:
            t /= 2
        w, loss = w - t * direction, new
    else:
        raise RuntimeError(f"fit_bradley_terry: no convergence in {max_steps} Newton steps (l2={l2}).")
    return BTHead(weight=w / scale, scale=scale, l2=float(l2), newton_steps=step, train_loss=loss)


def accuracy_report(head: BTHead, feats: np.ndarray) -> dict[str, Any]:
    """Pairwise accuracy (ties ½) of ``head`` on [chosen, rejected] features interleaved [2n, d], Wilson 95% CI."""
    from ts2.eval.stats import wilson_interval

    r = head.rewards(feats)
    acc = pairwise_accuracy(r[0::2].tolist(), r[1::2].tolist())
    n = len(r) // 2
    return {"pairwise_accuracy": acc, "pairwise_accuracy_ci95": wilson_interval(acc * n, n), "num_pairs": n}


# ---------------------------------------------------------------------------------------------------- build
def load_backbone(spec: FeatureRMSpec) -> tuple[Any, Any, Path]:
    """(decoder body ``LlamaModel`` cut to ``spec.layer`` layers, its tokenizer, its folder), fp32, eval mode."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ts2.models.gguf import build_gguf_model

    folder = build_gguf_model(spec.gguf())
    tok = AutoTokenizer.from_pretrained(folder)
    body = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return body, tok, folder


def rm_folder(spec: FeatureRMSpec) -> Path:
    from ts2.paths import cache_dir

    return cache_dir() / "models" / f"{spec.name}-{spec.fingerprint()}"


def _write_rm(dest: Path, body: Any, tok: Any, head: BTHead) -> None:
    """``LlamaForSequenceClassification`` = the backbone + ``score.weight = head.weight``, saved with the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = body.config.to_dict()
    for k in ("_name_or_path", "architectures", "quantization_config", "id2label", "label2id"):
        cfg.pop(k, None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = AutoConfig.for_model(**{**cfg, "num_labels": 1, "pad_token_id": pad})
    rm = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    rm.model.load_state_dict(body.state_dict(), strict=True)
    with torch.no_grad():
        rm.score.weight.copy_(torch.from_numpy(head.weight).to(torch.float32).unsqueeze(0))
    rm.save_pretrained(dest)
    tok.save_pretrained(dest)


def build_feature_rm(
    spec: FeatureRMSpec | None = None, *, force: bool = False, progress: bool = False
) -> Path:
    """Fit (or find in the cache) the BT-head RM of ``spec``; its folder holds the model, tokenizer,
    ``rm_build.json`` (spec, fit) and ``rm_eval.json`` (held-out pairwise accuracy, Wilson 95% CI)."""
    from ts2.paths import atomic_dir

    spec = spec or FeatureRMSpec()
    target = rm_folder(spec)
    if (target / "rm_eval.json").is_file() and not force:
        return target
    logging.getLogger("ts2.feature_rm").info(
        "building the small-scale reward model once (a Bradley-Terry head on frozen SmolLM2 features of <= %s "
        "training pairs; about 4 min of SmolLM2 forward on 2 CPU cores for the default spec), cached in %s for "
        "every later run",
        spec.max_train_pairs,
        target,
    )
    t0 = time.perf_counter()
    body, tok, folder = load_backbone(spec)
    layer = len(body.layers)
    train_pairs, train_skipped = load_pairs(spec.train_glob, spec.max_train_pairs)
    eval_pairs, eval_skipped = load_pairs(spec.eval_glob, spec.max_eval_pairs)
    overlap = {p for p, _, _ in train_pairs} & {p for p, _, _ in eval_pairs}
    if overlap:
        raise ValueError(f"rm.bt: {len(overlap)} held-out prompts also occur in training ({spec.eval_glob}).")
    seqs = {
        split: encode(tok, pairs, quirk=spec.quirk, max_length=spec.max_length)
        for split, pairs in (("train", train_pairs), ("eval", eval_pairs))
    }
    feats = {
        split: sequence_features(
            body, s, layers=[layer], poolings=[spec.pooling], batch_size=spec.batch_size, progress=progress
        )[(layer, spec.pooling)]
        for split, s in seqs.items()
    }
    t_features = time.perf_counter() - t0
    head = fit_bradley_terry(feats["train"][0::2] - feats["train"][1::2], spec.l2)
    held = accuracy_report(head, feats["eval"])
    report = {
        "scale": "small",
        "note": (
            "small-scale reward model: a Bradley-Terry linear head on frozen SmolLM2-135M-Instruct features "
            "(Q4_1 GGUF dequantized), fitted on the local UltraFeedback subset; reported on held-out pairs only"
        ),
        "pairwise_accuracy": held["pairwise_accuracy"],
        "pairwise_accuracy_ci95": held["pairwise_accuracy_ci95"],
        "ci_method": "Wilson score interval, 95%, over held-out pairs (ties counted 1/2)",
        "num_eval_pairs": held["num_pairs"],
        "num_eval_identical_skipped": eval_skipped,
        "eval_glob": spec.eval_glob,
        "num_train_pairs": len(train_pairs),
        "num_train_identical_skipped": train_skipped,
        "train_pairwise_accuracy": accuracy_report(head, feats["train"])["pairwise_accuracy"],
        "train_bt_loss": head.train_loss,
        "tokens_read": sum(len(s) for v in seqs.values() for s in v),
        "feature_seconds": round(t_features, 2),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_dir(target) as tmp:
        _write_rm(tmp, body, tok, head)
        build = {"spec": asdict(spec), "backbone_folder": str(folder), "layers": layer, "fit": {
            "l2": head.l2, "newton_steps": head.newton_steps, "train_loss": head.train_loss}}  # fmt: skip
        (tmp / "rm_build.json").write_text(json.dumps(build, indent=2))
        (tmp / "rm_eval.json").write_text(json.dumps(report, indent=2))
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m ts2.models.feature_rm [--force] [--set KEY=VALUE ...]`` (``conf/rm/smollm2_bt.yaml``'s ``bt:``)."""
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR

    p = argparse.ArgumentParser(prog="python -m ts2.models.feature_rm", description=__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a FeatureRMSpec field (JSON)"
    )
    args = p.parse_args(argv)
    base = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "rm" / "smollm2_bt.yaml").bt)
    spec = FeatureRMSpec.from_dict(settings_from_args(args.set, base))
    path = build_feature_rm(spec, force=args.force, progress=True)
    ev = json.loads((path / "rm_eval.json").read_text())
    lo, hi = ev["pairwise_accuracy_ci95"]
    print(path)
    print(
        f"small-scale RM: held-out pairwise accuracy {100 * ev['pairwise_accuracy']:.1f}% (95% CI {100 * lo:.1f}-"
        f"{100 * hi:.1f}) on {ev['num_eval_pairs']} pairs; {ev['num_train_pairs']} training pairs; "
        f"{ev['tokens_read']:,} tokens read in {ev['feature_seconds']} s"
    )
    return 0


if __name__ == "__main__":
    from ts2 import cli

    cli.run(main, interrupted=cli.RERUN)
