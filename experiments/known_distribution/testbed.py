"""Known-distribution testbed (issue #13 item 5): where "diversity" and "accuracy" are exact, not proxies.

Task. Prompts ``[BOS, category c, item i, SEP]``; the answer is one token. Each category c has K valid answers
(disjoint sets taken from an answer pool, the rest of the pool is never valid) with Zipf frequencies
``q_c(a_k) ∝ k^-s``; the item token only makes prompts distinct (the true distribution depends on c alone).
This true distribution q is what a diverse-and-accurate model should sample from.

Pre-training. A tiny Llama (``LlamaForCausalLM``, 2 layers, d = 64) learns the answers of all prompts from
samples of a *noisy* version of q: with probability ``pretrain_noise`` the answer is a uniformly random
invalid pool token (web text is not clean), so the base model has a tail of invalid answers, as a real base
model has.

Fine-tuning (SFT). One fixed answer per prompt, as in real SFT data: for the ``n_sft_items`` first items of
each category, an answer drawn once from q_c (``sft_answer="sample"``) or the most frequent answer
(``"mode"``). Each Table 1 method is applied through the package, as ``ts2.train`` applies it: ``conf/method/<id>`` gives
the loss (the ``ts2.losses`` object :func:`ts2.objective.make_loss` builds for the Trainer), the AdamW weight
decay (ce_wd) and the NEFT noise ``U(-a/sqrt(L d), a/sqrt(L d))`` on input embeddings in training (neft, through
transformers' NEFTune hook, the one the Trainer activates). Training runs through the tiny models' loop
:func:`ts2.models.tiny.train_loop` (AdamW, betas (0.9, 0.95), clip 1.0, 3% warmup) with two schedules: the
paper's regime (cosine to 0 over 3 epochs, PAPER.md §3) and an extended one (constant LR for
``extended_epochs``). The model is the tiny Llama of :func:`ts2.models.tiny.init_llama` (the sizes of
``TinySpec``, 16 positions) over the task's vocabulary.

Measures (exact, from the model's softmax p at the answer position — TS² samples with softmax — averaged over
prompts; "seen" = the SFT prompts, "held-out" = items never fine-tuned on):

- validity ``V = sum_{a valid} p_a`` (mass on valid answers);
- coverage@N ``(1/K) sum_{a valid} (1 - (1 - p_a)^N)``: expected fraction of the valid set hit by N samples;
- KL(q || p) ``sum_a q_a log(q_a / p_a)`` (nats);
- best-of-N success with a validity checker ``1 - (1 - V)^N``, and with a target drawn from q (a user who
  wants one particular valid answer) ``sum_a q_a (1 - (1 - p_a)^N)``;
- the softmax entropy and, on seen prompts, the probability of the SFT answer (collapse).

All are evaluated before fine-tuning, every ``eval_every`` steps and at each epoch end, over several seeds
(seed = SFT answers, batch order, NEFT noise and the pre-training run); CIs are 95% t-intervals over seeds.

Command: ``python -m experiments.known_distribution.run`` from the repo root (``make known-distribution``;
options in ``run.py``); writes ``<out>/known_distribution/{results,summary}<suffix>.{json,md}`` and
``<out>/figures/known_distribution<suffix>{,_paper}.png``, never over a file of another configuration
(:func:`check_outputs`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ts2.analysis.plotting import COLORS, EXTRA_COLORS, plt, save
from ts2.conf import method_ids
from ts2.losses import CrossEntropyLoss
from ts2.models.tiny import TinySpec, init_llama, train_loop

PAD, BOS, SEP, EOS = 0, 1, 2, 3
METRICS = ("validity", "coverage", "kl", "bon_valid", "bon_target", "entropy")
METRIC_LABELS = {
    "validity": "validity (mass on valid answers)",
    "coverage": "coverage@N of the valid set",
    "kl": "KL(true || model) [nats]",
    "bon_valid": "best-of-N success (validity checker)",
    "bon_target": "best-of-N success (target ~ true dist.)",
    "entropy": "softmax entropy [nats]",
    "p_sft": "p(SFT answer)",
}


# ----------------------------------------------------------------------------------------------------
# Exact metrics


def answer_metrics(p: np.ndarray, q: np.ndarray, valid: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-prompt exact metrics of a model distribution against the known true one (module docstring).

    p [P, V] model probabilities (rows sum to 1), q [P, V] true distribution (zero outside ``valid``),
    valid [P, V] bool, n = number of samples -> ``{metric: [P]}`` for :data:`METRICS`.
    KL is +inf when the model gives zero mass to an answer of positive true probability.
    """
    p, q, valid = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64), np.asarray(valid, bool)
    if p.shape != q.shape or p.shape != valid.shape or p.ndim != 2:
        raise ValueError(
            f"answer_metrics: p, q, valid must share a [P, V] shape, got {p.shape}, {q.shape}, {valid.shape}"
        )
    if n < 1:
        raise ValueError(f"answer_metrics: n (samples) must be >= 1, got {n}")
    if np.any(q[~valid] > 0):
        raise ValueError("answer_metrics: the true distribution q puts mass outside the valid set")
    if not np.allclose(p.sum(1), 1.0, atol=1e-6) or not np.allclose(q.sum(1), 1.0, atol=1e-6):
        raise ValueError("answer_metrics: rows of p and q must sum to 1")
    hit = 1.0 - (1.0 - p) ** n  # P(answer a appears among n iid samples)
    validity = (p * valid).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - np.log(p)), 0.0).sum(1)
    return {
        "validity": validity,
        "coverage": (hit * valid).sum(1) / valid.sum(1),
        "kl": kl,
        "bon_valid": 1.0 - (1.0 - validity) ** n,
        "bon_target": (q * hit).sum(1),
        "entropy": -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1),
    }


