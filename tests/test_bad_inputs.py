"""Bad input to every stage gives a clear error naming the key or file, and changes nothing on disk (issue #10).

Each case asserts the error (exit status for the command-line ones), its message, and that the folders it
could have written to are byte-for-byte and mtime-for-mtime as before. Most call the Hydra-composed stage
functions in-process (same message, no interpreter start-up); the few that are about Hydra itself (its
output files, argument parsing) run ``python -m ts2.<stage>``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

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
