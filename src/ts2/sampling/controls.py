"""Judge controls as a sampling backend: answers made from the reference, not generated (issue #19 item 2a).

A reward-model judge is only worth its win rates if it ranks answers it should rank: the AlpacaEval reference
answers above the same answers with their words shuffled, and those above random tokens. ``sampler=control``
writes such "methods" as ordinary sample files through ``python -m ts2.sample``, so ``ts2.evaluate`` scores them
exactly like a method's samples:

    python -m ts2.sample model=tiny_base sampler=control sampler.kind=shuffled eval=alpaca_eval \\
        out_dir=runs/<name>/control=shuffled/samples sample.n=8 sample.limit=40
    python -m ts2.evaluate run_dir=runs/<name>/control=shuffled eval=alpaca_eval

Kinds (``sampler.kind``), for AlpacaEval prompt i and sample j (the answer's "tokens" are the policy tokenizer's,
``model=``/``run_dir=``; no model weights are read):

- ``reference``: the GPT-4-Turbo reference answer of prompt i itself (every sample the same; scored against
  itself, its win rate is 50% by construction);
- ``shuffled``: the reference's whitespace-separated words in a random order, joined by single spaces; a
  different shuffle per sample, seeded by ``sample.seed``, the prompt id and j;
- ``random``: as many token ids as the reference has (under the policy tokenizer), drawn uniformly from the
  tokenizer's vocabulary less its special tokens, seeded likewise, decoded.

Lines follow ``evaluation/README.md``: ``finish_reason`` ``stop``, ``num_tokens`` = the answer's token count
(no EOS). ``sampler.truncate=true`` cuts each answer to ``sample.max_new_tokens`` tokens (then
``finish_reason`` ``length``), the policies' length; by default answers keep the reference's full length.

The control folder is the parent of ``out_dir`` (which must end in ``samples``); its ``run.json`` says
``control: <kind>`` (:func:`ts2.runs.mark_control`). The fourth control, the untuned base model, is sampled by the
ordinary backend into its own control folder, which this module's command line then marks:

    python -m ts2.sample model=tiny_base eval=alpaca_eval out_dir=runs/<name>/control=base/samples ...
    python -m ts2.sampling.controls runs/<name>/control=base base --model tiny_base
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ts2.runs import mark_control
from ts2.sampling.backends import Batch, Generation, SamplingParams, derive_seed

KINDS = ("reference", "shuffled", "random")
"""The kinds this backend writes (the base model is sampled by sampler=hf/vllm)."""


def control_folder(out_dir: str | Path | None, kind: str) -> Path:
    """The control folder of a samples ``out_dir`` (its parent); ``out_dir`` must be ``<folder>/samples``."""
    if out_dir is None or Path(out_dir).name != "samples":
        raise ValueError(
            f"sampler=control: out_dir={out_dir!r} must be a control folder's samples/: pass "
            f"out_dir=runs/<name>/control={kind}/samples (run.json goes to runs/<name>/control={kind})."
        )
    return Path(out_dir).parent


def shuffled_words(text: str, seed: int) -> str:
    """``text``'s whitespace-separated words in the order of ``random.Random(seed).shuffle``, space-joined."""
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def random_token_ids(num: int, vocab: Sequence[int], seed: int) -> list[int]:
    """``num`` ids drawn uniformly, with replacement, from ``vocab`` (``numpy.random.default_rng(seed)``)."""
    return [int(vocab[i]) for i in np.random.default_rng(seed).integers(0, len(vocab), num)]