_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): 95% Student-t interval over independent runs (seeds); NaN bounds for one run."""
    x = np.asarray(values, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    dof = len(x) - 1
    t = _T975.get(dof) or next((v for k, v in sorted(_T975.items()) if k >= dof), 1.96)
    h = t * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, m - h, m + h


# ----------------------------------------------------------------------------------------------------
# The task


@dataclass(frozen=True)
class TaskSpec:
    n_categories: int = 8
    k_valid: int = 8
    zipf_s: float = 1.0
    n_items: int = 48
    n_sft_items: int = 16  # items 0..n_sft_items-1 of each category are fine-tuned on ("seen")
    n_pool: int = 128  # answer tokens; k_valid per category are valid, disjoint across categories
    pretrain_noise: float = 0.1
    sft_answer: str = "sample"  # sample | mode
    structure_seed: int = 0  # which pool tokens are valid for which category (fixed across seeds)

    def __post_init__(self) -> None:
        if self.n_categories * self.k_valid > self.n_pool:
            raise ValueError(
                f"TaskSpec: n_categories * k_valid = {self.n_categories * self.k_valid} exceeds n_pool = {self.n_pool}"
            )
        if not 0 < self.n_sft_items < self.n_items:
            raise ValueError(
                f"TaskSpec: need 0 < n_sft_items < n_items, got {self.n_sft_items}, {self.n_items}"
            )
        if not 0.0 <= self.pretrain_noise < 1.0:
            raise ValueError(f"TaskSpec: pretrain_noise must lie in [0, 1), got {self.pretrain_noise}")
        if self.sft_answer not in ("sample", "mode"):
            raise ValueError(f"TaskSpec: sft_answer must be 'sample' or 'mode', got {self.sft_answer!r}")

    @property
    def cat_offset(self) -> int:
        return 4

    @property
    def item_offset(self) -> int:
        return 4 + self.n_categories

    @property
    def answer_offset(self) -> int:
        return self.item_offset + self.n_items

    @property
    def vocab_size(self) -> int:
        return self.answer_offset + self.n_pool


@dataclass
class Task:
    spec: TaskSpec
    valid: np.ndarray  # [C, V] bool
    q: np.ndarray  # [C, V] true answer distribution
    q_pretrain: np.ndarray  # [C, V] noisy distribution the base model is pre-trained on
    sft: np.ndarray  # [n_sft, 6] SFT sequences (one fixed answer per prompt)

    def prompts(self, items: Sequence[int]) -> np.ndarray:
        """[C * len(items), 2] (category, item) pairs, category-major."""
        return np.array([(c, i) for c in range(self.spec.n_categories) for i in items], dtype=np.int64)

    def sequences(self, ci: np.ndarray, answers: np.ndarray) -> np.ndarray:
        s = self.spec
        n = len(ci)
        out = np.empty((n, 6), dtype=np.int64)
        out[:, 0], out[:, 1], out[:, 2] = BOS, s.cat_offset + ci[:, 0], s.item_offset + ci[:, 1]
        out[:, 3], out[:, 4], out[:, 5] = SEP, answers, EOS
        return out


def zipf(k: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, k + 1) ** s
    return w / w.sum()


def build_task(spec: TaskSpec, seed: int) -> Task:
    """The task's true and pre-training distributions (fixed by ``spec``) and the SFT answers (by ``seed``)."""
    rng = np.random.default_rng(spec.structure_seed)
    v = spec.vocab_size
    pool = spec.answer_offset + rng.permutation(spec.n_pool)
    valid = np.zeros((spec.n_categories, v), dtype=bool)
    q = np.zeros((spec.n_categories, v))
    invalid_pool = np.zeros((spec.n_categories, v), dtype=bool)
    freqs = zipf(spec.k_valid, spec.zipf_s)
    for c in range(spec.n_categories):
        answers = pool[c * spec.k_valid : (c + 1) * spec.k_valid]
        valid[c, answers] = True
        q[c, answers] = freqs
        invalid_pool[c, spec.answer_offset :] = True
        invalid_pool[c, answers] = False
    noise = invalid_pool / invalid_pool.sum(1, keepdims=True)
    q_pre = (1 - spec.pretrain_noise) * q + spec.pretrain_noise * noise
    task = Task(spec, valid, q, q_pre, np.zeros((0, 6), dtype=np.int64))
    ci = task.prompts(range(spec.n_sft_items))
    srng = np.random.default_rng(10_000 + seed)
    if spec.sft_answer == "mode":
        ans = q[ci[:, 0]].argmax(1)
    else:
        ans = np.array([srng.choice(v, p=q[c]) for c in ci[:, 0]])
    task.sft = task.sequences(ci, ans)
    return task


