"""Multi-process training equals one process with the same global batch (PAPER.md §3 normalisation).

The loss of an optimizer step is sum(per-token loss over the response tokens of the global batch) / their
number. Two ranks with per-device batch 2 must therefore follow the same trajectory as one process with
batch 4: same per-step losses, same final weights (to 1e-5). The ranks hold different numbers of response
tokens, so a per-rank mean (each rank divides by its own count, the gradients are then averaged) gives a
different loss: that variant is run too and must differ.

- DDP: the real entry point, ``torchrun --nproc_per_node 2 -m ts2.train`` (gloo on CPU), plain and fused head.
- FSDP2: ``accelerate``/Trainer cannot shard on CPU, so the objective (:class:`ts2.objective.CausalLMObjective`)
  is driven by a small loop over ``fully_shard`` on a CPU mesh (this file run as a torchrun worker), with the
  count all-reduced and the loss scaled by the world size exactly as Trainer does.
- The launch checks of :mod:`ts2.distributed`: batch/world mismatch, NCCL, deepspeed, flash-attn.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
COMMON = [
    "method=ts2",
    "debug=cpu",
    f"train.max_steps={STEPS}",
    "train.logging_steps=1",
    "train.save_steps=100",
    "train.save_final_model=true",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="offline",
        PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _torchrun(nproc: int, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (
        f"{' '.join(cmd)}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-6000:]}"
    )
    return res


def _train_ddp(root: Path, overrides: list[str]) -> Path:
    """Train with 2 ranks into ``<root>/ddp/<overrides>``; return that run folder."""
    args = {o.split("=", 1)[0]: o for o in [*COMMON, *overrides]}  # a later override of a key wins
    _torchrun(2, ["-m", "ts2.train", *args.values(), f"paths.runs_dir={root}", "name=ddp"])
    (run,) = [p.parent for p in root.glob("ddp/*/run.json")]
    return run


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def reference(compose, tmp_path_factory):
    """reference[fused]: the run folder of one process with per-device batch 4 (the global batch of 2 ranks
    x 2), trained on first use."""
    from ts2.train import train

    class Runs(dict):
        def __missing__(self, fused: bool) -> Path:
            run = tmp_path_factory.mktemp(f"ref_fused{fused}")
            train(compose([*COMMON, "train.per_device_train_batch_size=4", f"loss.fused={fused}"]), run)
            self[fused] = run
            return run

    return Runs()


@pytest.mark.parametrize(
    "fused", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["logits", "fused-head"]
)  # the fused head across ranks is also checked, in the default tier, by the FSDP2 test below
def test_two_ddp_ranks_equal_one_process(reference, tmp_path, fused):
    run = _train_ddp(tmp_path, ["train.per_device_train_batch_size=2", f"loss.fused={fused}"])
    ref, got = _log(reference[fused]), _log(run)
    # One record per optimizer step: only rank 0 writes train_log.jsonl.
    assert [r["step"] for r in got] == list(range(1, STEPS + 1)) == [r["step"] for r in ref]
    for a, b in zip(ref, got, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)
        # The logged token CE covers the global batch too (all-reduced), not rank 0's half.
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-5), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a, b)
        assert b["epoch"] == pytest.approx(a["epoch"])  # both see the same number of steps per epoch
    assert _max_diff(_weights(reference[fused]), _weights(run)) < 1e-5
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == STEPS and summary["world_size"] == 2


def test_fused_trainer_run_saves_the_trained_head(reference, compose):
    """``loss.fused=true`` through the real Trainer path (``ts2.train.train``: its callbacks, its save): the
    model reloaded from ``model/`` has a trained LM head (not the initial one) equal to the unfused run's, and
    it computes logits again (the patched forward is not part of the model)."""
    from transformers import AutoModelForCausalLM

    from ts2.models import load_model, resolve_model_path

    cfg = compose([*COMMON, "train.per_device_train_batch_size=4"]).model
    head0 = load_model(cfg, resolve_model_path(cfg)).lm_head.weight.detach()
    saved = {f: AutoModelForCausalLM.from_pretrained(reference[f] / "model") for f in (False, True)}
    head = {f: m.lm_head.weight.detach() for f, m in saved.items()}
    assert float((head[True] - head0).abs().max()) > 1e-3
    torch.testing.assert_close(head[True], head[False], rtol=0, atol=1e-5)
    assert _max_diff(_weights(reference[True]), _weights(reference[False])) < 1e-5
    assert saved[True](input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == head0.shape[0]


def test_per_rank_mean_would_differ(reference, tmp_path):
    """Each rank dividing by its own token count (Trainer's average_tokens_across_devices=false) is not the
    paper's loss: the ranks hold different numbers of response tokens, so losses and weights move away."""
    run = _train_ddp(
        tmp_path,
        ["train.per_device_train_batch_size=2", "+train.extra_args.average_tokens_across_devices=false"],
    )
    ref, got = _log(reference[False]), _log(run)
    # Measured: up to 4.7e-3 apart in loss, 3e-3 in weights (the equal runs above agree to 1e-5).
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(ref, got, strict=True)) > 1e-3, (ref, got)
    assert _max_diff(_weights(reference[False]), _weights(run)) > 1e-4


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("deepspeed") is None,
    reason="deepspeed not installed (pip install 'ts2[gpu]')",
)
def test_zero2_two_ranks_equal_one_process(reference, tmp_path):
    """The paper's DeepSpeed ZeRO-2 JSON (experiments/table1/ds_zero2.json), 2 CPU ranks over gloo."""
    run = _train_ddp(
        tmp_path,
        [
            "train.per_device_train_batch_size=2",
            "train.deepspeed=experiments/table1/ds_zero2.json",
            f"train.save_steps={STEPS}",
        ],
    )
    # ZeRO-2 really partitioned the optimizer states over the two ranks.
    assert len(list(run.glob(f"checkpoint-{STEPS}/global_step{STEPS}/zero_pp_rank_*_optim_states.pt"))) == 2
    ref, got = _log(reference[False]), _log(run)
    for a, b in zip(ref, got, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)
    assert _max_diff(_weights(reference[False]), _weights(run)) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("deepspeed") is None,
    reason="deepspeed not installed (pip install 'ts2[gpu]')",
)
def test_zero2_fused_head_saves_and_resumes(compose, tmp_path):
    """The paper's ZeRO-2 JSON with the fused head, one CPU process under torchrun (the launch that works on
    CPU, ENVIRONMENT.md), through ts2.train: the saved head is trained, and a run killed after its step-3
    checkpoint and resumed with train.resume=true ends with the uninterrupted run's weights and step losses."""
    import shutil

    from ts2.models import load_model, resolve_model_path

    args = [
        *COMMON,
        "train.per_device_train_batch_size=4",
        "loss.fused=true",
        "train.deepspeed=experiments/table1/ds_zero2.json",
        "train.save_steps=3",
    ]

    def run(root: Path, extra: list[str]) -> Path:
        _torchrun(1, ["-m", "ts2.train", *args, *extra, f"paths.runs_dir={root}", "name=zero2"], timeout=900)
        (folder,) = [p.parent for p in root.glob("zero2/*/run.json")]
        return folder

    full = run(tmp_path / "full", [])
    assert (full / "checkpoint-3" / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    # What a SIGKILL after the step-3 checkpoint leaves: the same folder without what came later.
    cut = tmp_path / "cut" / full.relative_to(tmp_path / "full")
    shutil.copytree(full, cut)
    for later in ("checkpoint-6", "model", "train_summary.json"):
        shutil.rmtree(cut / later) if (cut / later).is_dir() else (cut / later).unlink()
    status = json.loads((cut / "run.json").read_text())
    (cut / "run.json").write_text(json.dumps({**status, "status": "running"}))
    assert run(tmp_path / "cut", ["train.resume=true"]) == cut
    assert json.loads((cut / "train_summary.json").read_text())["resumed_from"] == "checkpoint-3"
    assert [r["step"] for r in _log(cut)] == list(range(1, STEPS + 1))
    for a, b in zip(_log(full), _log(cut), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)
    assert _max_diff(_weights(full), _weights(cut)) < 1e-6
    cfg = compose(args).model
    head0 = load_model(cfg, resolve_model_path(cfg)).lm_head.weight.detach()
    assert float((_weights(full)["lm_head.weight"] - head0).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------ FSDP2
FSDP_STEPS, FSDP_GLOBAL = 4, 4
FSDP_YAML = REPO / "conf" / "accelerate" / "fsdp2.yaml"


def _fsdp2_plugin():
    """accelerate's FSDP plugin built from conf/accelerate/fsdp2.yaml, as ``accelerate launch --config_file``
    builds it (the ``fsdp_`` prefix dropped; mixed precision off: fp32 on CPU)."""
    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin

    c = yaml.safe_load(FSDP_YAML.read_text())["fsdp_config"]
    return FullyShardedDataParallelPlugin(
        fsdp_version=c["fsdp_version"],
        auto_wrap_policy=c["fsdp_auto_wrap_policy"].lower(),
        cpu_ram_efficient_loading=c["fsdp_cpu_ram_efficient_loading"],
        cpu_offload=c["fsdp_offload_params"],
        reshard_after_forward=c["fsdp_reshard_after_forward"],
        state_dict_type=c["fsdp_state_dict_type"],
        activation_checkpointing=c["fsdp_activation_checkpointing"],
    )


def fsdp2_worker(
    out: Path | None, modes: tuple[str, ...] = ("global", "global_fused", "per_rank")
) -> dict[str, dict]:
    """Train the tiny model FSDP_STEPS AdamW steps on global batches of FSDP_GLOBAL sequences split over the
    ranks, once per mode: "global" (the paper's normalisation, done as Trainer does it), "global_fused" (the
    same with the fused LM head + loss) or "per_rank" (each rank's own mean).

    With 2 ranks the model goes through what ``Trainer`` + ``accelerate launch --config_file
    conf/accelerate/fsdp2.yaml`` do to it on GPUs, driven by hand because accelerate does not shard on CPU:
    transformers' rank-0-only loading (``fsdp_cpu_ram_efficient_loading``: the other ranks get empty weights),
    accelerate's own ``fsdp2_apply_ac`` and ``fsdp2_prepare_model`` (to ``meta``, ``fully_shard``, rank 0's
    weights broadcast), `ts2.objective.fused_head` around training as in ``ts2.train``, and the Trainer's
    FULL_STATE_DICT save (``get_model_state_dict`` as ``Accelerator.get_state_dict``, then
    ``save_pretrained(state_dict=...)`` as ``Trainer._save``) into ``<out>.<mode>/``.

    Returns (and rank 0 saves to ``out``) per mode: per-step losses, per-rank response-token counts and the
    full final weights."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from hydra import compose, initialize_config_dir
    from transformers import DataCollatorForSeq2Seq

    from ts2.conf import CONF_DIR
    from ts2.data import build_sft_dataset
    from ts2.models import load_model, load_tokenizer, resolve_model_path
    from ts2.objective import CausalLMObjective, fused_head, make_loss

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["method=ts2", "debug=cpu"])
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(cfg.model, path)
    examples = build_sft_dataset(cfg.data, tok, cfg.model.max_length).examples[: FSDP_STEPS * FSDP_GLOBAL]
    loss, _ = make_loss(cfg.loss)
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    per = FSDP_GLOBAL // world
    results: dict[str, dict] = {}
    for mode in modes:
        torch.manual_seed(1234)
        if world > 1:
            plugin = _fsdp2_plugin()  # sets FSDP_CPU_RAM_EFFICIENT_LOADING; accelerate launch sets the other
            os.environ["ACCELERATE_USE_FSDP"] = "true"
        model = load_model(cfg.model, path)
        model.config.use_cache = False
        fused = mode == "global_fused"
        if world > 1:
            from accelerate.utils.fsdp_utils import fsdp2_apply_ac, fsdp2_prepare_model

            if rank > 0:  # transformers left this rank's copy empty for rank 0 to fill
                assert all(float(p.abs().max()) == 0 for p in model.parameters())
            acc = SimpleNamespace(
                state=SimpleNamespace(fsdp_plugin=plugin),
                mixed_precision="no",
                is_main_process=rank == 0,
                device=torch.device("cpu"),
            )
            if plugin.activation_checkpointing:
                model = fsdp2_apply_ac(acc, model)
            model = fsdp2_prepare_model(acc, model)
        objective = CausalLMObjective(loss, fused=fused)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
        losses, counts = [], []
        with fused_head(model) if fused else contextlib.nullcontext():
            for step in range(FSDP_STEPS):
                first = step * FSDP_GLOBAL + rank * per
                batch = collate(
                    [
                        {k: ex[k] for k in ("input_ids", "attention_mask", "labels")}
                        for ex in examples[first : first + per]
                    ]
                )
                labels = batch.pop("labels")
                local = labels[:, 1:].ne(-100).sum()
                total, all_counts = local.clone(), [int(local)]
                if world > 1:
                    dist.all_reduce(total)
                    gathered = [torch.zeros_like(local) for _ in range(world)]
                    dist.all_gather(gathered, local)
                    all_counts = [int(c) for c in gathered]
                outputs = model(**batch)
                if (
                    mode != "per_rank"
                ):  # as Trainer: sum / global count, times world size (FSDP averages grads)
                    step_loss = objective(outputs, labels, num_items_in_batch=total) * world
                else:  # each rank's mean, then averaged over the ranks by FSDP
                    step_loss = objective(outputs, labels, num_items_in_batch=local)
                step_loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
                logged = step_loss.detach() / world
                if world > 1:
                    dist.all_reduce(logged)
                losses.append(float(logged))
                counts.append(all_counts)
        if world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
            state = get_model_state_dict(model, options=options)
        else:
            state = model.state_dict()
        assert not [k for k in state if "_checkpoint_wrapped_module" in k]  # DCP names them as the model does
        if rank == 0 and out is not None:
            model.save_pretrained(f"{out}.{mode}", state_dict=state)
        results[mode] = {"losses": losses, "counts": counts, "state": state}
    if rank == 0 and out is not None:
        torch.save(results, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return results


def _fsdp2_supported() -> str | None:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as err:
        return f"torch {torch.__version__} has no FSDP2 fully_shard ({err})"
    if not torch.distributed.is_gloo_available():
        return "torch has no gloo backend"
    return None


@pytest.mark.skipif(_fsdp2_supported() is not None, reason=str(_fsdp2_supported()))
def test_fsdp2_two_ranks_equal_one_process(compose, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from ts2.models import load_model, resolve_model_path

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ref = fsdp2_worker(tmp_path / "one.pt", modes=("global", "global_fused"))  # one process, no sharding
    one = ref["global"]
    _torchrun(2, [__file__, str(tmp_path / "two.pt")])
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    glob, per_rank = two["global"], two["per_rank"]
    # The fused head + loss under FSDP2, the model prepared and saved as the Trainer path does it.
    fused_one, fused_two = ref["global_fused"], two["global_fused"]
    torch.testing.assert_close(
        torch.tensor(fused_two["losses"]), torch.tensor(fused_one["losses"]), rtol=1e-5, atol=1e-6
    )
    assert _max_diff(fused_one["state"], fused_two["state"]) < 1e-5
    torch.testing.assert_close(
        torch.tensor(fused_one["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=1e-6
    )
    # The saved model, reloaded: its LM head is the trained one (not the initial, pre-shard head), and equals
    # the one-process run's.
    model_cfg = compose(["method=ts2", "debug=cpu"]).model
    head0 = load_model(model_cfg, resolve_model_path(model_cfg)).lm_head.weight.detach()
    heads = {
        n: AutoModelForCausalLM.from_pretrained(tmp_path / f"{n}.pt.global_fused").lm_head.weight.detach()
        for n in ("one", "two")
    }
    assert float((heads["two"] - head0).abs().max()) > 1e-3
    torch.testing.assert_close(heads["two"], heads["one"], rtol=0, atol=1e-5)
    torch.testing.assert_close(heads["two"], fused_two["state"]["lm_head.weight"], rtol=0, atol=0)
    # The ranks' halves of each global batch hold different numbers of response tokens.
    assert all(len(set(cs)) == 2 for cs in glob["counts"]), glob["counts"]
    assert [sum(cs) for cs in glob["counts"]] == [cs[0] for cs in one["counts"]]
    torch.testing.assert_close(
        torch.tensor(glob["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6
    )
    assert _max_diff(one["state"], glob["state"]) < 1e-5
    # A per-rank mean is another loss: it moves away from the one-process run.
    assert abs(per_rank["losses"][0] - one["losses"][0]) > 1e-4 * abs(one["losses"][0])
    assert _max_diff(one["state"], per_rank["state"]) > 1e-4


# ---------------------------------------------------------------------------------- launch checks
def _train_cfg(**kw):
    base = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, "deepspeed": None}
    return {**base, **kw}


def _env8(rank: int = 0, size: int = 8, local: int = 8) -> dict[str, str]:
    return {
        "WORLD_SIZE": str(size),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank % local),
        "LOCAL_WORLD_SIZE": str(local),
    }


def test_global_batch_mismatch_names_the_fix():
    from ts2.distributed import LaunchError, check_launch

    ok = check_launch(
        _train_cfg(global_batch_size=128),
        env=_env8(),
        cuda_available=True,
        device_count=8,
        nccl_available=True,
    )
    assert ok.global_batch_size == 128 and ok.training_args() == {"ddp_find_unused_parameters": False}
    with pytest.raises(
        LaunchError,
        match=r"4 x .*4 x world size 4 = 64 .*global_batch_size=128.*gradient_accumulation_steps=8",
    ):
        check_launch(
            _train_cfg(global_batch_size=128),
            env=_env8(size=4, local=4),
            cuda_available=True,
            device_count=4,
            nccl_available=True,
        )
    with pytest.raises(LaunchError, match="no accumulation count gives 128"):
        check_launch(
            _train_cfg(global_batch_size=128),
            env=_env8(size=3, local=3),
            cuda_available=True,
            device_count=3,
            nccl_available=True,
        )
    with pytest.raises(LaunchError, match="per_device_train_batch_size=0 must be a positive integer"):
        check_launch(_train_cfg(per_device_train_batch_size=0), env={})


def test_cpu_launch_uses_gloo_and_gpu_launch_checks_devices_and_nccl():
    from ts2.distributed import LaunchError, check_launch

    cpu = check_launch(_train_cfg(), env=_env8(size=2, local=2), cuda_available=False)
    assert cpu.use_cpu and cpu.training_args() == {"use_cpu": True, "ddp_find_unused_parameters": False}
    assert not check_launch(_train_cfg(), env={}, cuda_available=False).use_cpu  # one process: unchanged
    with pytest.raises(LaunchError, match="8 processes on this node but only 4 visible GPU"):
        check_launch(_train_cfg(), env=_env8(), cuda_available=True, device_count=4, nccl_available=True)
    with pytest.raises(LaunchError, match="NCCL is not available"):
        check_launch(_train_cfg(), env=_env8(), cuda_available=True, device_count=8, nccl_available=False)
    gloo = check_launch(
        _train_cfg(extra_args={"ddp_backend": "gloo"}),
        env=_env8(),
        cuda_available=True,
        device_count=8,
        nccl_available=False,
    )
    assert gloo.training_args() == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False}
    with pytest.raises(LaunchError, match="RANK=3, WORLD_SIZE=2"):
        check_launch(_train_cfg(), env={"WORLD_SIZE": "2", "RANK": "3"})


def test_paper_scale_without_cuda_stops_before_loading_anything(tmp_path):
    """The paper command on this CPU machine: refused in seconds (before tokenizer, data or weights), with
    the GPU requirement in its last lines, and nothing written (the run folder would be under cwd/runs)."""
    env = {**_env(), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "ts2.train", "experiment=paper_llama31_8b", "method=ts2"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-3:])
    assert "model=llama31_8b is a paper-scale model (scale: paper) and needs CUDA GPUs" in tail, tail
    assert "no CUDA GPU is visible here" in tail and "Loading weights" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_check_device_refuses_only_paper_models_without_cuda():
    from ts2.distributed import LaunchError, check_device

    paper = {"id": "qwen2_7b", "scale": "paper"}
    with pytest.raises(LaunchError, match=r"model=qwen2_7b is a paper-scale model .*needs CUDA GPUs"):
        check_device(paper, cuda_available=False)
    check_device(paper, cuda_available=True)
    check_device({"id": "tiny", "scale": "tiny"}, cuda_available=False)
    check_device({"id": "tiny_base", "tiny": {"pretrained": "tiny_base"}}, cuda_available=False)


def test_one_gpu_per_slurm_task_uses_the_visible_gpu():
    """Task 13 (node-local 5) of 2 nodes x 8 that bind one GPU per task sees only cuda:0: LOCAL_RANK becomes 0 (DeepSpeed
    takes cuda:<LOCAL_RANK>), LOCAL_WORLD_SIZE 1 (check_launch then accepts 1 GPU); torchrun's children
    inside one SLURM task, and tasks that see all 8 GPUs, are left alone."""
    from ts2.distributed import bind_visible_gpu, check_launch

    task = {**_env8(rank=13, size=16), "SLURM_LOCALID": "5", "CUDA_VISIBLE_DEVICES": "5"}
    env = dict(task)
    assert bind_visible_gpu(env, cuda_available=True, device_count=1)
    assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["TS2_SLURM_LOCALID"], env["RANK"]) == (
        "0",
        "1",
        "5",
        "13",
    )
    launch = check_launch(_train_cfg(), env=env, cuda_available=True, device_count=1, nccl_available=True)
    assert launch.world.world_size == 16 and launch.global_batch_size == 256
    for other, count in (({**task, "SLURM_LOCALID": "0"}, 1), (task, 8)):  # torchrun inside a task; all GPUs
        env = dict(other)
        assert not bind_visible_gpu(env, cuda_available=True, device_count=count) and env == other
    assert not bind_visible_gpu(dict(task), cuda_available=False)
    assert not bind_visible_gpu({"SLURM_LOCALID": "0"}, cuda_available=True, device_count=1)  # one process


def test_missing_deepspeed_and_missing_config_file(tmp_path):
    from ts2.distributed import LaunchError, check_launch

    ds = str(REPO / "experiments" / "table1" / "ds_zero2.json")
    with pytest.raises(LaunchError, match=r"needs the deepspeed package.*pip install 'ts2\[gpu\]'"):
        check_launch(_train_cfg(deepspeed=ds), env={}, deepspeed_installed=False)
    assert check_launch(_train_cfg(deepspeed=ds), env={}, deepspeed_installed=True).global_batch_size == 16
    with pytest.raises(LaunchError, match="no such file"):
        check_launch(_train_cfg(deepspeed=str(tmp_path / "nope.json")), env={}, deepspeed_installed=True)


def test_flash_attention_falls_back_to_sdpa_with_a_message(caplog):
    from ts2.distributed import resolve_attn_implementation as resolve

    assert resolve("sdpa") == "sdpa" and resolve(None) is None
    assert (
        resolve("flash_attention_2", cuda_available=True, flash_attn_installed=True, env={})
        == "flash_attention_2"
    )
    with caplog.at_level("WARNING", logger="ts2.distributed"):
        assert resolve("flash_attention_2", cuda_available=True, flash_attn_installed=False, env={}) == "sdpa"
    assert "flash_attn package is not installed: falling back to sdpa" in caplog.text
    assert resolve("flash_attention_2", cuda_available=False, flash_attn_installed=True, env={}) == "sdpa"
    with pytest.raises(ImportError, match="TS2_REQUIRE_FLASH_ATTN"):
        resolve(
            "flash_attention_2",
            cuda_available=False,
            flash_attn_installed=False,
            env={"TS2_REQUIRE_FLASH_ATTN": "1"},
        )


if __name__ == "__main__":  # torchrun worker for the FSDP2 test: tests/test_distributed.py OUT
    fsdp2_worker(Path(sys.argv[1]))


def test_slurm_tasks_become_torch_ranks(monkeypatch):
    """Task 9 of a 2-node x 8-task SLURM job (hydra/launcher=slurm) gets torchrun's variables."""
    pytest.importorskip("submitit", reason="optional extra: pip install 'ts2[slurm]'")
    from ts2.distributed import export_submitit_env, world

    exported = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    for k in exported:
        monkeypatch.delenv(k, raising=False)
    assert export_submitit_env() is None  # not in a submitit job: nothing to do
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "16",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
    }
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    try:
        w = export_submitit_env()
        assert (w.world_size, w.rank, w.local_rank, w.local_world_size) == (16, 9, 1, 8)
        assert world() == w and os.environ["MASTER_ADDR"] == "gpu07"
        port = int(os.environ["MASTER_PORT"])
        assert 20000 <= port <= 60000
        assert export_submitit_env() is None  # WORLD_SIZE is set now: a second call changes nothing
        for k in exported:
            del os.environ[k]
        export_submitit_env()
        assert int(os.environ["MASTER_PORT"]) == port  # every task of the job derives the same port
        monkeypatch.setenv("SLURM_NTASKS", "1")
        for k in exported:
            del os.environ[k]
        assert export_submitit_env() is None  # one task: a plain single-process run
    finally:
        for k in exported:
            os.environ.pop(k, None)
