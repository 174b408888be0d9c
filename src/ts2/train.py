"""Fine-tune a causal LM with one of the 8 methods: ``python -m ts2.train method=ts2 model=tiny``.

Config: ``conf/train.yaml`` (+ groups ``model/``, ``data/``, ``loss/``, ``method/``, ``logger/``,
``experiment/``, ``debug/``); ``train.*`` are ``transformers.TrainingArguments`` fields except
:data:`ts2.conf.TS2_TRAIN_KEYS`. The run folder ``runs/<name>/<overrides>`` follows :mod:`ts2.runs` (one config
per folder, a status, no silent redo, ``train.resume=true``) and receives ``config.yaml``, ``run.json``,
``train.log``, ``skipped_rows.jsonl``, ``train_log.jsonl`` (loss, ce, lr, grad norm per logged step),
checkpoints, ``train_summary.json`` and the final model in ``model/``.

Training uses ``transformers.Trainer`` with the configured loss as ``compute_loss_func`` (see
:mod:`ts2.objective` for the global-token normalisation, PAPER.md §3).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from ts2 import cli, runs
from ts2.conf import CONF_DIR, check_config, check_model_source, scale_of, training_config, training_kwargs
from ts2.paths import check_output_dir
from ts2.provenance import git_sha, versions
from ts2.tracking import init_wandb
from ts2.trainer import ce_log_schedule, jsonl_log_callback, run_totals, trainer_class

log = logging.getLogger("ts2.train")


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one training job into ``run_dir`` and return its summary; every input is checked first."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed

    from ts2.data import build_sft_dataset
    from ts2.distributed import bind_visible_gpu, check_device, check_launch, export_submitit_env
    from ts2.models import load_model, load_tokenizer, resolve_model_path
    from ts2.models.freeze import apply_trainable, trainable_of
    from ts2.objective import CausalLMObjective, fused_head, make_loss

    # Nothing is written until the config, the folder, the model and the data have all been accepted.
    check_device(cfg.model)  # a paper-scale model needs CUDA GPUs: stop before anything loads
    export_submitit_env()  # a task of a hydra/launcher=slurm job becomes one torch.distributed rank
    bind_visible_gpu()  # one GPU bound per SLURM task: use the one it sees
    launch = check_launch(cfg.train)  # batch vs world size, NCCL, deepspeed (ts2.distributed)
    loss, loss_settings = make_loss(cfg.loss)
    trainable = trainable_of(cfg.model)  # model.trainable_layers / train_embeddings (ts2.models.freeze)
    args = {**training_kwargs(cfg), **launch.training_args()}
    check_output_dir(cfg.paths.runs_dir, "paths.runs_dir")  # not a file, not read-only
    check_output_dir(run_dir, "the run folder (paths.runs_dir/name/overrides)")
    claim = runs.claim(run_dir, cfg)
    if claim.finished:
        log.info("%s already finished training (train.resume=true): nothing to do.", run_dir)
        return runs.read_json(run_dir / "train_summary.json")
    set_seed(cfg.seed)
    check_model_source(cfg.model)
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    data = build_sft_dataset(cfg.data, tokenizer, cfg.model.max_length)
    n_tokens = sum(sum(lab != -100 for lab in ex["labels"]) for ex in data.examples)
    meta = {
        **{k: cfg[k].id for k in ("method", "model", "loss", "data")},
        "scale": scale_of(cfg.model),
        "model_path": model_path,
        **({"weights": cfg.model.provenance} if cfg.model.get("provenance") else {}),  # e.g. GGUF-dequantized
        **trainable.settings(),  # what SFT trains (null layers + embeddings: full fine-tuning)
        "examples": len(data.examples),
        "skipped_rows": len(data.skipped),
        "response_tokens": n_tokens,
        "git_sha": git_sha(),
        "versions": versions("accelerate", "datasets"),
    }
    handler = runs.start(claim, cfg, meta)
    wandb_run = None
    try:
        if runs.is_main_process():
            data.write_skipped(run_dir)
        log.info(
            "data: %d examples, %d response tokens; skipped %d rows %s (skipped_rows.jsonl)",
            len(data.examples),
            n_tokens,
            len(data.skipped),
            data.skip_counts,
        )
        model = load_model(cfg.model, model_path)
        model.config.use_cache = False
        # requires_grad of every parameter (model.trainable_layers / train_embeddings), before the Trainer is built
        trained = apply_trainable(model, trainable)
        log.info("trains %s: %d of %d parameters", trained["describe"], trained["trainable_params"],
                 trained["total_params"])  # fmt: skip
        objective = CausalLMObjective(loss, fused=loss_settings.fused, chunk_size=loss_settings.chunk_size)
        if cfg.logger.backend == "wandb" and runs.is_main_process():
            wandb_run = init_wandb(cfg, run_dir)
        totals = run_totals(claim.resume_from)  # loss and runtime of the whole run, across resumes
        trainer = trainer_class()(
            model=model,
            args=TrainingArguments(
                output_dir=str(run_dir),
                seed=cfg.seed,
                report_to=["wandb" if wandb_run else "none"],
                run_name=f"{cfg.method.id}-{cfg.model.id}",
                dataloader_pin_memory=torch.cuda.is_available(),
                **args,
            ),
            train_dataset=Dataset.from_list(data.examples),
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            processing_class=tokenizer,
            compute_loss_func=objective,
            callbacks=[jsonl_log_callback(run_dir / "train_log.jsonl"), ce_log_schedule(objective), totals],
        )
        resume = str(claim.resume_from) if claim.resume_from else None
        # Fused: the forward returns hidden states + head weight; the modules (what is saved) stay as they are.
        with fused_head(model) if loss_settings.fused else contextlib.nullcontext():
            result = trainer.train(resume_from_checkpoint=resume)
        if cfg.model.get("eos_token_ids"):  # PAPER.md §3: generation stops at these after training
            model.generation_config.eos_token_id = list(cfg.model.eos_token_ids)
        if cfg.train.save_final_model:
            trainer.save_model(str(run_dir / "model"))  # on every rank (FSDP/ZeRO gather); rank 0 writes
            if trainer.is_world_process_zero():
                tokenizer.save_pretrained(str(run_dir / "model"))
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        ces = [r["ce"] for r in trainer.state.log_history if "ce" in r]
        summary = {
            **meta,
            "global_step": trainer.state.global_step,
            "trainable": trained,
            "resumed_from": claim.resume_from.name if claim.resume_from else None,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "first_ce": ces[0] if ces else None,  # token CE: comparable across methods, unlike the losses
            "last_ce": ces[-1] if ces else None,
            # the whole run, every resumed segment up to its checkpoint included (not just this process's part)
            **totals.whole_run(trainer.state.global_step, result.training_loss, result.metrics),
            "device": str(next(model.parameters()).device),
            "torch_threads": torch.get_num_threads(),
            "world_size": launch.world.world_size,
            "global_batch_size": launch.global_batch_size,  # sequences per optimizer step
        }
        if trainer.is_world_process_zero():
            (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        runs.update_status(run_dir, "finished", global_step=summary["global_step"])
        # train.keep_checkpoints=false (paper experiments; ~128 GB each, ts2.plan): once the run is finished and
        # its final model written, the checkpoints that made it resumable go, as the official recipe keeps none.
        if (
            cfg.train.save_final_model
            and not cfg.train.get("keep_checkpoints", True)
            and runs.is_main_process()
        ):
            for ckpt in run_dir.glob("checkpoint-*"):
                shutil.rmtree(ckpt)
        log.info("done: %s", json.dumps({k: summary[k] for k in ("global_step", "first_loss", "last_loss")}))
        return summary
    except BaseException as err:  # a crash or Ctrl-C: the folder says so (a SIGKILL leaves "running")
        runs.update_status(run_dir, "failed", error=f"{type(err).__name__}: {err}"[:2000])
        raise
    finally:
        if wandb_run is not None:
            import wandb

            wandb.finish()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
@cli.task
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    cfg = training_config(cfg)  # an experiment's pipeline: block sizes run.sh, not the SFT (ts2.conf)
    check_config(cfg, "train")  # every typed setting, before the run folder is touched
    train(cfg, runs.default_run_dir(cfg, HydraConfig.get().job.override_dirname))


if __name__ == "__main__":
    cli.run(main, interrupted=cli.TRAIN, check_overrides=True)