# ----------------------------------------------------------------------------------------------------
# Model, methods, training


def make_model(spec: TaskSpec, seed: int):
    """The tiny Llama (``TinySpec`` sizes: 2 layers, d = 64, head_dim 32, grouped-query attention as in Llama-3)
    over the task vocabulary, 16 positions, seeded."""
    sizes = TinySpec(max_position_embeddings=16)
    return init_llama(
        sizes, seed=seed, vocab_size=spec.vocab_size, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD
    )


@dataclass
class MethodSetup:
    id: str
    name: str
    loss_fn: Callable[..., torch.Tensor]
    hyperparameters: dict[str, Any]
    weight_decay: float
    neft_alpha: float | None


def method_setup(method: str) -> MethodSetup:
    """Loss, weight decay and NEFT alpha of ``conf/method/<id>.yaml`` (composed with conf/train.yaml).

    ``method`` is a method id, optionally with Hydra overrides after a colon, e.g. ``"ts2:loss.alpha=1.0"``
    or ``"ts2:loss.alpha=1.0,loss.clamp=null"`` (a variant; its label shows the overrides).
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR
    from ts2.objective import make_loss

    method_id, _, extra = method.partition(":")
    overrides = [o for o in extra.split(",") if o]
    if not (Path(CONF_DIR) / "method" / f"{method_id}.yaml").is_file():
        raise ValueError(f"Unknown method {method_id!r}: no conf/method/{method_id}.yaml")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"method={method_id}", *overrides])
    fn = make_loss(cfg.loss)[0]  # the loss callable (the second item, objective settings, is not used)
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)
    hyper = {k: v for k, v in loss_cfg.items() if not k.startswith("_") and k not in ("fused", "chunk_size")}
    name = str(cfg.method.get("name") or method_id)
    return MethodSetup(
        id=method,
        name=f"{name} ({extra})" if extra else name,
        loss_fn=fn,
        hyperparameters=hyper,
        weight_decay=float(cfg.train.weight_decay or 0.0),
        neft_alpha=float(cfg.train.neftune_noise_alpha) if cfg.train.get("neftune_noise_alpha") else None,
    )


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    prog = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))


def _answer_loss(model, seqs: torch.Tensor, loss_fn, **kw) -> torch.Tensor:
    """Loss on the answer and end-of-turn tokens (assistant tokens only, as in SFT): the mean over those tokens,
    which is what the Trainer's ``ts2.objective.CausalLMObjective`` gives with every other label ignored (tested);
    the positions are sliced here instead, which keeps the committed numbers bit for bit."""
    logits = model(input_ids=seqs).logits[:, 3:5]
    return loss_fn(logits.reshape(-1, logits.shape[-1]), seqs[:, 4:6].reshape(-1), **kw)


@torch.no_grad()
def answer_probs(model, task: Task, ci: np.ndarray) -> np.ndarray:
    """Softmax of the model at the answer position for the (category, item) prompts ci -> [P, V] float64."""
    model.eval()
    seqs = torch.from_numpy(task.sequences(ci, np.full(len(ci), PAD)))[:, :4]
    return torch.softmax(model(input_ids=seqs).logits[:, -1].double(), dim=-1).numpy()


def evaluate(model, task: Task, n: int) -> dict[str, dict[str, float]]:
    """Mean of each exact metric over the seen (SFT) and the held-out prompts."""
    s = task.spec
    out = {}
    for name, items in (("seen", range(s.n_sft_items)), ("heldout", range(s.n_sft_items, s.n_items))):
        ci = task.prompts(items)
        p = answer_probs(model, task, ci)
        m = answer_metrics(p, task.q[ci[:, 0]], task.valid[ci[:, 0]], n)
        res = {k: float(v.mean()) for k, v in m.items()}
        if name == "seen":
            res["p_sft"] = float(p[np.arange(len(ci)), task.sft[:, 4]].mean())
        out[name] = res
    return out


def pretrain(task: Task, seed: int, *, steps: int = 600, batch_size: int = 128, lr: float = 3e-3):
    """Pre-train the tiny Llama on samples of the noisy answer distribution of every prompt, with the package's
    cross-entropy (``ts2.losses.CrossEntropyLoss``; its reference path, with which the committed numbers were
    made: the fast kernel agrees to ~1e-6 but not bit for bit)."""
    model = make_model(task.spec, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(20_000 + seed)
    s = task.spec
    cum = task.q_pretrain.cumsum(1)
    cum[:, -1] = 1.0  # no rounding gap at the top of the inverse CDF

    def batches():
        for _ in range(steps):
            c = rng.integers(0, s.n_categories, batch_size)
            i = rng.integers(0, s.n_items, batch_size)
            a = (rng.random((batch_size, 1)) < cum[c]).argmax(1)
            yield torch.from_numpy(task.sequences(np.stack([c, i], 1), a))

    train_loop(
        model,
        opt,
        batches(),
        lambda m, seqs: _answer_loss(m, seqs, CrossEntropyLoss().reference),
        max_grad_norm=1.0,
        lr_at=lambda step: lr * _lr_factor(step, steps, max(1, steps // 20), "cosine"),
    )
    return model


def finetune(
    base_state: dict[str, torch.Tensor],
    task: Task,
    method: MethodSetup,
    seed: int,
    *,
    epochs: int,
    schedule: str,
    lr: float,
    batch_size: int,
    eval_every: int,
    n_samples: int,
) -> list[dict[str, Any]]:
    """SFT from the pre-trained weights with one method; the exact metrics along training."""
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    model = make_model(task.spec, seed)
    model.load_state_dict(base_state)
    handle = activate_neftune(model, method.neft_alpha) if method.neft_alpha else None
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": method.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    data = torch.from_numpy(task.sft)
    per_epoch = math.ceil(len(data) / batch_size)
    total = per_epoch * epochs
    warmup = max(1, round(0.03 * total))
    gen = torch.Generator().manual_seed(30_000 + seed)
    torch.manual_seed(40_000 + seed)  # NEFT noise
    records = [{"step": 0, "epoch": 0.0, "lr": 0.0, **evaluate(model, task, n_samples)}]

    def batches():
        for _epoch in range(epochs):
            order = torch.randperm(len(data), generator=gen)
            for b in range(per_epoch):
                yield data[order[b * batch_size : (b + 1) * batch_size]]

    def lr_of(step: int) -> float:
        return lr * _lr_factor(step, total, warmup, schedule)

    def after_step(step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        if (step + 1) % eval_every == 0 or (step + 1) % per_epoch == 0:
            rec = {"step": step + 1, "epoch": (step + 1) / per_epoch, "lr": lr_of(step)}
            records.append({**rec, **evaluate(model, task, n_samples)})

    train_loop(
        model,
        opt,
        batches(),
        lambda m, seqs: _answer_loss(m, seqs, method.loss_fn),
        max_grad_norm=1.0,
        lr_at=lr_of,
        after_step=after_step,
    )
    if handle is not None:
        deactivate_neftune(model, handle)
    return records


# ----------------------------------------------------------------------------------------------------
# Experiment


@dataclass
class ExperimentConfig:
    methods: tuple[str, ...] = dataclasses.field(default_factory=lambda: tuple(method_ids()))  # conf/method/
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    spec: TaskSpec = dataclasses.field(default_factory=TaskSpec)
    pretrain_steps: int = 600
    lr: float = 1e-3
    batch_size: int = 16
    paper_epochs: int = 3
    extended_epochs: int = 12
    eval_every: int = 2
    n_samples: int = 16


def config_of(cfg: ExperimentConfig) -> dict[str, Any]:
    """The ``config`` entry of the results (what :func:`check_outputs` compares)."""
    return {**dataclasses.asdict(cfg), "spec": dataclasses.asdict(cfg.spec)}


def quick_config() -> ExperimentConfig:
    """A reduced run (tests, smoke): 3 methods, 2 seeds, small task, short training."""
    return ExperimentConfig(
        methods=("ce", "sparsemax", "ts2"),
        seeds=(0, 1),
        spec=TaskSpec(n_categories=4, n_items=24, n_sft_items=8, n_pool=64),
        pretrain_steps=150,
        extended_epochs=5,
        eval_every=4,
    )


def run_experiment(cfg: ExperimentConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every (seed, method, regime) run; returns the records (JSON-able). ``log``: progress lines
    (default: printed and flushed)."""
    if log is None:

        def log(line: str) -> None:
            print(line, flush=True)

    setups = {m: method_setup(m) for m in cfg.methods}
    runs: list[dict[str, Any]] = []
    t0 = time.time()
    for seed in cfg.seeds:
        task = build_task(cfg.spec, seed)
        base = pretrain(task, seed, steps=cfg.pretrain_steps)
        base_eval = evaluate(base, task, cfg.n_samples)
        log(
            f"[seed {seed}] pre-trained: held-out validity {base_eval['heldout']['validity']:.3f} "
            f"KL {base_eval['heldout']['kl']:.3f} ({time.time() - t0:.0f}s)"
        )
        state = {k: v.clone() for k, v in base.state_dict().items()}
        for regime, epochs, schedule in (
            ("paper", cfg.paper_epochs, "cosine"),
            ("extended", cfg.extended_epochs, "constant"),
        ):
            for m in cfg.methods:
                recs = finetune(
                    state,
                    task,
                    setups[m],
                    seed,
                    epochs=epochs,
                    schedule=schedule,
                    lr=cfg.lr,
                    batch_size=cfg.batch_size,
                    eval_every=cfg.eval_every,
                    n_samples=cfg.n_samples,
                )
                runs.append({"seed": seed, "method": m, "regime": regime, "records": recs})
                last = recs[-1]
                log(
                    f"[seed {seed}] {regime:8s} {m:9s} epoch {last['epoch']:.0f}: seen validity "
                    f"{last['seen']['validity']:.3f} cov {last['seen']['coverage']:.3f} KL {last['seen']['kl']:.3f} | "
                    f"held-out validity {last['heldout']['validity']:.3f} KL {last['heldout']['kl']:.3f} "
                    f"({time.time() - t0:.0f}s)"
                )
    return {
        "config": config_of(cfg),
        "methods": {m: setups[m].name for m in cfg.methods},
        "hyperparameters": {
            m: {
                **setups[m].hyperparameters,
                "weight_decay": setups[m].weight_decay,
                "neft_alpha": setups[m].neft_alpha,
            }
            for m in cfg.methods
        },
        "runs": runs,
        "elapsed_s": round(time.time() - t0, 1),
    }


