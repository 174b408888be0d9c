"""Fine-tune a causal LM with one of the 8 methods: ``python -m ts2.train method=ts2 model=tiny``.

Config: ``conf/train.yaml`` (+ groups ``model/``, ``data/``, ``loss/``, ``method/``, ``logger/``,
``experiment/``, ``debug/``). The run folder is named by the command-line overrides
(``runs/<name>/<overrides>``); it receives the Hydra config, ``run.json`` (method, model, versions),
``skipped_rows.jsonl``, ``train_log.jsonl`` (every logged step: loss, ce, lr, grad norm), checkpoints
(``checkpoint-*``), ``train_summary.json`` and the final model in ``model/``.

Training uses ``transformers.Trainer`` with the configured loss as ``compute_loss_func`` (see
:mod:`ts2.objective` for the global-token normalisation). ``train.resume=true`` continues a killed run from
its last checkpoint (optimizer, scheduler, RNG and data order included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ts2.conf import CONF_DIR
from ts2.provenance import git_sha, versions

log = logging.getLogger("ts2.train")


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """Newest ``checkpoint-N`` whose ``trainer_state.json`` (written last by Trainer) parses.

    A process killed while saving leaves a torn checkpoint; it is removed (with a warning) so that resuming
    restarts from the previous complete one instead of crashing on it.
    """
    import shutil

    ckpts = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return ckpt
        except (OSError, ValueError):
            log.warning("Removing incomplete checkpoint %s (interrupted while saving).", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
    return None


def _trim_log(path: Path, upto_step: int) -> None:
    """Keep the train_log.jsonl records of steps <= ``upto_step`` (the checkpoint a resume starts from).

    Steps logged after that checkpoint, before the crash, are run again on resume; dropping their old lines
    (and a torn last line) keeps one record per step.
    """
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= upto_step:
                keep.append(line)
        except ValueError:
            continue
    path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


def _training_args(cfg: DictConfig, run_dir: Path, report_to: list[str]):
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        max_grad_norm=t.max_grad_norm,
        weight_decay=t.weight_decay,
        neftune_noise_alpha=t.neftune_noise_alpha,
        optim=t.optim,
        bf16=t.bf16,
        activation_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        deepspeed=t.deepspeed,
        seed=cfg.seed,
        report_to=report_to,
        run_name=f"{cfg.method.id}-{cfg.model.id}",
        remove_unused_columns=False,
        disable_tqdm=False,
        **OmegaConf.to_container(t.extra_args, resolve=True),
    )


def _make_trainer_cls():
    from transformers import Trainer, TrainerCallback

    class TS2Trainer(Trainer):
        """Trainer that adds the token cross-entropy to each log (whatever the training loss)."""

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            pop_ce = getattr(self.compute_loss_func, "pop_ce", None)
            if "loss" in logs and pop_ce is not None:
                ce = pop_ce()
                if ce is not None:
                    logs["ce"] = ce
            super().log(logs, start_time)

    class JsonlLog(TrainerCallback):
        """Append every log record to <run_dir>/train_log.jsonl (one whole line each)."""

        def __init__(self, path: Path) -> None:
            self.path = path

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    class CELogSchedule(TrainerCallback):
        """Tell the objective to compute the token CE on the optimizer steps that will be logged."""

        def __init__(self, objective) -> None:
            self.objective = objective

        def on_step_begin(self, args, state, control, **kwargs):
            step, every = state.global_step + 1, max(int(args.logging_steps), 1)
            self.objective.log_ce_now = step == 1 or step % every == 0

    return TS2Trainer, JsonlLog, CELogSchedule


def _init_wandb(cfg: DictConfig, run_dir: Path):
    import wandb

    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    lg = cfg.logger
    return wandb.init(
        project=lg.project,
        entity=lg.entity,
        group=lg.group,
        name=run_dir.name,
        tags=[cfg.method.id, cfg.model.id, *lg.tags],
        config=OmegaConf.to_container(cfg, resolve=True),
        dir=str(run_dir),
        job_type="train",
        # One wandb run per run folder: a resumed training continues the same wandb run.
        id=hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16],
        resume="allow",
    )


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one training job into ``run_dir`` and return its summary."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from ts2.data import build_sft_dataset
    from ts2.models import load_model, load_tokenizer, resolve_model_path
    from ts2.objective import CausalLMObjective, HiddenPassthrough, make_loss

    run_dir.mkdir(parents=True, exist_ok=True)
    loss_fn, hyper = make_loss(cfg.loss)  # fails fast on bad loss settings
    done = run_dir / "train_summary.json"
    if cfg.train.resume and done.is_file():
        log.info("%s already finished training (train_summary.json): nothing to resume.", run_dir)
        return json.loads(done.read_text())
    last = last_complete_checkpoint(run_dir) if cfg.train.resume else get_last_checkpoint(str(run_dir))
    if last and not cfg.train.resume:
        raise FileExistsError(
            f"Run folder {run_dir} already holds {Path(last).name}. Pass train.resume=true to continue it, "
            "or change name=/overrides to start a new run."
        )
    if cfg.train.resume and not last:
        log.warning("train.resume=true but %s has no checkpoint: starting from scratch.", run_dir)
    if cfg.train.resume:
        _trim_log(run_dir / "train_log.jsonl", int(last.name.split("-")[-1]) if last else 0)

    set_seed(cfg.seed)
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    data = build_sft_dataset(cfg.data, tokenizer, cfg.model.max_length)
    data.write_skipped(run_dir)
    n_tokens = sum(sum(lab != -100 for lab in ex["labels"]) for ex in data.examples)
    log.info(
        "data: %d examples, %d response tokens; skipped %d rows %s (listed in skipped_rows.jsonl)",
        len(data.examples),
        n_tokens,
        len(data.skipped),
        data.skip_counts,
    )
    model = load_model(cfg.model, model_path)
    model.config.use_cache = False

    head = None
    if cfg.loss.fused:
        head = model.get_output_embeddings()
        model.set_output_embeddings(HiddenPassthrough(head))
    objective = CausalLMObjective(
        loss_fn,
        loss_id=cfg.loss.id,
        hyperparameters=hyper,
        fused=cfg.loss.fused,
        chunk_size=cfg.loss.chunk_size,
        head=model.get_output_embeddings(),
    )

    meta = {
        "method": cfg.method.id,
        "model": cfg.model.id,
        "model_path": model_path,
        "loss": cfg.loss.id,
        "data": cfg.data.id,
        "examples": len(data.examples),
        "skipped_rows": len(data.skipped),
        "response_tokens": n_tokens,
        "git_sha": git_sha(),
        "versions": versions("accelerate", "datasets"),
    }
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))

    wandb_run = None
    try:
        report_to = ["none"]
        if cfg.logger.backend == "wandb":
            wandb_run = _init_wandb(cfg, run_dir)
            report_to = ["wandb"]
        TS2Trainer, JsonlLog, CELogSchedule = _make_trainer_cls()
        trainer = TS2Trainer(
            model=model,
            args=_training_args(cfg, run_dir, report_to),
            train_dataset=Dataset.from_list(data.examples),
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            processing_class=tokenizer,
            compute_loss_func=objective,
            callbacks=[JsonlLog(run_dir / "train_log.jsonl"), CELogSchedule(objective)],
        )
        t0 = time.time()
        result = trainer.train(resume_from_checkpoint=str(last) if (cfg.train.resume and last) else None)
        elapsed = time.time() - t0
        if head is not None:
            model.set_output_embeddings(head)
        if cfg.model.get("eos_token_ids"):  # PAPER.md §3: generation stops at these after training
            model.generation_config.eos_token_id = list(cfg.model.eos_token_ids)
        if cfg.train.save_final_model and trainer.is_world_process_zero():
            trainer.save_model(str(run_dir / "model"))
            tokenizer.save_pretrained(str(run_dir / "model"))
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        ces = [r["ce"] for r in trainer.state.log_history if "ce" in r]
        summary = {
            **meta,
            "global_step": trainer.state.global_step,
            "resumed_from": Path(last).name if (cfg.train.resume and last) else None,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "first_ce": ces[0] if ces else None,  # token CE: comparable across methods, unlike the losses
            "last_ce": ces[-1] if ces else None,
            "train_runtime_s": round(elapsed, 2),
            "train_loss_mean": result.training_loss,
            "device": str(next(model.parameters()).device),
            "torch_threads": torch.get_num_threads(),
        }
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        log.info("done: %s", json.dumps({k: summary[k] for k in ("global_step", "first_loss", "last_loss")}))
        return summary
    finally:
        if wandb_run is not None:
            import wandb

            wandb.finish()


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
