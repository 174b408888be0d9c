"""ts2.cli: how every ``python -m ts2.<stage>`` ends (one line for Ctrl-C and refusals, a traceback for bugs).

In-process, with mains that raise; the real processes (SIGINT to ts2.train / ts2.sample, refusals on the
command line) are in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import os

import pytest
from hydra.errors import InstantiationException

from ts2 import cli
from ts2.paths import check_output_dir


def _exit(capsys, main, **kw) -> tuple[int, str]:
    with pytest.raises(SystemExit) as err:
        cli.run(main, **kw)
    return err.value.code, capsys.readouterr().err


def _refused(tmp_path):
    (tmp_path / "f").write_text("x")
    check_output_dir(tmp_path / "f" / "sub", "out_dir")  # raises NotADirectoryError inside ts2


def _interrupted():
    raise KeyboardInterrupt


def _bug():
    return {}["missing"]


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    code, err = _exit(capsys, _interrupted, interrupted=cli.RESUME)
    assert code == 130 and err.strip() == "interrupted; rerun the same command to resume"
    code, err = _exit(capsys, _interrupted, interrupted=cli.TRAIN)
    assert code == 130 and err.strip() == cli.TRAIN and "train.resume=true" in cli.TRAIN


def test_a_refusal_is_one_error_line_and_exit_1(capsys, tmp_path):
    code, err = _exit(capsys, lambda: _refused(tmp_path))
    assert code == 1
    assert (
        err.strip()
        == f"error: out_dir='{tmp_path}/f/sub': {tmp_path}/f is a file, not a folder: point out_dir "
        "at a folder (it is created if missing)."
    )


def test_a_refusal_wrapped_by_hydra_instantiate_shows_its_own_message(capsys, tmp_path):
    def main():
        try:
            _refused(tmp_path)
        except OSError as e:
            raise InstantiationException("Error in call to target 'x':\nNotADirectoryError(...)") from e

    code, err = _exit(capsys, main)
    assert code == 1 and err.startswith(f"error: out_dir='{tmp_path}/f/sub'") and len(err.splitlines()) == 1


def test_a_bug_keeps_its_traceback(capsys):
    code, err = _exit(capsys, _bug)
    assert code == 1 and "Traceback" in err and "KeyError: 'missing'" in err
    code, err = _exit(
        capsys, lambda: int("x")
    )  # a ValueError raised outside ts2 (here: this test) is a bug too
    assert code == 1 and "Traceback" in err


def test_hydra_full_error_shows_every_traceback_and_is_restored(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    code, err = _exit(capsys, lambda: _refused(tmp_path))
    assert code == 1 and "Traceback" in err and "is a file, not a folder" in err
    assert os.environ["HYDRA_FULL_ERROR"] == "1"
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    _exit(capsys, lambda: 0)
    assert "HYDRA_FULL_ERROR" not in os.environ  # set only while the main runs


def test_exit_status_is_mains_int_or_0(capsys):
    assert _exit(capsys, lambda: 2)[0] == 2
    assert _exit(capsys, lambda: None)[0] == 0
    assert _exit(capsys, lambda: "a path")[0] == 0


def test_task_decorator_exits_with_one_line_before_hydra_reports(capsys, tmp_path):
    @cli.task
    def job():
        _refused(tmp_path)

    with pytest.raises(SystemExit) as err:
        job()
    assert err.value.code == 1 and capsys.readouterr().err.startswith("error: out_dir=")

    @cli.task
    def broken():
        return _bug()

    with pytest.raises(KeyError):  # Hydra then reports the bug with its traceback
        broken()
