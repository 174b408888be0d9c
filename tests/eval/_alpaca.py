"""Shared helpers of the AlpacaEval tests: the instructions, a sample-file writer and a float "reward model"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ts2.paths import data_dir

AE_DIR = data_dir() / "alpaca_eval"
INSTR = [
    json.loads(line)["instruction"]
    for line in open(AE_DIR / "alpaca_eval_instructions.jsonl", encoding="utf-8")
]


def sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def templated(instruction: str) -> str:
    return f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"


def write_samples(
    path: Path, table: dict[int, list[str]], *, extra: list[dict] | None = None, **overrides
) -> Path:
    """Sample file in the sampling stage's format: one line per (prompt, sample)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for pid, completions in table.items():
            for j, c in enumerate(completions):
                row = {
                    "prompt_id": pid,
                    "sample_idx": j,
                    "prompt": templated(INSTR[pid]),
                    "completion": c,
                    "finish_reason": "stop",
                    "num_tokens": len(c.split()),
                    "instruction": INSTR[pid],
                }
                row.update(overrides)
                fh.write(json.dumps(row) + "\n")
        for row in extra or []:
            fh.write(json.dumps(row) + "\n")
    return path


class FloatScorer:
    """Reward = the completion parsed as a float; counts the items it scores."""

    fingerprint = "float-scorer-v1"
    quirk = True

    def __init__(self) -> None:
        self.calls = 0

    def score(self, instructions, responses, templated_prompts=None, *, desc=""):
        self.calls += len(responses)
        return np.array([float(r) for r in responses])


# Hand example: 3 prompts x 4 samples and reference rewards.
REWARDS = {0: [1.0, 3.0, 0.0, 2.0], 1: [-1.0, -2.0, 0.5, 0.0], 2: [2.0, 2.0, 2.0, 2.0]}
REF = {0: 1.0, 1: 0.0, 2: 3.0}
EXPECTED = {  # best of the first n: n=1 -> (1, -1, 2), n=2 -> (3, -1, 2), n=4 -> (3, 0.5, 2)
    1: 100 * (sig(0.0) + sig(-1.0) + sig(-1.0)) / 3,
    2: 100 * (sig(2.0) + sig(-1.0) + sig(-1.0)) / 3,
    4: 100 * (sig(2.0) + sig(0.5) + sig(-1.0)) / 3,
}

# conf/evaluate.yaml's diversity block with the offline defaults and no embedding cache (scorer tests)
DIVERSITY = {
    "self_bleu_mode": "paper",
    "text": "templated",
    "model": None,
    "max_seq_length": None,
    "batch_size": 64,
    "num_workers": 1,
    "embedding_cache": False,
}
