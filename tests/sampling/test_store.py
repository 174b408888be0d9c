"""The append-only sample store: whole-line batches, torn tails, duplicates, locking."""

from __future__ import annotations

import json

import pytest

from ts2.sampling.store import SampleFileError, SampleStore, read_samples


def _row(pid, s, text="x"):
    return {
        "prompt_id": pid,
        "sample_idx": s,
        "prompt": "p",
        "completion": text,
        "finish_reason": "length",
        "num_tokens": 1,
    }


def test_append_then_resume_knows_the_finished_pairs(tmp_path):
    path = tmp_path / "b.jsonl"
    with SampleStore(path) as st:
        assert st.done == set()
        assert st.append([_row(0, 0), _row(0, 1), _row("HumanEval/3", 0)]) == 3
    with SampleStore(path) as st:
        assert st.done == {(0, 0), (0, 1), ("HumanEval/3", 0)}
        with pytest.raises(ValueError, match="twice"):
            st.append([_row(0, 1)])
        with pytest.raises(ValueError, match="twice"):
            st.append([_row(1, 0), _row(1, 0)])
        st.append([_row(1, 0)])
    assert [(r["prompt_id"], r["sample_idx"]) for r in read_samples(path)] == [
        (0, 0),
        (0, 1),
        ("HumanEval/3", 0),
        (1, 0),
    ]


def test_torn_last_line_is_truncated_and_never_counted(tmp_path):
    path = tmp_path / "b.jsonl"
    with SampleStore(path) as st:
        st.append([_row(0, 0), _row(0, 1)])
    whole = path.read_bytes()
    torn = json.dumps(_row(0, 2, "a long completion"))[:25]
    path.write_bytes(whole + torn.encode())
    assert len(read_samples(path)) == 2  # the torn line is not a sample
    with pytest.raises(SampleFileError, match="torn"):
        read_samples(path, allow_torn_tail=False)
    with SampleStore(path) as st:
        assert st.truncated_bytes == len(torn)
        assert st.done == {(0, 0), (0, 1)}
        st.append([_row(0, 2)])
    assert path.read_bytes().startswith(whole)
    assert len(read_samples(path, allow_torn_tail=False)) == 3


def test_a_file_that_is_only_a_torn_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"prompt_id": 0, "sam')
    with SampleStore(path) as st:
        assert st.done == set()
    assert path.read_bytes() == b""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt_id": 0}\n', r"b.jsonl:1: missing field 'sample_idx'"),
        (json.dumps(_row(0, 0)) + "\nnot json\n", r"b.jsonl:2: not a valid JSON line"),
        (
            json.dumps(_row(0, 0)) + "\n" + json.dumps(_row(0, 0)) + "\n",
            r"b.jsonl:2: duplicate .*first on line 1",
        ),
        (json.dumps({**_row(0, 0), "sample_idx": "0"}) + "\n", r"b.jsonl:1: .*sample_idx an int"),
    ],
)
def test_bad_files_are_errors_naming_line_and_field(tmp_path, content, message):
    path = tmp_path / "b.jsonl"
    path.write_text(content)
    with pytest.raises(SampleFileError, match=message):
        SampleStore(path).open()


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    path = tmp_path / "b.jsonl"
    with SampleStore(path):
        with pytest.raises(RuntimeError, match="Another process is writing"):
            SampleStore(path).open()
    with SampleStore(path):  # released on close
        pass


def test_meta_roundtrip_and_reset(tmp_path):
    path = tmp_path / "b.jsonl"
    with SampleStore(path) as st:
        assert st.read_meta() is None
        st.write_meta({"benchmark": "b", "n": 2})
        st.append([_row(0, 0)])
        st.reset()
        assert st.done == set()
        st.append([_row(0, 0, "again")])
    assert json.loads((tmp_path / "b.meta.json").read_text()) == {"benchmark": "b", "n": 2}
    assert [r["completion"] for r in read_samples(path)] == ["again"]


def test_a_failed_open_releases_the_lock(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text("garbage\n")
    with pytest.raises(SampleFileError):
        SampleStore(path).open()
    path.write_text("")
    with SampleStore(path) as st:
        assert st.done == set()
