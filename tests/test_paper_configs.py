"""Every paper-scale training config composes into what the Trainer will be given, without a GPU.

2 models x 8 methods x {ZeRO-2, FSDP2} x fused head on/off: the Hydra config of ``make train-paper`` (its
backend overrides), its loss, ``transformers.TrainingArguments``, the launch check for 8 GPUs and, for ZeRO-2,
the DeepSpeed JSON with its ``"auto"`` fields filled by transformers' own logic
(``HfTrainerDeepSpeedConfig.trainer_config_process`` / ``trainer_config_finalize``, run on accelerate's
``HfDeepSpeedConfig`` so that it works where deepspeed is not installed). Two things are faked, because they
need a GPU: bf16 support (``is_torch_bf16_gpu_available``) and the world size (8 GPUs) the ``train_batch_size``
is computed with.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ts2.conf import method_ids, training_kwargs
from ts2.plan import ARCHS

REPO = Path(__file__).resolve().parents[1]
MODELS = ("llama31_8b", "qwen2_7b")
WORLD = 8


def _backend_overrides() -> dict[str, list[str]]:
    """The overrides ``make train-paper BACKEND=...`` adds: those of its launcher, experiments/table1/train_paper.sh
    (``PRINT=settings``), which SCALE=paper make reproduce-table1 uses too."""
    import os
    import subprocess

    def settings(backend: str) -> list[str]:
        env = {**os.environ, "BACKEND": backend, "PRINT": "settings"}
        out = subprocess.run(["bash", "experiments/table1/train_paper.sh"], cwd=REPO, env=env, check=True,
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout.split()

    return {b: settings(b) for b in ("deepspeed_zero2", "fsdp2")}


class _OnWorld:
    """TrainingArguments as seen on ``WORLD`` processes (its own world_size is 1 here)."""

    def __init__(self, args, world_size: int) -> None:
        self._args, self.world_size = args, world_size

    def __getattr__(self, key):
        return getattr(self._args, key)


def filled_deepspeed_config(path: str, args, world_size: int, hidden_size: int, steps: int) -> dict:
    """The DeepSpeed config the Trainer would hand to deepspeed.initialize: transformers' fill of ``auto``."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    methods = ("is_auto", "fill_match", "fill_only", "trainer_config_process", "trainer_config_finalize")
    cls = type(
        "TrainerDSConfig", (HfDeepSpeedConfig,), {m: HfTrainerDeepSpeedConfig.__dict__[m] for m in methods}
    )
    cfg = cls(path)
    cfg._dtype, cfg.mismatches = None, []
    on_world = _OnWorld(args, world_size)
    cfg.trainer_config_process(on_world)
    cfg.trainer_config_finalize(
        on_world, SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size)), steps
    )
    return cfg.config