def curves(results: dict[str, Any], regime: str, split: str, metric: str) -> dict[str, dict[str, np.ndarray]]:
    """Per method: epochs [T] and mean/low/high [T] over seeds of one metric along training."""
    out = {}
    for m in results["methods"]:
        runs = [r for r in results["runs"] if r["method"] == m and r["regime"] == regime]
        if not runs:
            continue
        epochs = np.array([rec["epoch"] for rec in runs[0]["records"]])
        vals = np.array([[rec[split][metric] for rec in r["records"]] for r in runs])  # [S, T]
        stats = np.array([t_ci(vals[:, t]) for t in range(vals.shape[1])])
        out[m] = {"epoch": epochs, "mean": stats[:, 0], "low": stats[:, 1], "high": stats[:, 2]}
    return out


def _record_at(run: dict[str, Any], epoch: float) -> dict[str, Any]:
    rec = next((x for x in run["records"] if abs(x["epoch"] - epoch) < 1e-9), None)
    if rec is None:
        raise ValueError(
            f"no evaluation at epoch {epoch} in run {run['method']}/{run['regime']}/seed {run['seed']}"
        )
    return rec


def paired_table(results: dict[str, Any], a: str = "ts2", b: str = "ce", split: str = "heldout") -> str:
    """Markdown: ``a - b`` per metric, paired by seed (same base model and SFT data), mean [95% t-CI]."""
    cfg = results["config"]
    if a not in results["methods"] or b not in results["methods"]:
        return ""
    metrics = ("validity", "coverage", "kl", "bon_valid", "bon_target", "entropy")
    lines = [
        f"### {results['methods'][a]} minus {results['methods'][b]}, {split} prompts, paired by seed "
        f"(mean [95% CI] over {len(cfg['seeds'])} seeds)",
        "",
        "| regime, epoch | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for regime, ep in (
        ("paper", cfg["paper_epochs"]),
        ("extended", cfg["paper_epochs"]),
        ("extended", cfg["extended_epochs"]),
    ):
        by = {(r["method"], r["seed"]): r for r in results["runs"] if r["regime"] == regime}
        cells = []
        for k in metrics:
            diffs = [
                _record_at(by[(a, s)], ep)[split][k] - _record_at(by[(b, s)], ep)[split][k]
                for s in cfg["seeds"]
            ]
            m, lo, hi = t_ci(diffs)
            cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {regime}, {ep:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def final_table(results: dict[str, Any], *, at_epochs: Sequence[tuple[str, float]] | None = None) -> str:
    """Markdown: per method, mean [95% CI] over seeds at the end of the paper regime and along the extended one."""
    cfg = results["config"]
    at_epochs = at_epochs or [
        ("paper", cfg["paper_epochs"]),
        ("extended", cfg["paper_epochs"]),
        ("extended", cfg["extended_epochs"]),
    ]
    n = cfg["n_samples"]
    cols = [
        ("seen", "validity"),
        ("seen", "coverage"),
        ("seen", "kl"),
        ("seen", "p_sft"),
        ("heldout", "validity"),
        ("heldout", "coverage"),
        ("heldout", "kl"),
        ("heldout", "bon_target"),
    ]
    lines = []
    for regime, ep in at_epochs:
        sched = "cosine to 0" if regime == "paper" else "constant LR"
        lines += [
            f"### {regime} regime ({sched}), epoch {ep:g}; N = {n}; mean [95% CI] over {len(cfg['seeds'])} seeds",
            "",
            "| method | " + " | ".join(f"{s} {m}" for s, m in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        base_row = None
        for m, name in results["methods"].items():
            runs = [r for r in results["runs"] if r["method"] == m and r["regime"] == regime]
            recs = [next(x for x in r["records"] if abs(x["epoch"] - ep) < 1e-9) for r in runs]
            if base_row is None:
                base_row = [t_ci([r["records"][0][s][k] for r in runs]) for s, k in cols]
                lines.append(
                    "| pre-trained base | "
                    + " | ".join(f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in base_row)
                    + " |"
                )
            cells = [t_ci([x[s][k] for x in recs]) for s, k in cols]
            lines.append(
                f"| {name} | " + " | ".join(f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in cells) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def _rounded(x: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits (keeps results.json small; far below the seed-to-seed spread)."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v, digits) for v in x]
    return x


def check_outputs(config: dict[str, Any], out: str | Path, suffix: str = "") -> Path:
    """``<out>/known_distribution/results<suffix>.json``, after checking that it does not hold a run of another
    configuration: a variant (``--sft-answer mode``, other seeds or methods) must never overwrite the results and
    figures of another run (issue 22), so it needs a suffix or folder of its own. A rerun of the same
    configuration (with the same code, the same numbers) may replace its files."""
    path = Path(out) / "known_distribution" / f"results{suffix}.json"
    if path.is_file():
        old = json.loads(path.read_text()).get("config", {})
        new = json.loads(json.dumps(_rounded(config)))
        if old != new:
            keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
            if "spec" in keys:
                spec_old, spec_new = old.get("spec") or {}, new["spec"]
                keys += [
                    f"spec.{k}" for k in sorted({*spec_old, *spec_new}) if spec_old.get(k) != spec_new.get(k)
                ]
            raise ValueError(
                f"{path} holds a run of another configuration (differing: {', '.join(keys)}); give this run its own "
                "--suffix or --out, or delete that file to replace it."
            )
    return path


def write_outputs(results: dict[str, Any], out: str | Path, *, suffix: str = "") -> dict[str, Path]:
    """``<out>/known_distribution/results<suffix>.json`` + ``summary<suffix>.md``, and
    ``<out>/figures/known_distribution<suffix>{,_paper}.png``; refuses (:func:`check_outputs`) to overwrite the
    files of another configuration."""
    out = Path(out)
    paths = {"json": check_outputs(results["config"], out, suffix)}
    paths["summary"] = out / "known_distribution" / f"summary{suffix}.md"
    figs = out / "figures"
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(_rounded(results), separators=(",", ":")))
    paired = [paired_table(results, "ts2", b) for b in ("ce", "gem", "sparsemax")]
    paths["summary"].write_text(final_table(results) + "\n" + "\n".join(p for p in paired if p))
    paths["figure"] = known_distribution_figure(
        results, figs / f"known_distribution{suffix}.png", regime="extended"
    )
    paths["figure_paper"] = known_distribution_figure(
        results, figs / f"known_distribution{suffix}_paper.png", regime="paper"
    )
    return paths


def known_distribution_figure(
    results: dict[str, Any],
    out: str | Path,
    *,
    regime: str = "extended",
    metrics: Sequence[str] = ("validity", "coverage", "kl", "bon_target"),
) -> Path:
    """Rows: seen (SFT) prompts, held-out prompts; columns: metrics; x: epoch; one line per method with a
    95% CI band over seeds; dotted line at the paper's 3 epochs."""
    cfg = results["config"]
    splits = (("seen", "seen (SFT) prompts"), ("heldout", "held-out prompts"))
    fig, axes = plt.subplots(
        len(splits), len(metrics), figsize=(3.6 * len(metrics), 3.0 * len(splits)), squeeze=False
    )
    for r, (split, split_label) in enumerate(splits):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            variants = [m for m in results["methods"] if m not in COLORS]
            for m, cv in curves(results, regime, split, metric).items():
                # Variants such as "ts2:loss.alpha=1.0" get colours of their own.
                col = COLORS.get(m) or EXTRA_COLORS[variants.index(m) % len(EXTRA_COLORS)]
                ax.plot(
                    cv["epoch"],
                    cv["mean"],
                    color=col,
                    lw=1.6 if m == "ts2" else 1.1,
                    label=results["methods"][m],
                    ls="--" if m == "ce_wd" else "-",
                )  # dashed: CE+WD often lies on CE
                lo, hi = cv["low"], cv["high"]
                if metric != "kl" and metric != "entropy":  # probabilities: a t-interval may overshoot [0, 1]
                    lo, hi = lo.clip(0, 1), hi.clip(0, 1)
                elif metric == "kl":
                    lo = lo.clip(min=1e-3)
                ax.fill_between(cv["epoch"], lo, hi, color=col, alpha=0.15, lw=0)
            if regime == "extended":
                ax.axvline(cfg["paper_epochs"], color="k", ls=":", lw=0.8)
            label = METRIC_LABELS[metric].replace("@N", "@" + str(cfg["n_samples"]))
            ax.set_title(f"{label}\n{split_label}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
            if metric == "kl":
                ax.set_yscale("log")
    axes[0, -1].legend(fontsize=7, loc="best")
    sched = (
        "constant LR (dotted: the paper's 3 epochs)"
        if regime == "extended"
        else "cosine to 0 over 3 epochs (paper)"
    )
    spec = cfg["spec"]
    answer = "drawn once from the true dist." if spec["sft_answer"] == "sample" else "the most frequent one"
    fig.suptitle(
        f"Known-distribution testbed (tiny Llama, synthetic task; K={spec['k_valid']} valid answers at Zipf "
        f"frequencies, one SFT answer per prompt: {answer}) — {sched}; mean and 95% CI over "
        f"{len(cfg['seeds'])} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    return save(fig, out)
