"""The training side of ``transformers.Trainer``: the Trainer class and the callbacks ``ts2.train`` adds.

- :func:`trainer_class`: a Trainer whose log records carry the objective's diagnostics (token CE, entropy,
  sparsemax support size; :meth:`ts2.objective.CausalLMObjective.pop_logs`);
- :func:`ce_log_schedule`: tells the objective on which optimizer steps to compute them (the logged ones);
- :func:`jsonl_log_callback`: one ``train_log.jsonl`` line per logged step (the run folder's log, :mod:`ts2.runs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def jsonl_log_callback(path: Path):
    """A Trainer callback appending each step's log record to ``train_log.jsonl`` (one whole line each).

    The end-of-training record (runtime, mean loss) goes to train_summary.json instead, so the log keeps
    one record per step.
    """
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero and "train_runtime" not in logs:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return JsonlLog()


def trainer_class():
    """``transformers.Trainer`` that adds the objective's diagnostics to each log record (whatever the loss):
    token CE, softmax entropy, sparsemax support size (`ts2.objective.CausalLMObjective.pop_logs`)."""
    from transformers import Trainer

    class TS2Trainer(Trainer):
        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            pop_logs = getattr(self.compute_loss_func, "pop_logs", None)
            if "loss" in logs and pop_logs is not None:
                logs.update(pop_logs())
            super().log(logs, start_time)

    return TS2Trainer


def ce_log_schedule(objective: Any):
    """A callback telling the objective to compute the token CE on the optimizer steps that will be logged."""
    from transformers import TrainerCallback

    class CELogSchedule(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            step, every = state.global_step + 1, max(int(args.logging_steps), 1)
            objective.log_ce_now = step == 1 or step % every == 0

    return CELogSchedule()