def _auto_keys(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _auto_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


@pytest.fixture
def bf16_gpu(monkeypatch):
    import transformers.training_args as ta

    monkeypatch.setattr(ta, "is_torch_bf16_gpu_available", lambda: True)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("backend", ["deepspeed_zero2", "fsdp2"])
def test_every_paper_config_composes_into_training_arguments(compose, bf16_gpu, tmp_path, model, backend):
    from transformers import TrainingArguments

    from ts2.distributed import check_launch
    from ts2.objective import make_loss

    env = {"WORLD_SIZE": str(WORLD), "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(WORLD)}
    methods = method_ids()
    assert len(methods) == 8, methods
    seen = set()
    for method in methods:
        for fused in (False, True):
            cfg = compose([f"experiment=paper_{model}", f"method={method}", f"loss.fused={fused}",
                           *_backend_overrides()[backend]])  # fmt: skip
            assert cfg.model.id == model and cfg.model.scale == "paper" and cfg.method.id == method
            loss, settings = make_loss(cfg.loss)
            assert settings.fused is fused
            kwargs = training_kwargs(cfg)
            ds = kwargs.pop("deepspeed")
            launch = check_launch(
                cfg.train, env=env, cuda_available=True, device_count=WORLD, nccl_available=True,
                deepspeed_installed=True,
            )  # fmt: skip
            assert launch.global_batch_size == 128  # 4 x 4 x 8 (PAPER.md §3)
            args = TrainingArguments(output_dir=str(tmp_path), **kwargs, **launch.training_args())
            assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 4)
            assert (args.learning_rate, args.adam_beta2, args.max_grad_norm, args.num_train_epochs) == (
                2e-5,
                0.95,
                1.0,
                3,
            )
            assert args.bf16 and args.lr_scheduler_type == "cosine" and args.get_warmup_steps(1000) == 30
            assert args.weight_decay == (0.1 if method == "ce_wd" else 0.0)
            assert args.neftune_noise_alpha == (5.0 if method == "neft" else None)
            if backend == "deepspeed_zero2":
                assert ds == "experiments/table1/ds_zero2.json" and args.gradient_checkpointing
                steps = 3 * 478  # ceil(61,135 / 32) = 1,911 micro-batches per rank and epoch, / 4 rounded up
                filled = filled_deepspeed_config(str(REPO / ds), args, WORLD, ARCHS[model].hidden, steps)
                assert _auto_keys(filled) == []
                assert filled["train_micro_batch_size_per_gpu"] == 4
                assert filled["gradient_accumulation_steps"] == 4
                assert filled["train_batch_size"] == 128
                assert filled["gradient_clipping"] == 1.0 and filled["bf16"]["enabled"] is True
                assert filled["zero_optimization"]["stage"] == 2
                assert filled["zero_optimization"]["reduce_bucket_size"] == ARCHS[model].hidden ** 2
            else:
                # FSDP2 checkpoints activations itself (conf/accelerate/fsdp2.yaml); the Trainer's must be off.
                assert ds is None and not args.gradient_checkpointing
            seen.add((method, fused))
    assert len(seen) == 16


def test_the_fsdp2_launch_config_builds_accelerates_plugin():
    """conf/accelerate/fsdp2.yaml as accelerate's plugin: FSDP2, rank-0 loading, full state dict saves."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    c = yaml.safe_load((REPO / "conf" / "accelerate" / "fsdp2.yaml").read_text())
    assert c["distributed_type"] == "FSDP" and c["mixed_precision"] == "bf16" and c["num_processes"] == WORLD
    f = c["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=f["fsdp_version"],
        auto_wrap_policy=f["fsdp_auto_wrap_policy"].lower(),
        cpu_ram_efficient_loading=f["fsdp_cpu_ram_efficient_loading"],
        cpu_offload=f["fsdp_offload_params"],
        reshard_after_forward=f["fsdp_reshard_after_forward"],
        state_dict_type=f["fsdp_state_dict_type"],
        activation_checkpointing=f["fsdp_activation_checkpointing"],
    )
    assert plugin.fsdp_version == 2 and plugin.cpu_ram_efficient_loading and plugin.activation_checkpointing
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_the_zero2_launch_config_names_the_experiments_json():
    c = yaml.safe_load((REPO / "conf" / "accelerate" / "deepspeed_zero2.yaml").read_text())
    assert c["deepspeed_config"]["deepspeed_config_file"] == "experiments/table1/ds_zero2.json"
    for model in MODELS:
        exp = yaml.safe_load((REPO / "conf" / "experiment" / f"paper_{model}.yaml").read_text())
        assert exp["train"]["deepspeed"] == "experiments/table1/ds_zero2.json"


def test_rescore_released_commands_compose(compose):
    """``make rescore-released``: its two commands compose (the released checkpoint through vLLM at the paper's
    sampling settings; FsfairX + the paper's Sent-BERT), and its plan gives GPU-hours for the same benchmarks."""
    import shlex
    import subprocess

    from hydra import initialize_config_dir

    from ts2.conf import CONF_DIR, compose_all
    from ts2.plan import RESCORE_EVALS, rescore_plan

    out = subprocess.run(
        ["make", "-n", "rescore-released"], cwd=REPO, capture_output=True, text=True, check=True
    )
    sample, score = [
        shlex.split(x) for x in out.stdout.splitlines() if "-m ts2.sample" in x or "-m ts2.evaluate" in x
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfgs = compose_all(sample[3:], "sample")
        scored = compose_all(score[3:], "evaluate")
    assert [c.eval.id for c in cfgs] == list(RESCORE_EVALS) == [c.eval.id for c in scored]
    for c in cfgs:
        assert c.model.id == "ts2_released" and c.model.scale == "paper"
        assert c.sampler._target_ == "ts2.sampling.backends.VLLMBackend"  # sampler=vllm
        assert c.model_path == "xzybit/llama3.1-8b-ts2" and c.out_dir == "runs/released/ts2/samples"
    alpaca = cfgs[0].sample
    assert (alpaca.n, alpaca.temperature, alpaca.top_k, alpaca.top_p, alpaca.max_new_tokens) == (
        32,
        0.6,
        50,
        0.9,
        2048,
    )
    assert all(c.rm.id == "fsfairx" and c.diversity.id == "paper" for c in scored)
    plan = rescore_plan()
    assert (
        set(plan["benches"]) == set(RESCORE_EVALS) and plan["benches"]["alpaca_eval"]["samples"] == 805 * 32
    )
    assert plan["gpu_hours"] == pytest.approx(
        sum(b["gpu_hours"] for b in plan["benches"].values()) + plan["score_gpu_hours"]
    )