@dataclass
class ControlBackend:
    """``sampler=control``: the judge controls as a backend of :mod:`ts2.sample` (module docstring)."""

    model_path: str
    model_cfg: Mapping[str, Any]
    kind: str = "reference"
    out_dir: str | None = None
    truncate: bool = False
    batch_size: int = 64
    name: str = field(default="control", init=False)

    def __post_init__(self) -> None:
        from ts2.models import load_tokenizer

        if self.kind not in KINDS:
            raise ValueError(
                f"sampler.kind={self.kind!r}: expected one of {list(KINDS)} (the base-model control is sampled "
                "with sampler=hf into runs/<name>/control=base/samples, then marked: python -m "
                "ts2.sampling.controls runs/<name>/control=base base)."
            )
        if self.batch_size < 1:
            raise ValueError(f"sampler.batch_size={self.batch_size} must be >= 1.")
        self.folder = control_folder(self.out_dir, self.kind)
        self.tokenizer = load_tokenizer(self.model_cfg, self.model_path)
        special = set(self.tokenizer.all_special_ids)
        self.vocab = [i for i in range(len(self.tokenizer)) if i not in special]
        self._answers: list[tuple[int | str, str]] | None = None

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "kind": self.kind,
            "truncate": self.truncate,
            "tokenizer": self.model_path,
            "vocab_drawn_from": len(self.vocab),
            "dtype": None,
        }

    def plan(self, num_prompts: int, n: int) -> list[Batch]:
        return [
            Batch(tuple(range(g, min(g + self.batch_size, num_prompts))), range(n))
            for g in range(0, num_prompts, self.batch_size)
        ]

    def use_prompts(self, records: Sequence[Any]) -> None:
        """The benchmark's prompt records (called by ts2.sample before generating): AlpacaEval's, each with
        the reference answer of its prompt id (checked by instruction). Then marks the control folder."""
        from ts2.eval.alpaca_data import NUM_PROMPTS, REFERENCE_GENERATOR, reference_outputs

        refs = reference_outputs()
        answers = []
        for r in records:
            pid, instruction = r.prompt_id, r.fields.get("instruction")
            ok = isinstance(pid, int) and 0 <= pid < NUM_PROMPTS and refs[pid]["instruction"] == instruction
            if not ok:
                raise ValueError(
                    f"sampler=control answers with the AlpacaEval reference answers ({REFERENCE_GENERATOR}); "
                    f"prompt {pid!r} is not an AlpacaEval prompt: use eval=alpaca_eval."
                )
            answers.append((pid, str(refs[pid]["output"])))
        self._answers = answers
        mark_control(self.folder, self.kind, self.model_cfg.get("id"), tokenizer=self.model_path)

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], batch: Batch, params: SamplingParams
    ) -> list[list[Generation]]:
        if self._answers is None:
            raise RuntimeError("ControlBackend.generate before use_prompts(records).")
        return [[self.answer(i, j, params) for j in batch.samples] for i in batch.prompts]

    def answer(self, index: int, sample_idx: int, params: SamplingParams) -> Generation:
        """Sample ``sample_idx`` of the ``index``-th prompt (module docstring)."""
        assert self._answers is not None
        pid, ref = self._answers[index]
        seed = derive_seed(params.seed, self.kind, pid, sample_idx)
        text = shuffled_words(ref, seed) if self.kind == "shuffled" else ref
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.kind == "random":
            ids = random_token_ids(len(ids), self.vocab, seed)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if self.truncate and len(ids) > params.max_new_tokens:
            ids = ids[: params.max_new_tokens]
            return Generation(self.tokenizer.decode(ids, skip_special_tokens=True), "length", len(ids))
        return Generation(text, "stop", len(ids))

    def close(self) -> None:
        self._answers = None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ts2.sampling.controls <folder> <kind> [--model ID]``: mark a folder as a control."""
    from ts2.runs import CONTROLS

    ap = argparse.ArgumentParser(prog="python -m ts2.sampling.controls", description=main.__doc__)
    ap.add_argument("folder", type=Path, help="the control folder, e.g. runs/table1_tiny/control=base")
    ap.add_argument("kind", choices=list(CONTROLS))
    ap.add_argument(
        "--model", default=None, help="the model id whose samples it holds (conf/model/<id>.yaml)"
    )
    args = ap.parse_args(argv)
    print(mark_control(args.folder, args.kind, args.model) / "run.json")


if __name__ == "__main__":
    from ts2 import cli

    cli.run(main, interrupted=cli.RERUN)
