"""Shared helpers for the benchmark scripts: provenance, median timing and peak memory.

Peak memory is measured as the growth of the process's resident set during one call (CPU): glibc is first
asked to give freed heap memory back (`malloc_trim`), the kernel's high-water mark is reset by writing "5"
to /proc/self/clear_refs, and the peak is ``VmHWM - VmRSS`` read before the call. That counts every page
the call touches (tensors, allocator slack, library scratch), not only live tensor bytes; it includes the
gradients the call leaves behind. On CUDA it is ``max_memory_allocated`` minus the memory allocated before
the call (live tensors only).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "benchmarks"  # the CSVs that benchmarks/README.md cites


def csv_path(
    name: str, parser: argparse.ArgumentParser, args: argparse.Namespace, given: str | Path | None
) -> Path:
    """Where a benchmark writes its CSV ``name``: ``given`` (its ``--csv``/``--out``) when given; else
    ``results/benchmarks/<name>``, the committed file that benchmarks/README.md cites, but only for the run that
    file holds (every option at its default); else a scratch file ``<TMPDIR>/ts2-benchmarks/<name>``, so that a
    ``--quick`` or partial run never replaces the committed numbers. Says so when it is the scratch file."""
    if given:
        return Path(given)
    defaults = vars(parser.parse_args([]))
    changed = [k for k, v in vars(args).items() if defaults.get(k) != v]
    if not changed:
        return COMMITTED / name
    path = Path(os.environ.get("TMPDIR") or "/tmp") / "ts2-benchmarks" / name
    options = " ".join("--" + k.replace("_", "-") for k in changed)
    print(
        f"# not the committed run ({options} set): the CSV goes to {path}, not {COMMITTED / name} "
        "(pass --csv <path> to choose, e.g. that committed file to replace it)"
    )
    return path


def _git_sha() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
        ).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "absent"


def provenance(device: torch.device | None = None) -> dict[str, str]:
    """Machine, versions, allocator settings, git sha and UTC date, for the CSV of a benchmark run."""
    device = device or torch.device("cpu")
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    allocator = os.environ.get("LD_PRELOAD", "") or "glibc malloc"
    malloc_env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": _git_sha(),
        "host": platform.node(),
        "device": dev,
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "entmax": _version("entmax"),
        "allocator": (allocator + (" " + malloc_env if malloc_env else "")).strip(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mib(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Extra memory (MiB) that one call of `fn` needs at its peak, beyond what was in use before it."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _trim_heap()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    peak_mib: float
    reps: int


def measure(
    fn: Callable[[], object],
    *,
    reps: int = 3,
    warmup: int = 1,
    device: torch.device | None = None,
    memory: bool = True,
    budget_s: float = math.inf,
) -> Measurement:
    """Median wall time of up to `reps` calls after `warmup` calls; peak memory on the first warmup call.

    When the warmup calls show that `reps` calls would exceed `budget_s` seconds, fewer are made; when
    even one would, the time is that of the warmup calls (`Measurement.reps` = the calls in the median).
    `fn` must clean up after itself (e.g. drop the gradients it created) so that calls are independent.
    """
    device = device or torch.device("cpu")
    peak = math.nan

    def timed(call: Callable[[], object]) -> float:
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        return (time.perf_counter() - start) * 1e3

    warm: list[float] = []
    if memory:  # the first warmup call (or an extra call when warmup=0) measures the peak memory
        start = time.perf_counter()
        peak = peak_memory_mib(fn, device)
        if warmup:
            warm.append((time.perf_counter() - start) * 1e3)
    warm += [timed(fn) for _ in range(warmup - len(warm))]
    if warm and math.isfinite(budget_s):
        reps = min(reps, int(budget_s * 1e3 / max(statistics.mean(warm), 1e-6)))
    times = [timed(fn) for _ in range(reps)] or warm
    return Measurement(statistics.median(times) if times else math.nan, peak, len(times))


def mem_available_mib() -> float:
    """MemAvailable of the machine in MiB (inf where /proc/meminfo is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")
