"""Launch configs: the SLURM (Hydra submitit) launcher, the accelerate configs for 1 node x 8 GPUs, and the
``make train-paper`` command line. No cluster and no GPU: what would be submitted or launched is inspected."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM_ENV = [k for k in os.environ if k.startswith("TS2_SLURM_")]


def _compose(overrides: list[str], config_name: str = "train"):
    from hydra import compose, initialize_config_dir

    from ts2.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def _launcher(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} inside the launcher node
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.fixture
def clean_env(monkeypatch):
    for k in SLURM_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_local_launcher_stays_the_default(clean_env):
    for name in ("train", "sample"):
        assert (
            _compose([], name).hydra.launcher._target_
            == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
        )


def test_slurm_launcher_composes_with_documented_defaults(clean_env):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="optional extra: pip install 'ts2[slurm]'"
    )
    p = _launcher(
        _compose(["hydra/launcher=slurm", "method=ts2", "paths.runs_dir=/shared/runs", "name=sweep"])
    )
    assert p["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (p["partition"], p["gpus_per_node"], p["tasks_per_node"], p["nodes"]) == ("gpu", 8, 8, 1)
    assert (p["cpus_per_task"], p["timeout_min"], p["mem_gb"], p["array_parallelism"]) == (8, 2880, None, 8)
    assert p["account"] is None and p["qos"] is None and p["max_num_timeout"] == 0
    assert p["submitit_folder"] == "/shared/runs/sweep/.submitit/%j"  # beside the runs: a shared filesystem


def test_slurm_settings_come_from_the_environment_then_the_command_line(clean_env):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="optional extra: pip install 'ts2[slurm]'"
    )
    clean_env.setenv("TS2_SLURM_PARTITION", "h100")
    clean_env.setenv("TS2_SLURM_GPUS_PER_NODE", "4")
    clean_env.setenv("TS2_SLURM_TIME_MIN", "600")
    clean_env.setenv("TS2_SLURM_ACCOUNT", "proj42")
    p = _launcher(_compose(["hydra/launcher=slurm"]))
    assert (p["partition"], p["gpus_per_node"], p["tasks_per_node"], p["timeout_min"], p["account"]) == (
        "h100",
        4,
        4,
        600,
        "proj42",
    )
    p = _launcher(
        _compose(["hydra/launcher=slurm", "hydra.launcher.partition=a100", "hydra.launcher.timeout_min=30"])
    )
    assert (p["partition"], p["timeout_min"]) == ("a100", 30)


def _fake_slurm(bin_dir: Path, capture: Path) -> None:
    """``srun`` (submitit checks it exists) and an ``sbatch`` that keeps the script it is given, then fails."""
    bin_dir.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f'#!/bin/sh\ncp "$1" "{capture}"\necho "sbatch: error: this is a test, nothing submitted" >&2\nexit 1\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_sweep_submits_one_array_job_with_the_documented_sbatch_settings(clean_env, tmp_path):
    """The documented command, run for real up to ``sbatch`` (a stand-in that records the script)."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="optional extra: pip install 'ts2[slurm]'"
    )
    capture = tmp_path / "job.sbatch"
    _fake_slurm(tmp_path / "bin", capture)
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "TS2_SLURM_PARTITION": "h100",
        "TS2_SLURM_TIME_MIN": "720",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable, "-m", "ts2.train", "-m", "hydra/launcher=slurm",
        "method=ce,gem,ts2", f"paths.runs_dir={tmp_path / 'runs'}", "name=sweep",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "this is a test, nothing submitted" in res.stderr + res.stdout
    text = capture.read_text()
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, flags=re.M))
    assert flags["partition"] == "h100" and flags["time"] == "720"
    assert flags["gpus-per-node"] == "8" and flags["ntasks-per-node"] == "8" and flags["nodes"] == "1"
    assert flags["cpus-per-task"] == "8" and flags["job-name"] == "ts2-train"
    assert flags["array"] == "0-2%3"  # three methods, one array job (at most 8 at once: min(3, 8))
    assert "export OMP_NUM_THREADS=1" in text and "srun" in text
    assert str(tmp_path / "runs" / "sweep" / ".submitit") in text


# ------------------------------------------------------------------------------ accelerate configs
ACCEL = REPO / "conf" / "accelerate"


@pytest.mark.parametrize("name", ["deepspeed_zero2", "fsdp2"])
def test_accelerate_config_is_one_node_eight_gpus_bf16(name):
    import json

    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ACCEL / f"{name}.yaml"))
    assert (cfg.num_processes, cfg.num_machines, cfg.use_cpu) == (8, 1, False)
    paper = yaml.safe_load((REPO / "conf" / "experiment" / "paper_llama31_8b.yaml").read_text())["train"]
    assert paper["bf16"] is True and paper["gradient_checkpointing"] is True
    if name == "deepspeed_zero2":
        assert cfg.distributed_type.value == "DEEPSPEED"
        ds_file = REPO / cfg.deepspeed_config["deepspeed_config_file"]
        assert ds_file == REPO / paper["deepspeed"]  # the launcher and the Trainer read one JSON
        ds = json.loads(ds_file.read_text())
        assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] == "auto"  # <- train.bf16
    else:
        assert cfg.distributed_type.value == "FSDP" and cfg.mixed_precision == "bf16"
        assert (
            cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_activation_checkpointing"] is True
        )


