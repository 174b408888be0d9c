"""Multi-process launch checks and helpers for ``ts2.train`` (torchrun / ``accelerate launch`` / SLURM).

The loss of one optimizer step is the sum of per-token losses over the response tokens of the *global*
batch (every micro-batch of the step on every rank) divided by their number (PAPER.md §3). With
``transformers.Trainer`` (5.x) that holds only when the Trainer knows it is distributed: it then all-gathers
the per-rank token counts into ``num_items_in_batch`` (``average_tokens_across_devices``, default true) and
multiplies each rank's ``sum / num_items_in_batch`` by the number of processes, which the gradient all-reduce
(DDP, ZeRO-2) or reduce-scatter (FSDP2) averages back to ``sum_all_ranks / num_items``.

On a machine without CUDA, ``accelerate`` treats a torchrun launch as *not* distributed unless it is told to
use the CPU (``TrainingArguments(use_cpu=True)``): every rank then trained alone on the whole data set and
appended its own log lines. :func:`check_launch` decides that flag, and fails early, with the fix in the
message, on launches that would go wrong later or silently:

- the global batch (per-device batch x accumulation x world size) differs from ``train.global_batch_size``
  when an experiment pins it (the paper: 4 x 4 x 8 = 128 sequences);
- more processes on a node than GPUs, or a CUDA launch where torch has no NCCL;
- ``train.deepspeed`` set without the ``deepspeed`` package, or naming a missing file.

It also turns off DDP's search for unused parameters (every parameter is used; the fused loss applies the LM
head weight after the model's forward has returned it, which that search mistakes for unused).

:func:`check_device` refuses a paper-scale model (``scale: paper``) where torch sees no CUDA GPU, before
anything is loaded or written.

:func:`resolve_attn_implementation` turns ``flash_attention_2`` into ``sdpa`` with a warning where flash-attn
cannot run (``TS2_REQUIRE_FLASH_ATTN=1`` makes that an error instead).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ts2.distributed")

FLASH_ATTN = ("flash_attention_2", "flash_attention_3")


class LaunchError(RuntimeError):
    """A multi-process launch that cannot work as configured; the message says what to change."""


@dataclass(frozen=True)
class World:
    """Where this process sits in the launch (from the launcher's environment variables)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 0  # 0: not told (the launcher did not set LOCAL_WORLD_SIZE)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], *names: str, default: int) -> int:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as err:
                raise LaunchError(f"Environment variable {name}={value!r} is not an integer.") from err
    return default


def world(env: Mapping[str, str] | None = None) -> World:
    """The launch as torchrun / accelerate / deepspeed describe it (``WORLD_SIZE``, ``RANK``, ``LOCAL_*``)."""
    env = os.environ if env is None else env
    size = _env_int(env, "WORLD_SIZE", default=1)
    rank = _env_int(env, "RANK", default=0)
    local_rank = _env_int(env, "LOCAL_RANK", default=0)
    local_size = _env_int(env, "LOCAL_WORLD_SIZE", default=0)
    if size < 1 or not 0 <= rank < size:
        raise LaunchError(f"Inconsistent launch environment: RANK={rank}, WORLD_SIZE={size}.")
    return World(size, rank, local_rank, local_size)


def is_main_process() -> bool:
    """True on the process that writes shared files (rank 0; the only process of a plain run)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return world().is_main


@dataclass(frozen=True)
class LaunchPlan:
    """What :func:`check_launch` decided: the world, the global batch, and TrainingArguments to add."""

    world: World
    global_batch_size: int
    use_cpu: bool
    ddp_backend: str | None
    find_unused_parameters: bool | None = None

    def training_args(self) -> dict[str, Any]:
        """Keyword arguments for ``TrainingArguments`` (only those that differ from its defaults)."""
        out: dict[str, Any] = {}
        if self.use_cpu:
            out["use_cpu"] = True
        if self.ddp_backend:
            out["ddp_backend"] = self.ddp_backend
        if self.find_unused_parameters is not None:
            out["ddp_find_unused_parameters"] = self.find_unused_parameters
        return out


def check_device(model_cfg: Mapping[str, Any], *, cuda_available: bool | None = None) -> None:
    """Refuse a paper-scale model (``scale: paper`` in ``conf/model/``) where torch sees no CUDA GPU.

    Called first by ``ts2.train``, before any weight, tokenizer or data loads and before the run folder is
    taken: an 8B model in bf16 on CPUs would need hours per step (and > 100 GB of RAM with Adam), and
    ``use_cpu=True`` would otherwise let it start. ``cuda_available`` overrides the probe (tests).
    """
    from ts2.conf import scale_of

    if scale_of(model_cfg) != "paper":
        return
    import torch

    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if cuda:
        return
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    raise LaunchError(
        f"model={model_cfg.get('id')} is a paper-scale model (scale: paper) and needs CUDA GPUs (the recipe: "
        f"8 x 80 GB, PAPER.md §3), but no CUDA GPU is visible here (torch {torch.__version__}, {build}; "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Run it on a GPU node (`make "
        "install VLLM_FLAVOR=cuda` and `make install-gpu` there), or train model=tiny_base on this machine."
    )


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LaunchError(f"{key}={value!r} must be a positive integer.")
    return value


def check_launch(
    train_cfg: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    cuda_available: bool | None = None,
    device_count: int | None = None,
    nccl_available: bool | None = None,
    deepspeed_installed: bool | None = None,
) -> LaunchPlan:
    """Check a training launch against its config; see the module docstring. Keyword overrides are for tests.

    ``train_cfg`` is the ``train:`` node (``per_device_train_batch_size``, ``gradient_accumulation_steps``,
    optional ``global_batch_size``, ``deepspeed``, ``extra_args``).
    """
    import torch

    w = world(env)
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    per_device = _positive_int(
        train_cfg.get("per_device_train_batch_size"), "train.per_device_train_batch_size"
    )
    accum = _positive_int(train_cfg.get("gradient_accumulation_steps"), "train.gradient_accumulation_steps")
    global_batch = per_device * accum * w.world_size

    wanted = train_cfg.get("global_batch_size")
    if wanted is not None:
        wanted = _positive_int(wanted, "train.global_batch_size")
        if wanted != global_batch:
            per_step = per_device * w.world_size
            hint = (
                f"train.gradient_accumulation_steps={wanted // per_step} keeps it at {wanted}"
                if wanted % per_step == 0
                else f"no accumulation count gives {wanted} with {per_device} x {w.world_size}: change "
                "train.per_device_train_batch_size"
            )
            raise LaunchError(
                f"Global batch mismatch: train.per_device_train_batch_size={per_device} x "
                f"train.gradient_accumulation_steps={accum} x world size {w.world_size} = {global_batch} "
                f"sequences per optimizer step, but train.global_batch_size={wanted} (the recipe's). "
                f"With {w.world_size} processes, {hint}; or set train.global_batch_size=null to accept {global_batch}."
            )

    extra = dict(train_cfg.get("extra_args") or {})
    backend = extra.get("ddp_backend")
    use_cpu = bool(extra.get("use_cpu", False))
    if w.distributed and not cuda:
        # accelerate only treats a CPU launch as distributed when told to use the CPU (gloo).
        use_cpu = True
        if backend not in (None, "gloo", "mpi"):
            raise LaunchError(
                f"train.extra_args.ddp_backend={backend!r} needs GPUs, but CUDA is not available here; "
                "CPU processes talk over gloo (drop the setting)."
            )
    elif w.distributed and cuda and not use_cpu:
        count = torch.cuda.device_count() if device_count is None else device_count
        if w.local_world_size > count:  # torchrun and accelerate launch set LOCAL_WORLD_SIZE
            raise LaunchError(
                f"{w.local_world_size} processes on this node but only {count} visible GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): launch with "
                f"--nproc_per_node {count} (torchrun) or --num_processes {count} (accelerate)."
            )
        if backend in (None, "nccl"):
            import torch.distributed as dist

            nccl = dist.is_nccl_available() if nccl_available is None else nccl_available
            if not nccl:
                raise LaunchError(
                    "NCCL is not available in this torch build (torch.distributed.is_nccl_available() is False), "
                    f"so {w.world_size} GPU processes cannot all-reduce gradients. Install a CUDA build of torch "
                    "with NCCL, or set +train.extra_args.ddp_backend=gloo (slow; for debugging only)."
                )

    ds = train_cfg.get("deepspeed")
    if ds:
        installed = (
            importlib.util.find_spec("deepspeed") is not None
            if deepspeed_installed is None
            else deepspeed_installed
        )
        if not installed:
            raise LaunchError(
                f"train.deepspeed={ds!r} needs the deepspeed package, which is not installed: "
                "`pip install 'ts2[gpu]'` (or `pip install deepspeed`) on the GPU machine, or set "
                "train.deepspeed=null to train with plain DDP / FSDP2 (accelerate config conf/accelerate/fsdp2.yaml)."
            )
        if isinstance(ds, str) and not Path(ds).is_file():
            raise LaunchError(
                f"train.deepspeed={ds!r}: no such file (relative paths are resolved from {Path.cwd()}; "
                "launch from the repository root)."
            )
    # Every parameter of a causal LM gets a gradient. Trainer otherwise asks DDP to search for unused ones
    # (whenever checkpointing is off), and DDP then takes the LM head of the fused loss (loss.fused=true),
    # which the loss applies outside the model's forward, for unused: "marked as ready twice".
    find_unused = None
    if w.distributed and "ddp_find_unused_parameters" not in extra:
        find_unused = False
    return LaunchPlan(
        world=w,
        global_batch_size=global_batch,
        use_cpu=use_cpu,
        ddp_backend=backend,
        find_unused_parameters=find_unused,
    )


def resolve_attn_implementation(
    requested: str | None,
    *,
    cuda_available: bool | None = None,
    flash_attn_installed: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The attention implementation to load with: ``requested``, or ``sdpa`` where flash-attn cannot run.

    The paper trains with flash-attention 2 (PAPER.md §3). It needs the ``flash_attn`` package and a CUDA
    GPU; without either, this warns and returns ``"sdpa"`` (same maths, more memory at long sequences), unless
    ``TS2_REQUIRE_FLASH_ATTN=1`` is set, in which case it raises ``ImportError``.
    """
    if requested not in FLASH_ATTN:
        return requested
    env = os.environ if env is None else env
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    module = "flash_attn_interface" if requested == "flash_attention_3" else "flash_attn"
    installed = (
        importlib.util.find_spec(module) is not None if flash_attn_installed is None else flash_attn_installed
    )
    if installed and cuda_available:
        return requested
    why = f"the {module} package is not installed" if not installed else "no CUDA GPU is visible"
    if env.get("TS2_REQUIRE_FLASH_ATTN", "") not in ("", "0"):
        raise ImportError(
            f"model.attn_implementation={requested!r} but {why}, and TS2_REQUIRE_FLASH_ATTN is set. "
            "Install it on the GPU machine (`pip install flash-attn --no-build-isolation`) or unset "
            "TS2_REQUIRE_FLASH_ATTN to fall back to sdpa."
        )
    log.warning(
        "model.attn_implementation=%s requested but %s: falling back to sdpa (same results, more memory "
        "at long sequences). Install flash-attn (`pip install flash-attn --no-build-isolation`) on a GPU "
        "machine, or set model.attn_implementation=sdpa to silence this.",
        requested,
        why,
    )
    return "sdpa"


def export_submitit_env(env: Mapping[str, str] | None = None) -> World | None:
    """Inside a SLURM job launched by Hydra's submitit launcher (``hydra/launcher=slurm``) with several tasks,
    export the torch.distributed variables (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) that torchrun would set, so each task is one rank of the training.

    Does nothing (returns None) outside such a job or when a launcher already set ``WORLD_SIZE``.
    Every task sees all the node's GPUs and picks its own by ``LOCAL_RANK``, as under torchrun, unless SLURM
    binds one GPU to each task (`bind_visible_gpu`).
    """
    env_ = os.environ if env is None else env
    if env_.get("SUBMITIT_EXECUTOR") != "slurm" or env_.get("WORLD_SIZE"):
        return None
    if _env_int(env_, "SLURM_NTASKS", default=1) <= 1:
        return None
    from submitit.helpers import TorchDistributedEnvironment

    dist_env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info(
        "SLURM task %d of %d (node-local %d): torch.distributed rendezvous at %s:%d",
        dist_env.rank,
        dist_env.world_size,
        dist_env.local_rank,
        dist_env.master_addr,
        dist_env.master_port,
    )
    return World(dist_env.world_size, dist_env.rank, dist_env.local_rank, dist_env.local_world_size)


def bind_visible_gpu(
    env: dict[str, str] | None = None, *, cuda_available: bool | None = None, device_count: int | None = None
) -> bool:
    """One GPU bound to each SLURM task (``--gpus-per-task=1``, hydra/launcher=slurm_gpu_per_task): make the
    process use the one GPU it sees.

    Each task then sees a single device, cuda:0, while its node-local rank (``LOCAL_RANK``, from
    ``SLURM_LOCALID``) runs 0..7; DeepSpeed picks ``cuda:<LOCAL_RANK>`` ("invalid device ordinal") and
    `check_launch` would count 8 processes for 1 GPU. When this is a SLURM task (``SLURM_LOCALID`` equals
    ``LOCAL_RANK``: not torchrun's children inside one task) of a distributed launch that sees exactly one GPU,
    ``LOCAL_RANK`` becomes 0 and ``LOCAL_WORLD_SIZE`` 1 (the node-local rank is kept in
    ``TS2_SLURM_LOCALID``), so torch, accelerate and DeepSpeed all choose the visible device. Returns whether
    it did. Under torchrun every process sees the same GPUs and nothing changes.
    """
    env = os.environ if env is None else env
    w = world(env)
    if (
        not w.distributed
        or env.get("SLURM_LOCALID") in (None, "")
        or env["SLURM_LOCALID"] != str(w.local_rank)
    ):
        return False
    import torch

    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    count = (torch.cuda.device_count() if cuda else 0) if device_count is None else device_count
    if not cuda or count != 1 or (w.local_rank == 0 and w.local_world_size <= 1):
        return False
    env["TS2_SLURM_LOCALID"] = str(w.local_rank)
    env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"] = "0", "1"
    log.info(
        "SLURM task %d (node-local %d) sees one GPU (CUDA_VISIBLE_DEVICES=%r): using cuda:0, LOCAL_RANK=0.",
        w.rank,
        w.local_rank,
        env.get("CUDA_VISIBLE_DEVICES"),
    )
    return True


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum ``values`` over all ranks (a no-op without an initialised process group)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
