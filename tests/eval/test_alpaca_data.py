"""Tests for `ts2.eval.alpaca_data`: AlpacaEval sample checks name the file and line; string ids and prompt-only
rows are accepted."""

from __future__ import annotations

import json

import pytest

import ts2.eval.alpaca_data as ad
from tests.eval._alpaca import INSTR, templated, write_samples
from ts2.sampling.store import read_samples


def read(path):
    return ad.alpaca_samples(read_samples(path), path)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            {"prompt_id": 805, "sample_idx": 0, "completion": "x", "instruction": "y"},
            "not an AlpacaEval index",
        ),
        ({"prompt_id": -1, "sample_idx": 0, "completion": "x"}, "not an AlpacaEval index"),
        ({"prompt_id": True, "sample_idx": 0, "completion": "x"}, "prompt_id must be int or str"),
        (
            {"prompt_id": 3, "sample_idx": 0, "completion": "x", "instruction": "Something else"},
            "does not match AlpacaEval prompt 3",
        ),
        (
            {"prompt_id": 3, "sample_idx": 0, "completion": "x", "prompt": "no instruction here"},
            "does not contain",
        ),
        ({"prompt_id": 3, "sample_idx": 0, "completion": "x"}, "needs an 'instruction'"),
        ({"prompt_id": 3, "sample_idx": -2, "completion": "x", "instruction": INSTR[3]}, "sample_idx"),
        ({"prompt_id": 3, "sample_idx": 0, "instruction": INSTR[3]}, "missing field 'completion'"),
        (
            {"prompt_id": 3, "sample_idx": 0, "completion": 7, "instruction": INSTR[3]},
            "'completion' must be str",
        ),
        (
            {"prompt_id": 0, "sample_idx": 0, "completion": "dup", "instruction": INSTR[0]},
            "duplicate .*first on line 1",
        ),
    ],
)
def test_malformed_rows_name_the_line(tmp_path, row, match):
    path = write_samples(tmp_path / "s.jsonl", {0: ["1"]}, extra=[row])
    with pytest.raises(ValueError, match=match) as info:
        read(path)
    assert f"{path}:2:" in str(info.value)


def test_missing_and_unparseable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt_id": 0, "sample_idx": 0, "completion": "1", "instruction": INSTR[0]})
        + "\n{oops\n"
    )
    with pytest.raises(ValueError, match=rf"{bad}:2: not a valid JSON line"):
        read(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no samples"):
        read(empty)


def test_string_ids_and_prompt_only_rows_are_accepted(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"prompt_id": "12", "sample_idx": 0, "completion": "0.0", "prompt": templated(INSTR[12])})
        + "\n"
    )
    [s] = read(path)
    assert (s.prompt_id, s.sample_idx, s.completion) == (12, 0, "0.0")
    row = {"prompt_id": 12, "sample_idx": 0, "completion": "x", "instruction": "  " + INSTR[12] + "\n"}
    path.write_text(json.dumps(row) + "\n")  # surrounding whitespace (a stripped copy) still matches
    assert [s.prompt_id for s in read(path)] == [12]
