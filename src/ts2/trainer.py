"""The training side of ``transformers.Trainer``: the Trainer class and the callbacks ``ts2.train`` adds.

- :func:`trainer_class`: a Trainer whose log records carry the objective's diagnostics (token CE, entropy,
  sparsemax support size; :meth:`ts2.objective.CausalLMObjective.pop_logs`);
- :func:`ce_log_schedule`: tells the objective on which optimizer steps to compute them (the logged ones);
- :func:`jsonl_log_callback`: one ``train_log.jsonl`` line per logged step (the run folder's log, :mod:`ts2.runs`);
- :func:`run_totals`: the whole run's mean loss and runtime across resumes (``train_summary.json``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ts2.runs import read_json

log = logging.getLogger("ts2.trainer")


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


TOTALS_FILE = "ts2_totals.json"


def run_totals(resume_from: Path | None) -> Any:
    """A Trainer callback keeping the totals of the whole run across resumes, for ``train_summary.json``.

    At every checkpoint it writes ``<checkpoint>/ts2_totals.json``: the step, the training loss summed over
    the optimizer steps so far (each logged mean times the steps it covers) and the training wall time so far;
    a resumed run starts from its checkpoint's file (``.before``; zeros for a fresh run or an older
    checkpoint without it). It also logs every checkpoint step, so that the logged losses cover every step up
    to it. Whole-run mean loss = (``before["loss_sum"]`` + this process's mean x its steps) / global step
    (:meth:`whole_run`); the runtime counts each segment up to its last checkpoint (work redone after a kill
    is not counted twice).
    """
    import time

    from transformers import TrainerCallback

    before = {"step": 0, "loss_sum": 0.0, "train_runtime_s": 0.0}
    saved = resume_from / TOTALS_FILE if resume_from is not None else None
    if saved is not None and saved.is_file():
        before.update(read_json(saved))
    elif resume_from is not None:  # a checkpoint written before these totals: its losses from its own log
        state = read_json(resume_from / "trainer_state.json")
        last = 0
        for rec in state.get("log_history", []):
            if "loss" in rec and "train_runtime" not in rec:
                before["loss_sum"] += rec["loss"] * (rec["step"] - last)
                last = rec["step"]
        before["step"] = last
        log.warning("%s has no %s: the summary's runtime covers this process only.", resume_from, TOTALS_FILE)

    class RunTotals(TrainerCallback):
        def __init__(self) -> None:
            self.before = dict(before)
            self.start = int(resume_from.name.split("-")[-1]) if resume_from is not None else 0
            self.loss_sum, self.step, self.t0 = before["loss_sum"], int(before["step"]), time.time()

        def whole_run(
            self, global_step: int, mean_loss: float, metrics: dict[str, float]
        ) -> dict[str, float]:
            """``train_loss_mean`` and ``train_runtime_s`` of the whole run from this process's part."""
            steps = global_step - self.start  # what this process trained (Trainer's own mean is over these)
            return {
                "train_runtime_s": round(
                    self.before["train_runtime_s"] + metrics.get("train_runtime", 0.0), 2
                ),
                "train_loss_mean": (self.before["loss_sum"] + mean_loss * steps)
                / max(self.before["step"] + steps, 1),
            }

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                control.should_log = True  # a log record at each checkpoint step: its losses are all counted

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_runtime" not in logs:
                self.loss_sum += float(logs["loss"]) * (state.global_step - self.step)
                self.step = state.global_step

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                totals = {
                    "step": self.step,
                    "loss_sum": self.loss_sum,
                    "train_runtime_s": self.before["train_runtime_s"] + time.time() - self.t0,
                }
                (ckpt / TOTALS_FILE).write_text(json.dumps(totals))

    return RunTotals()
