"""OpenLLM generalisation, the official TS²/GEM protocol (PAPER.md §4) — not lm-eval-harness.

Zero-shot generative: each question gets N samples; the answer of a sample is the last
"The answer is: X" in it (X a choice letter, or a number for GSM8K); unparsable samples count as wrong.
For n in ``ns`` (1, 4, 8, 16, 32 by default, capped at N), over the first n samples of each question:

- majority-vote accuracy = mean over questions of [most frequent parsed answer == gold]
  (ties broken by the answer that appeared first; no parsable answer = wrong);
- any-correct accuracy (best-of-n) = mean over questions of [some sample's answer == gold];

both ×100. GSM8K answers and references are compared as numbers with thousands separators removed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

_MC = re.compile(r"answer is\s*:?\s*\(?\s*([A-E])\b", re.IGNORECASE)
_NUM = re.compile(r"answer is\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
DEFAULT_NS = (1, 4, 8, 16, 32)


def parse_answer(text: str, *, numeric: bool) -> str | None:
    """The last "The answer is: X" of ``text``: an upper-case letter, or a normalised number string."""
    hits = (_NUM if numeric else _MC).findall(text)
    if not hits:
        return None
    ans = hits[-1]
    if not numeric:
        return ans.upper()
    value = float(ans.replace(",", ""))
    return str(int(value)) if value.is_integer() else str(value)


def _norm_ref(ref: Any, numeric: bool) -> str:
    if not numeric:
        return str(ref).strip().upper()
    value = float(str(ref).replace(",", ""))
    return str(int(value)) if value.is_integer() else str(value)


def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent non-None answer; ties go to the one that appeared first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def score(questions: Sequence[tuple[Any, Sequence[str]]], *, numeric: bool, ns: Sequence[int] = DEFAULT_NS):
    """``questions``: (gold, completions in sample order) per question -> metrics dict (×100) and details."""
    if not questions:
        raise ValueError("No questions to score.")
    n_max = min(len(c) for _, c in questions)
    grid = sorted({n for n in ns if n <= n_max} | {n_max})
    parsed = [
        (_norm_ref(g, numeric), [parse_answer(c, numeric=numeric) for c in comps]) for g, comps in questions
    ]
    metrics: dict[str, float] = {}
    for n in grid:
        maj = [majority(a[:n]) == g for g, a in parsed]
        anyc = [g in a[:n] for g, a in parsed]
        metrics[f"majority@{n}"] = 100.0 * sum(maj) / len(maj)
        metrics[f"any@{n}"] = 100.0 * sum(anyc) / len(anyc)
    total = sum(len(a) for _, a in parsed)
    metrics["parse_rate"] = 100.0 * sum(x is not None for _, a in parsed for x in a) / total
    return metrics, {"num_prompts": len(parsed), "num_samples": total, "n_max": n_max, "ns": grid}
