"""OpenLLM generalisation, the official TS²/GEM protocol (PAPER.md §4) — not lm-eval-harness.

Zero-shot generative: each question gets N samples and each sample is parsed into an answer (a choice
letter, or a number for GSM8K); unparsable samples count as wrong. For n in ``ns`` (1, 4, 8, 16, 32 by
default, capped at N), over the first n samples of each question:

- majority-vote accuracy = mean over questions of [most frequent parsed answer == gold]
  (ties broken by the answer that appeared first; no parsable answer = wrong);
- any-correct accuracy (best-of-n) = mean over questions of [some sample's answer == gold];

both ×100. Two parsers (``eval.metrics.parser``):

``paper`` (default; reproduces the official evaluation, quirks included)
    Multiple choice: scan the text left to right, case-insensitively, for either "The answer is X"
    (optionally "is:" / "is -") or a standalone letter A-E followed by whitespace, ".", ")", ":", "," or a
    literal "$"; the **last** hit wins, whichever kind it is. Only when there is no hit, the first choice whose
    text occurs in the response (case-insensitive) gives the letter. So "The answer is: C. This is a good
    choice." reads **A**: the article "a" in "a good" is a later standalone letter than C.
    GSM8K: the text after the last "The answer is" (or "the answer is"), its first number
    (``[-+]?\\d*[.,/]?\\d+``, commas then removed), compared as a *string* with the gold, which is the text
    after "####" up to the first character that is not a digit, "." or "-": a thousands comma cuts it
    ("2,125" -> gold "2"; 14 of the 1,319 test problems). "The answer is: **18**" reads 18.
``strict`` (correct mode)
    The last "The answer is: X" only (X a letter, or a number with thousands separators, "$" allowed);
    numbers compared by value; the gold is the full number after "####". "…C. This is a good choice."
    after "The answer is: C" reads C; "The answer is: **18**" reads nothing.

A run on the first ``limit`` questions of a task (``limit=20`` of GSM8K's 1,319) is a subset, not the task's
accuracy: its result is marked incomplete ("limit=20 of 1319 questions"), as the harness protocol marks a
limited run (:mod:`ts2.eval.openllm_harness`), so a table shows it with the partial mark.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from ts2.eval.result import ScoreResult

PARSERS = ("paper", "strict")
DEFAULT_NS = (1, 4, 8, 16, 32)
LETTERS = "ABCDE"

# strict (correct) mode
_MC = re.compile(r"answer is\s*:?\s*\(?\s*([A-E])\b", re.IGNORECASE)
_NUM = re.compile(r"answer is\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)

# paper mode: one left-to-right scan with two alternatives; the last match of either kind is the answer
_PAPER_MC = re.compile(
    r"the\s+answer\s+is\s*[:\-]?\s*(?P<said>[a-e])\b"  # "The answer is: X" / "the answer is X"
    r"|\b(?P<bare>[a-e])\b(?=[\s.):,$])",  # a standalone letter; in [...] "$" is a literal dollar sign
    re.IGNORECASE,
)
_PAPER_NUM = re.compile(r"[-+]?\d*[.,/]?\d+")  # at most one separator: "1,234,567" -> "1,234"
_PAPER_GOLD = re.compile(r"[0-9.\-]+")  # digits, "." and "-": stops at a thousands comma


# ----------------------------------------------------------------------------------------------- parsers
def parse_choice_paper(text: str, choices: Sequence[str] | None = None) -> str | None:
    """The official multiple-choice reading (module docstring): last "The answer is X" or standalone
    letter, else the first choice whose text the response contains."""
    found = None
    for m in _PAPER_MC.finditer(text):
        found = (m.group("said") or m.group("bare")).upper()
    if found:
        return found
    low = text.lower()
    for i, choice in enumerate(choices or []):
        if str(choice).lower() in low:
            return LETTERS[i]
    return None


def parse_number_paper(text: str) -> str | None:
    """The official GSM8K reading: first number after the last "The answer is", commas removed (a string)."""
    parts = text.replace("the answer is", "The answer is").split("The answer is")
    if len(parts) < 2:
        return None
    m = _PAPER_NUM.search(parts[-1].strip())
    return m.group(0).replace(",", "") if m else None


def gold_number_paper(reference_raw: str) -> str | None:
    """The official GSM8K gold: the text after "####" up to the first character not in [0-9.-]."""
    m = _PAPER_GOLD.match(str(reference_raw).strip())
    return m.group(0) if m else None


def _number(text: str) -> str:
    value = float(text.replace(",", ""))
    return str(int(value)) if value.is_integer() else str(value)


def parse_answer(
    text: str, *, numeric: bool, parser: str = "strict", choices: Sequence[str] | None = None
) -> str | None:
    """A sample's answer under ``parser`` (``strict``: the last "The answer is: X"; ``paper``: the official
    rules): a letter, or a number string (``strict``: normalised by value; ``paper``: as written)."""
    if parser == "paper":
        return parse_number_paper(text) if numeric else parse_choice_paper(text, choices)
    if parser != "strict":
        raise ValueError(f"eval.metrics.parser={parser!r}: expected one of {PARSERS}.")
    hits = (_NUM if numeric else _MC).findall(text)
    if not hits:
        return None
    return _number(hits[-1]) if numeric else hits[-1].upper()


def gold_answer(
    reference: Any, *, numeric: bool, parser: str = "strict", reference_raw: Any = None
) -> str | None:
    """The gold answer as the parser compares it (GSM8K ``paper``: from ``reference_raw``, comma quirk)."""
    if not numeric:
        return str(reference).strip().upper()
    if parser == "paper":
        return gold_number_paper(reference_raw if reference_raw is not None else reference)
    return _number(str(reference))


# ----------------------------------------------------------------------------------------------- metrics
def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent non-None answer; ties go to the one that appeared first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def score_questions(
    questions: Sequence[tuple[str | None, Sequence[str | None]]], ns: Sequence[int] = DEFAULT_NS
) -> tuple[dict[str, float], dict[str, Any], dict[str, list[float]]]:
    """``questions``: (gold answer, parsed answers in sample order) per question ->
    (metrics ×100, details, per-question values of each accuracy metric ×100)."""
    if not questions:
        raise ValueError("No questions to score.")
    n_max = min(len(a) for _, a in questions)
    if n_max == 0:
        raise ValueError("A question has no samples.")
    grid = sorted({n for n in ns if n <= n_max} | {n_max})
    metrics: dict[str, float] = {}
    per: dict[str, list[float]] = {}
    for n in grid:
        per[f"majority@{n}"] = [100.0 * (g is not None and majority(a[:n]) == g) for g, a in questions]
        per[f"any@{n}"] = [100.0 * (g is not None and g in a[:n]) for g, a in questions]
    for k, v in per.items():
        metrics[k] = sum(v) / len(v)
    total = sum(len(a) for _, a in questions)
    metrics["parse_rate"] = 100.0 * sum(x is not None for _, a in questions for x in a) / total
    return metrics, {"num_prompts": len(questions), "num_samples": total, "n_max": n_max, "ns": grid}, per


def score(samples: Sequence[Any], cfg: Any) -> ScoreResult:
    """Scorer of ``openllm_*`` (``metrics.scorer``): majority-vote / any-correct accuracy at n = 1, ..., N.

    ``cfg.eval.metrics``: ``numeric`` (GSM8K), ``ns``, ``parser`` (``paper`` | ``strict``, module docstring).
    Each sample needs the ``reference`` field (and ``choices`` for the paper MC fallback, ``reference_raw``
    for the paper GSM8K gold), as :func:`ts2.sampling.prompts.openllm` writes them.
    """
    m = cfg.eval.metrics
    numeric = bool(m.get("numeric", False))
    parser = m.get("parser", "paper") or "paper"
    if parser not in PARSERS:
        raise ValueError(f"eval.metrics.parser={parser!r}: expected one of {PARSERS}.")
    ns = list(m.get("ns") or DEFAULT_NS)
    groups: dict[Any, list[Any]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.sample_idx):
        groups[s.prompt_id].append(s)
    questions = []
    for pid, group in groups.items():
        first = group[0]
        if first.get("reference") is None:
            raise ValueError(
                f"openllm sample ({pid}, {first.sample_idx}): no 'reference' field (line {getattr(first, 'line', '?')})."
            )
        if parser == "paper" and numeric and first.get("reference_raw") is None:
            raise ValueError(
                f"openllm sample ({pid}, {first.sample_idx}): parser=paper needs 'reference_raw' (the text after "
                f"####); resample with ts2.sampling.prompts.openllm or use eval.metrics.parser=strict."
            )
        gold = gold_answer(
            first["reference"], numeric=numeric, parser=parser, reference_raw=first.get("reference_raw")
        )
        choices = first.get("choices")
        answers = [parse_answer(s.completion, numeric=numeric, parser=parser, choices=choices) for s in group]
        questions.append((gold, answers))
    metrics, details, per = score_questions(questions, ns)
    sizes = {len(a) for _, a in questions}
    notes = []
    if len(sizes) > 1:
        notes.append(f"questions have {min(sizes)}..{max(sizes)} samples; n capped at {min(sizes)}")
    limit = cfg.get("limit")
    if limit:  # the first `limit` questions (ts2.evaluate's coverage keeps them): how many the task has
        from hydra.utils import instantiate

        details["questions_of_task"] = total = len(instantiate(cfg.eval.prompts))
        if limit < total:
            notes.append(f"limit={limit} of {total} questions: a subset, not the task's accuracy")
    complete = not notes
    note = "INCOMPLETE: " + "; ".join(notes) if notes else None
    details.update(parser=parser, numeric=numeric)
    return ScoreResult(
        metrics=metrics,
        num_prompts=details["num_prompts"],
        num_samples=details["num_samples"],
        complete=complete,
        per_prompt=per,
        prompt_ids=list(groups),
        details=details,
        note=note,
    )
