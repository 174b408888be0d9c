"""The sample store: the `Sample` record and its one reader, whole-line batches, torn tails, duplicates, locking."""

from __future__ import annotations

import json

import pytest

from ts2.sampling.store import (
    REQUIRED_FIELDS,
    Sample,
    SampleFileError,
    SampleStore,
    group_by_prompt,
    prefix_count,
    read_samples,
    repair_torn_tail,
    split_torn_tail,
)


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


# ------------------------------------------------------------------------------------ the Sample record
def test_read_samples_gives_sample_records_with_extras(tmp_path):
    path = tmp_path / "b.jsonl"
    rows = [
        {**_row("HumanEval/3", 1), "instruction": "do it", "reference": "A"},
        {"prompt_id": 7, "sample_idx": 0, "completion": "bare"},  # a file made elsewhere: core fields only
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = read_samples(path)
    assert (a.prompt_id, a.sample_idx, a.prompt, a.completion) == ("HumanEval/3", 1, "p", "x")
    assert (a.finish_reason, a.num_tokens, a.line) == ("length", 1, 1)
    assert a.fields == {"instruction": "do it", "reference": "A"}
    assert a.to_dict() == rows[0] and list(a)[:6] == list(REQUIRED_FIELDS)  # the line, in the sampler's order
    assert a["reference"] == "A" and a["completion"] == "x" and a.get("missing", 0) == 0
    assert (b.prompt, b.finish_reason, b.num_tokens, b.fields, b.line) == (None, None, None, {}, 2)
    assert a == Sample("HumanEval/3", 1, "p", "x", "length", 1, {"instruction": "do it", "reference": "A"})


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"task_id": "HumanEval/0", "sample_idx": 0, "completion": ""}, "missing field 'prompt_id'.*task_id"),
        ({"prompt_id": True, "sample_idx": 0, "completion": ""}, "prompt_id must be int or str, got bool"),
        ({"prompt_id": 0, "sample_idx": -1, "completion": ""}, "'sample_idx' must be int >= 0"),
        ({"prompt_id": 0, "sample_idx": 0, "completion": None}, "'completion' must be str"),
        ({**_row(0, 0), "num_tokens": "3"}, "'num_tokens' must be int or null"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(_row(5, 0)) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SampleFileError, match=f"b.jsonl:2: {message}"):
        read_samples(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_samples(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    assert read_samples(tmp_path / "empty.jsonl") == []


def test_torn_tail_repair_drops_a_cut_line_and_completes_a_whole_one(tmp_path):
    path = tmp_path / "b.jsonl"
    whole = json.dumps(_row(0, 0)) + "\n"
    assert split_torn_tail(whole.encode() + b'{"prompt_id": 0, "sa') == (
        whole.encode(),
        b'{"prompt_id": 0, "sa',
    )
    last = json.dumps(_row(0, 1))  # complete record, newline lost: the write stopped right before "\n"
    assert split_torn_tail((whole + last).encode()) == ((whole + last + "\n").encode(), b"")
    path.write_text(whole + last)
    assert len(read_samples(path)) == 2
    assert repair_torn_tail(path) == 0 and path.read_text() == whole + last + "\n"
    path.write_text(whole + last[:9])
    assert repair_torn_tail(path) == 9 and path.read_text() == whole
    assert repair_torn_tail(tmp_path / "none.jsonl") == 0


def test_group_by_prompt_and_prefix_count():
    samples = [Sample(p, j, "", str(j), None, None) for p, j in [(2, 1), (1, 0), (2, 0), (2, 3), (1, 1)]]
    by = group_by_prompt(samples)
    assert list(by) == [2, 1]  # first appearance
    assert [s.sample_idx for s in by[2]] == [0, 1, 3] and [s.sample_idx for s in by[1]] == [0, 1]
    assert prefix_count(by[2]) == 2 and prefix_count(by[1]) == 2 and prefix_count([]) == 0


# Resuming a samples file (start_samples, check_resumable; moved here from ts2.runs)


class _Backend:
    name = "hf"

    def info(self):
        return {"backend": "hf", "dtype": "float32"}


def _sampling_cfg(**sample):
    from omegaconf import OmegaConf

    base = {
        "n": 2,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": 8,
        "seed": 0,
        "stop": None,
    }
    return OmegaConf.create(
        {
            "eval": {"id": "b", "prompts": {"_target_": "builder", "data_dir": "/data"}},
            "sample": {**base, "limit": None, **sample},
            "sampler": {"id": "hf"},
            "overwrite": False,
        }
    )


def test_start_samples_resumes_only_with_the_same_settings(tmp_path):
    from ts2.models.source import ModelSource
    from ts2.sampling.store import start_samples

    src = ModelSource("m", {}, {"model_path": "/models/m"})
    records, wanted = ["a", "b"], {(p, s) for p in ("a", "b") for s in range(2)}
    path = tmp_path / "b.jsonl"
    with SampleStore(path) as store:
        meta = start_samples(store, _sampling_cfg(), _Backend(), src, records, wanted)
        store.append([_row("a", 0)])
    assert (meta["num_prompts"], meta["expected_samples"], meta["written_samples"]) == (2, 4, 0)
    assert meta["fingerprint"] == {
        "model_path": "/models/m",
        "backend": "hf",
        "dtype": "float32",
        "sample": {
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "max_new_tokens": 8,
            "seed": 0,
            "stop": None,
        },
        "prompts": {"_target_": "builder"},  # where the data lives is not what the samples are
    }
    assert json.loads(path.with_suffix(".meta.json").read_text())["fingerprint"] == meta["fingerprint"]
    with SampleStore(path) as store:  # the same settings: resumes, the finished pair counted
        assert start_samples(store, _sampling_cfg(), _Backend(), src, records, wanted)["written_samples"] == 1
    with SampleStore(path) as store:
        with pytest.raises(
            RuntimeError, match=r"sampled with other settings: \{'sample': .*'temperature': 1\.0"
        ):
            start_samples(store, _sampling_cfg(temperature=0.7), _Backend(), src, records, wanted)
        with pytest.raises(RuntimeError, match=r"holds 1 \(prompt, sample\) pairs beyond sample.n=2"):
            start_samples(store, _sampling_cfg(), _Backend(), src, records, {("b", 0)})
        hot = _sampling_cfg(temperature=0.7)
        hot.overwrite = True
        assert start_samples(store, hot, _Backend(), src, records, wanted)["written_samples"] == 0
    assert read_samples(path) == []


def test_a_file_without_its_meta_is_not_extended(tmp_path):
    from ts2.sampling.store import check_resumable

    with pytest.raises(RuntimeError, match="has samples but no meta file"):
        check_resumable(tmp_path / "b.jsonl", None, {"seed": 0})
    check_resumable(tmp_path / "b.jsonl", {"fingerprint": {"seed": 0}}, {"seed": 0})  # same: accepted
