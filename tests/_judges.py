"""Scripted judges and judge controls scored through the real pipeline (issue #19 item 2a), for the claim and
report tests: control answers from :class:`ts2.sampling.controls.ControlBackend`, rewards from a scripted "reward
model", win rates from :func:`ts2.eval.alpaca_eval.evaluate_alpaca_eval`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ts2.eval.alpaca_data import reference_outputs
from ts2.sampling.backends import SamplingParams
from ts2.sampling.controls import ControlBackend
from ts2.sampling.prompts import alpaca_eval

_WORDS = re.compile(r"\w+")


class SaneJudge:
    """Reward = the share of the answer's words that occur in the reference answer of its instruction plus the
    share of its word bigrams that do: 2 for the reference itself, about 1 for its words shuffled, ~0 for noise."""

    fingerprint = "sane-v1"
    quirk = True

    def __init__(self) -> None:
        self.refs = {r["instruction"]: r["output"] for r in reference_outputs()}

    def score(self, instructions, responses, templated_prompts=None, *, desc=""):
        out = []
        for instruction, r in zip(instructions, responses, strict=True):
            ref = [w.lower() for w in _WORDS.findall(self.refs[instruction])]
            words = [w.lower() for w in _WORDS.findall(r)]
            bigrams = list(zip(words, words[1:], strict=False))
            uni = sum(w in set(ref) for w in words) / max(len(words), 1)
            bi = sum(b in set(zip(ref, ref[1:], strict=False)) for b in bigrams) / max(len(bigrams), 1)
            out.append(uni + bi)
        return np.array(out)


class NoiseLovingJudge(SaneJudge):
    """The sane judge's reward negated: the fewer of the answer's words and bigrams occur in the reference, the
    higher the reward, so random tokens rank above the shuffled reference, which ranks above the reference."""

    fingerprint = "noise-loving-v1"

    def score(self, instructions, responses, templated_prompts=None, *, desc=""):
        return -super().score(instructions, responses, templated_prompts, desc=desc)


def control_metrics(root: Path, kind: str, tokenizer_dir: Path, judge, prompts: int = 12) -> dict:
    """Write control ``kind``'s AlpacaEval samples (1 per prompt) into ``root/control=<kind>/samples`` with the
    backend, score them with ``judge`` and write ``metrics/alpaca_eval.json``; returns the metrics file."""
    from ts2.eval.alpaca_eval import evaluate_alpaca_eval

    out = root / f"control={kind}" / "samples"
    backend = ControlBackend(str(tokenizer_dir), {"id": "tiny"}, kind=kind, out_dir=str(out))
    records = alpaca_eval()[:prompts]
    backend.use_prompts(records)
    params = SamplingParams(1, 1.0, None, 1.0, 48, 42)
    lines = []
    for i, rec in enumerate(records):
        g = backend.answer(i, 0, params)
        lines.append(
            {
                "prompt_id": rec.prompt_id,
                "sample_idx": 0,
                "prompt": "",
                "completion": g.text,
                "finish_reason": g.finish_reason,
                "num_tokens": g.num_tokens,
                **rec.fields,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "alpaca_eval.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    refs = reference_outputs()
    ref_rewards = {
        i: float(judge.score([refs[i]["instruction"]], [refs[i]["output"]])[0]) for i in range(prompts)
    }
    res = evaluate_alpaca_eval(
        path, rm=judge, ref_rewards=ref_rewards, n_max=1, prompt_ids=list(range(prompts))
    )
    body = {
        "benchmark": "alpaca_eval",
        "scale": "tiny-scale",
        "complete": True,
        "metrics": {"win_rate@1": res["win_rate"][1]},
        "ci": {"win_rate@1": res["ci95"][1]},
        "per_prompt": {"win_rate@1": res["per_prompt"][1]},
        "prompt_ids": res["prompt_ids"],
        "num_prompts": res["num_prompts"],
        "num_samples": res["num_samples"],
    }
    (out.parent / "metrics").mkdir(exist_ok=True)
    (out.parent / "metrics" / "alpaca_eval.json").write_text(json.dumps(body))
    return body
