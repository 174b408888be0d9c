"""The pretrained tiny base: a small Llama pretrained offline on local text, the start of every tiny Table-1 SFT.

The paper fine-tunes *pretrained* models (Llama-3.1-8B, Qwen-2-7B; PAPER.md §3), and its claim is about what SFT
does to the diversity pretraining created: CE collapses it, TS² keeps more of it. A random-init start has no such
diversity to keep, so the tiny Table 1 starts from this base instead.

* **Corpus**: :mod:`ts2.models.corpus` (Python's stdlib sources + the READMEs of the pinned packages; no evaluation
  text, nothing from the data directory). A file-level held-out split (~2.5% of files) measures perplexity.
* **Tokenizer**: byte-level BPE (``tokenizers``) with ``vocab_size`` tokens trained on the training split, with the
  chat special tokens and chat template of :mod:`ts2.models.tiny` (Llama-3.1 shape).
* **Model**: ``LlamaForCausalLM``, sizes in :class:`TinyBaseSpec` (head_dim >= 32 for vLLM's CPU attention; tied
  input/output embeddings as in the small Llama-3.2 models).
* **Pretraining**: next-token cross-entropy on packed ``seq_len``-token chunks (each document is
  ``<|begin_of_text|> text <|end_of_text|>``), AdamW, linear warm-up then cosine decay to ``min_lr_ratio``; chunk
  order from a seeded permutation; one CPU thread (fixed reduction order). Cost ≈ 6 × parameters × tokens FLOPs.
  Checkpoints every ``checkpoint_every`` steps, so a killed build resumes where it stopped.

Where the weights come from (:func:`build_tiny_base`):

1. the cache, ``<cache_dir>/models/tiny-base-<fingerprint>`` (fingerprint = hash of the spec and the corpus);
2. else the committed copy under ``assets/tiny_base/`` when its ``manifest.json`` names the same spec fingerprint
   and the weights' sha256 matches (the pretraining takes about an hour of one core, too long for a fresh-clone
   run, so the repo ships its result; fp16 safetensors);
3. else a fresh build (``make tiny-base`` / ``python -m ts2.models.tiny base --force``).

The folder also keeps ``corpus.json`` (:func:`ts2.models.corpus.corpus_record`): every document's sha256 and the
held-out documents' text, so that the corpus fingerprint and the held-out perplexity of a committed base can be
checked on a machine whose stdlib differs from the build's.

Pretraining runs through :func:`ts2.models.tiny.train_loop`, not ``transformers.Trainer`` (why: that docstring).

Commands (:func:`ts2.models.tiny.main`)::

    python -m ts2.models.tiny base              # find or build; print the folder
    python -m ts2.models.tiny base --force      # rebuild into the cache (resumes from a checkpoint)
    python -m ts2.models.tiny base --commit     # rebuild if needed and copy the result to assets/tiny_base/
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ts2.models.corpus import Document, corpus_fingerprint, corpus_record, load_corpus
from ts2.models.tiny import chat_ids, init_llama, spec_from_dict, spec_hash, train_bpe, train_loop
from ts2.paths import atomic_dir, cache_dir, sha256_file

logger = logging.getLogger("ts2.tiny_base")

REPO_ROOT = Path(__file__).resolve().parents[3]
ASSETS_DIR = REPO_ROOT / "assets" / "tiny_base"
WEIGHTS_FILE = "model.safetensors"
CORPUS_FILE = "corpus.json"  # ts2.models.corpus.corpus_record of the build's corpus
SAMPLE_PROMPTS = ("def fibonacci(n):\n", "The quick", "Python is a")


@dataclass(frozen=True)
class TinyBaseSpec:
    """Everything that determines the pretrained tiny base; each distinct spec (+ corpus) gets its own folder."""

    name: str = "tiny-base"
    # tokenizer + architecture
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 4  # head_dim 64
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    # corpus
    corpus_sources: tuple[str, ...] = ("stdlib", "metadata")
    # pretraining
    seq_len: int = 512
    batch_size: int = 16  # sequences per step -> 8,192 tokens per step
    steps: int = 400  # 3.28M tokens, ~1.23 epochs of the 2.66M training tokens
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 20
    version: int = 1  # bump when the build code changes meaningfully

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpus_sources", tuple(self.corpus_sources))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"TinyBaseSpec: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}."
            )
        if self.head_dim < 32:
            raise ValueError(
                f"TinyBaseSpec: head_dim {self.head_dim} < 32 (hidden_size / num_attention_heads); vLLM's CPU "
                "attention needs head_dim >= 32."
            )
        for key in ("vocab_size", "seq_len", "batch_size", "steps", "checkpoint_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"TinyBaseSpec.{key} must be >= 1, got {getattr(self, key)}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TinyBaseSpec:
        return spec_from_dict(cls, d, "tiny base")

    def fingerprint(self, corpus_fp: str) -> str:
        blob = json.dumps({"spec": asdict(self), "corpus": corpus_fp}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def num_params(self) -> int:
        """Parameter count of the Llama these sizes give (embeddings counted once when tied)."""
        h, i, v, kvd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        attn = 2 * h * h + 2 * h * kvd * self.num_key_value_heads
        layer = attn + 3 * h * i + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * layer + h


# ---------------------------------------------------------------- data


def pack(tok: Any, docs: list[Document], seq_len: int) -> Any:
    """Concatenate ``<bos> doc <end_of_text>`` in order and cut into ``seq_len`` chunks (the tail is dropped)."""
    import torch

    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    eot = tok.convert_tokens_to_ids("<|end_of_text|>")
    ids: list[int] = []
    enc = tok.backend_tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
    for e in enc:
        ids += [bos, *e.ids, eot]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


# ---------------------------------------------------------------- model + training


def init_model(spec: TinyBaseSpec, tok: Any) -> Any:
    """The seeded, untrained base (:func:`ts2.models.tiny.init_llama` with the spec's sizes and tying)."""
    return init_llama(spec, seed=spec.seed, tie_word_embeddings=spec.tie_word_embeddings, **chat_ids(tok))


def lr_at(spec: TinyBaseSpec, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``learning_rate`` to ``min_lr_ratio`` × it."""
    if step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    t = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.learning_rate * (
        spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    )


def batch_indices(spec: TinyBaseSpec, num_chunks: int, step: int) -> list[int]:
    """Chunk indices of ``step``: epochs of seeded permutations, read ``batch_size`` at a time."""
    import torch

    per_epoch = num_chunks // spec.batch_size
    if per_epoch < 1:
        raise ValueError(f"The corpus has {num_chunks} chunks, fewer than one batch of {spec.batch_size}.")
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(num_chunks, generator=torch.Generator().manual_seed(spec.seed * 1000 + epoch))
    return perm[k * spec.batch_size : (k + 1) * spec.batch_size].tolist()


def mean_nll(model: Any, chunks: Any, batch_size: int = 8) -> float:
    """Mean next-token negative log-likelihood (nats) over every prediction in ``chunks``."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(chunks), batch_size):
            x = chunks[s : s + batch_size]
            logits = model(input_ids=x, use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += x[:, 1:].numel()
    return total / max(count, 1)


def _save_ckpt(path: Path, model: Any, opt: Any, step: int, log: list[dict]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "log": log}, tmp)
    os.replace(tmp, path)


def pretrain(
    spec: TinyBaseSpec,
    model: Any,
    train_chunks: Any,
    ckpt: Path | None,
    *,
    stop_after: int | None = None,
    log_every: int = 5,
    print_fn=print,
) -> list[dict]:
    """Run the pretraining loop (resuming from ``ckpt`` when it exists); returns the per-step log.

    ``stop_after`` ends the loop after that many total steps (tests); the schedule still spans ``spec.steps``.
    """
    import torch

    opt = torch.optim.AdamW(
        model.parameters(),
        lr=spec.learning_rate,
        betas=(0.9, spec.adam_beta2),
        weight_decay=spec.weight_decay,
    )
    log: list[dict] = []
    start = 0
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, log = state["step"], state["log"]
        print_fn(f"resumed from {ckpt} at step {start}")
    end = spec.steps if stop_after is None else min(spec.steps, stop_after)
    t0 = time.perf_counter()
    tokens_per_step = spec.batch_size * spec.seq_len

    def after_step(step: int, loss: Any, grad_norm: Any) -> None:
        log.append({"step": step + 1, "loss": float(loss), "grad_norm": float(grad_norm)})
        if (step + 1) % log_every == 0 or step + 1 == end:
            el = time.perf_counter() - t0
            tps = (step + 1 - start) * tokens_per_step / el
            print_fn(
                f"step {step + 1}/{spec.steps} loss {log[-1]['loss']:.4f} lr {lr_at(spec, step):.2e} "
                f"{tps:.0f} tok/s elapsed {el:.0f}s eta {(end - step - 1) * tokens_per_step / tps:.0f}s",
            )
        if ckpt is not None and ((step + 1) % spec.checkpoint_every == 0 or step + 1 == end):
            _save_ckpt(ckpt, model, opt, step + 1, log)

    batches = (train_chunks[batch_indices(spec, len(train_chunks), s)] for s in range(start, end))
    train_loop(
        model,
        opt,
        batches,
        lambda m, x: m(input_ids=x, labels=x, use_cache=False).loss,
        max_grad_norm=spec.max_grad_norm,
        lr_at=lambda step: lr_at(spec, step),
        start=start,
        after_step=after_step,
    )
    return log


def generate_samples(model: Any, tok: Any, *, seed: int = 0, max_new_tokens: int = 60) -> list[dict]:
    """Three seeded samples (temperature 1, softmax) from :data:`SAMPLE_PROMPTS`."""
    import torch

    out = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        torch.manual_seed(seed + i)
        ids = tok(tok.bos_token + prompt, return_tensors="pt", add_special_tokens=False).input_ids
        gen = model.generate(
            ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens
        )
        out.append(
            {"prompt": prompt, "completion": tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=False)}
        )
    return out


# ---------------------------------------------------------------- build / find


def _committed(spec: TinyBaseSpec) -> Path | None:
    """``assets/tiny_base`` when its manifest names this spec and its weights hash matches."""
    man = ASSETS_DIR / "manifest.json"
    if not man.is_file():
        return None
    m = json.loads(man.read_text())
    if m.get("spec_fingerprint") != spec_hash(spec):
        return None
    w = ASSETS_DIR / WEIGHTS_FILE
    if not w.is_file() or sha256_file(w) != m.get("weights_sha256"):
        raise ValueError(
            f"{w} does not match the sha256 in {man}: the committed tiny base is damaged "
            "(git lfs? a partial checkout?). Rebuild it with `make tiny-base`."
        )
    return ASSETS_DIR


def target_dir(spec: TinyBaseSpec, corpus_fp: str) -> Path:
    return cache_dir() / "models" / f"{spec.name}-{spec.fingerprint(corpus_fp)}"


def build_tiny_base(
    spec: TinyBaseSpec | None = None,
    *,
    force: bool = False,
    use_committed: bool = True,
    stop_after: int | None = None,
    print_fn=print,
) -> Path:
    """Find (cache, then committed copy) or build the pretrained tiny base; return its folder.

    ``force`` rebuilds into the cache even if a copy exists (resuming from a checkpoint of the same build).
    """
    import torch

    spec = spec or TinyBaseSpec()
    if use_committed and not force and stop_after is None:
        found = _committed(spec)
        if found is not None:
            return found
    docs = load_corpus(spec.corpus_sources)
    corpus_fp = corpus_fingerprint(docs)
    target = target_dir(spec, corpus_fp)
    if stop_after is not None:
        target = target.with_name(target.name + f"-first{stop_after}")
    if (target / "manifest.json").is_file() and not force:
        return target
    logger.info(
        "building the pretrained tiny base from its corpus (about 1 h of one CPU core; resumable), cached in %s",
        target,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ckpt = target.parent / f".{target.name}.ckpt.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        with atomic_dir(target) as tmp:
            tok = train_bpe((d.text for d in docs if not d.heldout), spec.vocab_size, tmp)
            train_docs = [d for d in docs if not d.heldout]
            held_docs = [d for d in docs if d.heldout]
            train_chunks = pack(tok, train_docs, spec.seq_len)
            held_chunks = pack(tok, held_docs, spec.seq_len)
            print_fn(
                f"tiny base {spec.name}: {spec.num_params() / 1e6:.2f}M params; corpus {len(train_docs)} train / "
                f"{len(held_docs)} held-out files, {train_chunks.numel():,} / {held_chunks.numel():,} tokens; "
                f"{spec.steps} steps x {spec.batch_size * spec.seq_len} tokens = "
                f"{spec.steps * spec.batch_size * spec.seq_len / train_chunks.numel():.2f} epochs"
            )
            model = init_model(spec, tok)
            log = pretrain(spec, model, train_chunks, ckpt, stop_after=stop_after, print_fn=print_fn)
            # What is saved (fp16) is what is evaluated.
            model = model.to(torch.float16).to(torch.float32)
            held_nll = mean_nll(model, held_chunks)
            samples = generate_samples(model, tok, seed=spec.seed)
            model.to(torch.float16).save_pretrained(tmp)
            man = {
                "spec": asdict(spec),
                "spec_fingerprint": spec_hash(spec),
                "fingerprint": spec.fingerprint(corpus_fp),
                "corpus_fingerprint": corpus_fp,
                "corpus_files": {"train": len(train_docs), "heldout": len(held_docs)},
                "heldout_files": [d.path for d in held_docs],
                "train_tokens": int(train_chunks.numel()),
                "heldout_tokens": int(held_chunks.numel()),
                "tokens_seen": len(log) * spec.batch_size * spec.seq_len,
                "num_params": sum(p.numel() for p in model.parameters()),
                "heldout_nll": held_nll,
                "heldout_perplexity": math.exp(held_nll),
                "final_train_loss_mean_last10": sum(r["loss"] for r in log[-10:]) / max(1, len(log[-10:])),
                "samples": samples,
                "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
                "build_seconds_this_session": round(time.time() - t0, 1),
                "torch_threads": 1,
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "command": "python -m ts2.models.tiny base --force",
            }
            (tmp / "build_log.json").write_text(json.dumps(log))
            (tmp / CORPUS_FILE).write_text(json.dumps(corpus_record(docs)))
            (tmp / "manifest.json").write_text(json.dumps(man, indent=2))
    finally:
        torch.set_num_threads(threads)
    if ckpt.is_file() and stop_after is None:
        ckpt.unlink()
    return target


def commit(src: Path) -> Path:
    """Copy a built base into ``assets/tiny_base/`` (what the repo ships)."""
    if src.resolve() == ASSETS_DIR.resolve():
        return ASSETS_DIR
    if ASSETS_DIR.exists():
        shutil.rmtree(ASSETS_DIR)
    shutil.copytree(src, ASSETS_DIR)
    return ASSETS_DIR


if (
    __name__ == "__main__"
):  # the old command; experiments/table1/run.sh calls it (= python -m ts2.models.tiny base)
    from ts2 import cli
    from ts2.models.tiny import main

    cli.run(lambda: main(["base", *sys.argv[1:]]), interrupted=cli.RESUME)