@pytest.mark.parametrize("backend", ["deepspeed_zero2", "fsdp2"])
def test_accelerate_launch_accepts_the_config(backend, monkeypatch):
    """accelerate's own launch validation, then what the launched processes would build from its environment:
    the DeepSpeed plugin (which refuses launcher-level settings that the JSON also holds) or the FSDP2 env."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = ["--config_file", str(ACCEL / f"{backend}.yaml"), "-m", "ts2.train", "method=ts2"]
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.num_processes == 8 and args.num_machines == 1
    if backend == "deepspeed_zero2":
        from accelerate.utils import DeepSpeedPlugin

        assert args.use_deepspeed and not args.use_fsdp
        fields = list(defaults.deepspeed_config) + (
            ["mixed_precision"] if mp_from_config else []
        )  # as launch_command
        monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(fields))
        plugin = DeepSpeedPlugin(hf_ds_config=str(REPO / "experiments" / "table1" / "ds_zero2.json"))
        assert plugin.zero_stage == 2
    else:
        from accelerate.utils.launch import prepare_multi_gpu_env

        assert args.use_fsdp and not args.use_deepspeed and args.mixed_precision == "bf16"
        env = prepare_multi_gpu_env(args)
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
        assert (
            env["FSDP_ACTIVATION_CHECKPOINTING"] == "true"
            and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
        )
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


@pytest.mark.parametrize(
    "backend, extra",
    [
        (
            "deepspeed_zero2",
            [],
        ),  # the experiment's train.deepspeed names the JSON the accelerate config reads
        ("fsdp2", ["train.deepspeed=null", "train.gradient_checkpointing=false"]),
    ],
)
def test_make_train_paper_launches_one_method_through_accelerate(backend, extra):
    """make train-paper and run.sh (SCALE=paper) share one launcher, experiments/table1/train_paper.sh: .venv's
    accelerate with the backend's --config_file (tests/test_plan.py checks run.sh's dry run)."""
    res = subprocess.run(
        ["make", "-n", "--no-print-directory", "train-paper", "METHOD=ts2", f"BACKEND={backend}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    line = [x for x in res.stdout.splitlines() if "train_paper.sh" in x][-1]
    assert f"BACKEND={backend}" in line and line.startswith("PY=.venv/bin/python ")
    assert line.rstrip().endswith(
        "bash experiments/table1/train_paper.sh experiment=paper_llama31_8b method=ts2"
    )
    env = {**os.environ, "PY": sys.executable, "BACKEND": backend, "PRINT": "1"}
    script = ["bash", "experiments/table1/train_paper.sh", "experiment=paper_llama31_8b", "method=ts2"]
    cmd = subprocess.run(
        script, cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    accelerate = str(Path(sys.executable).parent / "accelerate")
    assert cmd == [accelerate, "launch", "--config_file", f"conf/accelerate/{backend}.yaml", "-m", "ts2.train",
                   "experiment=paper_llama31_8b", "method=ts2", *extra]  # fmt: skip
    nproc = subprocess.run(
        script, cwd=REPO, env={**env, "NPROC": "4"}, capture_output=True, text=True, check=True
    )
    assert nproc.stdout.splitlines()[4:6] == ["--num_processes", "4"]
    bad = subprocess.run(script, cwd=REPO, env={**env, "BACKEND": "zero9"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "BACKEND=zero9: no conf/accelerate/zero9.yaml" in bad.stderr
    res = subprocess.run(["make", "-n", "train-paper"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "METHOD=" in res.stderr  # the method is required


def test_paper_configs_pin_the_global_batch():
    """The paper's recipe is 4 per device x 4 accumulation x 8 GPUs = 128 (PAPER.md §3); the launch check
    refuses another world size unless the accumulation is changed to keep 128."""
    for name in ("paper_llama31_8b", "paper_qwen2_7b"):
        cfg = yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())
        t = cfg["train"]
        assert (
            t["global_batch_size"]
            == t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] * 8
            == 128
        )


def test_slurm_memory_comes_from_the_plan_and_one_gpu_per_task_composes(clean_env):
    """mem_gb: the plan's host-RAM peak at load for a paper model (every task reads the bf16 weights), the
    environment's when set, none (the partition's default) at the tiny scale; slurm_gpu_per_task binds 1 GPU
    to each of 8 tasks."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="optional extra: pip install 'ts2[slurm]'"
    )
    from ts2.plan import slurm_mem_gb

    paper = ["experiment=paper_llama31_8b", "method=ts2"]
    assert (
        _launcher(_compose(["hydra/launcher=slurm", *paper]))["mem_gb"] == slurm_mem_gb("llama31_8b", 8) == 80
    )
    assert _launcher(_compose(["hydra/launcher=slurm", "method=ts2"]))["mem_gb"] is None
    clean_env.setenv("TS2_SLURM_GPUS_PER_NODE", "4")
    assert _launcher(_compose(["hydra/launcher=slurm", *paper]))["mem_gb"] == slurm_mem_gb("llama31_8b", 4)
    clean_env.setenv("TS2_SLURM_MEM_GB", "500")
    assert _launcher(_compose(["hydra/launcher=slurm", *paper]))["mem_gb"] == 500
    clean_env.delenv("TS2_SLURM_MEM_GB")
    clean_env.delenv("TS2_SLURM_GPUS_PER_NODE")
    p = _launcher(_compose(["hydra/launcher=slurm_gpu_per_task", *paper]))
    assert (p["gpus_per_task"], p["gpus_per_node"], p["tasks_per_node"], p["mem_gb"]) == (1, None, 8, 80)
    assert p["partition"] == "gpu" and p["_target_"].endswith("SlurmLauncher")
