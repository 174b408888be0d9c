"""Supervised fine-tuning data for all methods (PAPER.md §3).

Paper scale: ``HuggingFaceH4/ultrafeedback_binarized``, split ``train_sft``, field ``messages``, shuffled
with seed 42. Offline: ``<data_dir>/ultrafeedback/*.jsonl`` rows ``{prompt, chosen}`` become
``[user: prompt, assistant: chosen]``.

Each conversation is rendered with the tokenizer's (the model's own) chat template; labels are ``-100``
everywhere except the tokens of assistant turns (content and end-of-turn token, not the whitespace a template
writes after that token, e.g. ChatML's newline), found from the character spans of each assistant turn in the
rendered text. Sequences are truncated to ``max_length``.

Bad rows (a line that is not UTF-8 or not JSON, no or empty assistant turn, wrong types) and rows whose whole
answer is truncated away are
skipped, counted and listed with their id and reason in ``<run_dir>/skipped_rows.jsonl``;
``data.strict=true`` makes the first one an error naming the row.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ts2.paths import data_dir

IGNORE_INDEX = -100


class BadRow(ValueError):
    """A training row that cannot be used; the message names the row and the reason."""


@dataclass
class SFTData:
    """Tokenised examples plus an account of what was skipped and why."""

    examples: list[dict[str, list[int]]]
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s["reason"].split(":")[0] for s in self.skipped))

    def write_skipped(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / "skipped_rows.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for s in self.skipped:
                fh.write(json.dumps(s) + "\n")
        return path


def _local_rows(cfg: Any) -> list[tuple[str, Any]]:
    root = Path(cfg.get("local_dir") or data_dir())
    files = sorted(root.glob(cfg.local_glob))
    if not files:
        raise FileNotFoundError(
            f"data.local_glob={cfg.local_glob!r} matches no file under {root}: point data.local_dir= (or "
            "TS2_DATA_DIR) at the folder that holds it, or fix data.local_glob."
        )
    rows: list[tuple[str, Any]] = []
    for f in files:
        for lineno, raw in enumerate(f.read_bytes().split(b"\n"), 1):
            where = f"{f.name}:{lineno}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:  # named by file:line, never echoed (it can be kilobytes)
                rows.append(
                    (
                        where,
                        BadRow(f"bad_encoding: byte {err.start + 1} of the line is not UTF-8 ({err.reason})"),
                    )
                )
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                rows.append((where, BadRow(f"invalid JSON ({err.msg})")))
                continue
            if not isinstance(row, dict):
                rows.append((where, BadRow("row is not a JSON object")))
                continue
            rid = f"{f.stem}/{row.get('source_index', lineno)}"
            prompt, chosen = row.get(cfg.prompt_field), row.get(cfg.response_field)
            rows.append(
                (rid, [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}])
            )
    return rows


def _hub_rows(cfg: Any) -> list[tuple[str, Any]]:
    import datasets

    ds = datasets.load_dataset(cfg.hub_name, split=cfg.split, revision=cfg.get("revision"))
    if (
        cfg.get("shuffle_seed") is not None
    ):  # the official order: datasets' own shuffle (numpy PCG64 permutation)
        ds = ds.shuffle(seed=cfg.shuffle_seed)
    ids = ds[cfg.id_field] if cfg.get("id_field") and cfg.id_field in ds.column_names else range(len(ds))
    return [(f"{cfg.split}/{i}", m) for i, m in zip(ids, ds[cfg.messages_field], strict=True)]


def load_conversations(cfg: Any) -> list[tuple[str, Any]]:
    """(row id, messages) pairs from the configured source, shuffled with ``cfg.shuffle_seed``.

    Hub data is shuffled as the official code does, ``Dataset.shuffle(seed=42)`` (a numpy PCG64 permutation), so
    the rows come in the official order; the local subset keeps Python's ``random.Random(seed).shuffle`` (the
    order every tiny-scale result was made with).
    """
    if cfg.source == "local":
        rows = _local_rows(cfg)
        if cfg.get("shuffle_seed") is not None:
            import random

            random.Random(cfg.shuffle_seed).shuffle(rows)
    elif cfg.source == "hub":
        rows = _hub_rows(cfg)
    else:
        raise ValueError(f"data.source must be 'local' or 'hub', got {cfg.source!r}.")
    if cfg.get("limit"):
        rows = rows[: cfg.limit]
    return rows


def _check_messages(messages: Any) -> None:
    if isinstance(messages, BadRow):
        raise messages
    if not isinstance(messages, list) or not messages:
        raise BadRow("bad_type: messages must be a non-empty list")
    has_answer = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRow(f"bad_type: message {i} is not a {{role, content}} object")
        if not isinstance(m.get("content"), str):
            raise BadRow(
                f"bad_type: message {i} ({m['role']}) content is {type(m.get('content')).__name__}, not str"
            )
        if m["role"] == "assistant":
            if not m["content"].strip():
                raise BadRow(f"empty_answer: assistant message {i} is empty")
            has_answer = True
    if not has_answer:
        raise BadRow("no_answer: no assistant turn")


def _turn_end(tokenizer: Any, upto: str, start: int) -> int:
    """End of an assistant turn's labelled text: the template's text up to its end-of-turn token.

    Whitespace a template writes *after* the end-of-turn special token (ChatML: ``<|im_end|>\\n``) separates
    turns; the model never generates it (sampling stops at the end-of-turn token), so it is not a target.
    Llama-3.1's turn ends with ``<|eot_id|>`` itself, so nothing changes there.
    """
    stripped = upto.rstrip()
    if len(stripped) < len(upto) and len(stripped) > start:
        specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
        if any(stripped.endswith(t) for t in specials):
            return len(stripped)
    return len(upto)


def tokenize_conversation(
    messages: list[dict[str, str]], tokenizer: Any, max_length: int
) -> dict[str, list[int]]:
    """Render with the chat template; label only assistant-turn tokens; truncate to ``max_length``."""
    _check_messages(messages)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (upto.startswith(head) and full.startswith(upto)):
            raise ValueError(
                "The chat template does not render conversations prefix-consistently, so assistant spans "
                "cannot be located; use a template in which each turn only appends text."
            )
        spans.append((len(head), _turn_end(tokenizer, upto, len(head))))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (start, _end) in enumerate(offsets):
        if any(a <= start < b for a, b in spans):
            labels[t] = ids[t]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE_INDEX for x in labels):
        raise BadRow(f"truncated: every answer token lies beyond max_length={max_length}")
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def build_sft_dataset(cfg: Any, tokenizer: Any, max_length: int) -> SFTData:
    """Tokenise every row; collect skipped rows (or raise on the first one when ``cfg.strict``)."""
    from tqdm.auto import tqdm

    out = SFTData(examples=[])
    for rid, messages in tqdm(load_conversations(cfg), desc="tokenising", unit="row", mininterval=2):
        try:
            out.examples.append(tokenize_conversation(messages, tokenizer, max_length))
        except BadRow as err:
            if cfg.get("strict"):
                raise BadRow(f"data row {rid}: {err} (data.strict=true)") from err
            out.skipped.append({"id": rid, "reason": str(err)})
    if not out.examples:
        raise ValueError(
            f"The training set is empty after filtering ({len(out.skipped)} rows skipped: {out.skip_counts}). "
            "Check data.* settings and model.max_length."
        )
    return out
