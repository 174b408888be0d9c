"""`ts2.runs`: run.json reading and the log rule a resume relies on. Claiming and starting a folder are exercised
end to end in tests/test_train.py; reading folders back into records in tests/test_records.py."""

from __future__ import annotations

import json

import pytest

from ts2.runs import read_json, run_meta, trim_log

LOG = (
    '{"step": 1, "loss": 5.0, "ce": 4.5, "entropy": 3.0, "support_size": 7.0}\n'
    '{"step": 2, "loss": 4.0}\n'
    '{"step": 3, "loss": 3.0, "ce": 2.25, "entropy": 1.5}\n'
    '{"step": 4, "loss": 2.'  # torn: the run was killed while writing
)


def test_run_json_reading_and_the_resume_log_rule(tmp_path):
    assert run_meta(tmp_path) == {}
    (tmp_path / "run.json").write_text('{"status": "runn')
    with pytest.raises(ValueError, match=r"run.json is not valid JSON .*interrupted or foreign process"):
        run_meta(tmp_path)
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(tmp_path / "run.json")
    log = tmp_path / "train_log.jsonl"
    log.write_text(LOG)
    trim_log(log, 2)  # a resume from checkpoint-2: steps 3+ are trained again, the torn line goes
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    assert json.loads(log.read_text().splitlines()[0]) == {
        "step": 1,
        "loss": 5.0,
        "ce": 4.5,
        "entropy": 3.0,
        "support_size": 7.0,
    }
