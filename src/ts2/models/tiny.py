"""A tiny Llama-architecture model and byte-level BPE tokenizer, built offline and deterministically.

Same code path as paper scale (``LlamaForCausalLM`` + a chat template in the Llama-3.1 shape, with the
always-emitted system block that PAPER.md §3 notes), at a size that trains in seconds on a CPU.

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library on the local UltraFeedback
subset (``<data_dir>/ultrafeedback/*train*.jsonl``); the weights are random (``torch.manual_seed``).
The result is cached under ``<cache_dir>/models/<name>-<fingerprint>`` so that every build parameter gives
its own folder, and a rebuild with the same parameters is a no-op. Every tiny model has head_dim >= 32
(hidden 64 / 2 heads), the smallest head size vLLM's CPU attention accepts.

``TinySpec(pretrained="tiny_base")`` (``conf/model/tiny_base.yaml``) is instead the *pretrained* tiny base of
:mod:`ts2.models.tiny_base`, the start of every tiny Table-1 SFT; this random-init model stays for the tests.

Command::

    python -m ts2.models.tiny            # builds (or finds) the default tiny model and prints its path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# The chat special tokens and template every tiny model shares (ts2.models.chat), re-exported here.
from ts2.models.chat import CHAT_TEMPLATE, SPECIAL_TOKENS  # noqa: F401
from ts2.paths import atomic_dir, cache_dir, data_dir


@dataclass(frozen=True)
class TinySpec:
    """Build parameters; each distinct spec is cached in its own folder."""

    name: str = "tiny-llama"
    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2  # head_dim = 64 / 2 = 32: vLLM's CPU attention needs head_dim >= 32 (#14)
    num_key_value_heads: int = 1  # grouped-query attention (2 query heads share 1 KV head), as in Llama-3
    max_position_embeddings: int = 1024
    seed: int = 0
    corpus_glob: str = "ultrafeedback/*train*.jsonl"
    version: int = 2  # bump when the build code changes meaningfully
    # "tiny_base": the *pretrained* tiny base of ts2.models.tiny_base (its own sizes, in TinyBaseSpec); every
    # other field must then stay at its default. None: the random-init model above.
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.pretrained is None:
            return
        if self.pretrained != "tiny_base":
            raise ValueError(f"TinySpec.pretrained must be null or 'tiny_base', got {self.pretrained!r}.")
        changed = sorted(
            f.name for f in fields(self) if f.name != "pretrained" and getattr(self, f.name) != f.default
        )
        if changed:
            raise ValueError(
                f"TinySpec(pretrained='tiny_base') takes its sizes from ts2.models.tiny_base.TinyBaseSpec; "
                f"remove {changed} from the model's `tiny:` block."
            )

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def _corpus(spec: TinySpec) -> list[str]:
    files = sorted(data_dir().glob(spec.corpus_glob))
    if not files:
        raise FileNotFoundError(
            f"No tokenizer corpus matches {spec.corpus_glob!r} under the data directory {data_dir()}."
        )
    texts: list[str] = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                texts += [str(row.get("prompt", "")), str(row.get("chosen", ""))]
    return texts


def _train_tokenizer(spec: TinySpec, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        model_max_length=1_000_000,  # long rows are truncated by the data pipeline, not the tokenizer
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def _init_model(spec: TinySpec, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(out)
    eos_ids = [tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>")]
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos_ids, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)


def build_tiny_model(spec: TinySpec | None = None, *, force: bool = False, **overrides) -> Path:
    """Build (or find in the cache) the tiny model + tokenizer and return its folder.

    With ``pretrained="tiny_base"`` this is the pretrained base of :func:`ts2.models.tiny_base.build_tiny_base`
    (the committed copy, the cache, or a fresh build).

    The folder is written to a temporary sibling and renamed into place (:func:`ts2.paths.atomic_dir`).
    """
    spec = spec or TinySpec(**overrides)
    if spec.pretrained == "tiny_base":
        from ts2.models.tiny_base import build_tiny_base

        return build_tiny_base()
    target = cache_dir() / "models" / f"{spec.name}-{spec.fingerprint()}"
    if (target / "build.json").is_file() and not force:
        return target
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with atomic_dir(target) as tmp:
        _train_tokenizer(spec, tmp)
        _init_model(spec, tmp)
        (tmp / "build.json").write_text(json.dumps({"spec": asdict(spec)}, indent=2))
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = p.parse_args(argv)
    print(build_tiny_model(force=args.force))


if __name__ == "__main__":
    from ts2 import cli

    cli.run(main, interrupted=cli.RERUN)
