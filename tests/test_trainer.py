"""`ts2.trainer`: the Trainer callbacks on hand-made Trainer states (a real training run: tests/test_train.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ts2.trainer import ce_log_schedule, jsonl_log_callback, trainer_class


def test_the_log_gets_one_whole_line_per_logged_step(tmp_path):
    path = tmp_path / "train_log.jsonl"
    cb = jsonl_log_callback(path)
    state = SimpleNamespace(global_step=3, is_world_process_zero=True)
    cb.on_log(None, state, None, logs={"loss": 1.5, "ce": 2.0})
    cb.on_log(None, state, None, logs={"train_runtime": 9.0, "train_loss": 1.2})  # the end: train_summary
    cb.on_log(None, SimpleNamespace(global_step=4, is_world_process_zero=False), None, logs={"loss": 1.0})
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"step": 3, "loss": 1.5, "ce": 2.0}]


def test_the_objective_computes_its_diagnostics_on_the_logged_steps_only():
    objective = SimpleNamespace(log_ce_now=None)
    cb = ce_log_schedule(objective)
    on = []
    for step in range(8):  # step + 1 is the optimizer step about to run; logging_steps=3 logs 1, 3, 6
        cb.on_step_begin(SimpleNamespace(logging_steps=3), SimpleNamespace(global_step=step), None)
        on.append(objective.log_ce_now)
    assert on == [True, False, True, False, False, True, False, False]


def test_the_trainer_adds_the_objectives_diagnostics_to_a_loss_record(monkeypatch):
    from transformers import Trainer

    logged = []
    monkeypatch.setattr(Trainer, "log", lambda self, logs, start_time=None: logged.append(dict(logs)))
    trainer = trainer_class().__new__(trainer_class())  # no model needed: only log() runs
    trainer.compute_loss_func = SimpleNamespace(pop_logs=lambda: {"ce": 2.5, "entropy": 1.0})
    trainer.log({"loss": 3.0})
    trainer.log({"eval_loss": 3.0})  # not a training-loss record: left as it is
    assert logged == [{"loss": 3.0, "ce": 2.5, "entropy": 1.0}, {"eval_loss": 3.0}]
