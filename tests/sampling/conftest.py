"""Fixtures for the sampling-stage tests: a trained tiny run folder and sample-config composition."""

from __future__ import annotations

from pathlib import Path

import pytest

import ts2.sampling  # noqa: F401  (registers the ts2_samples_dir resolver that conf/sample.yaml uses)


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """sampler.torch_threads=1 (stable timings on shared cores) is process-wide: undo it after each module."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_run(compose, tmp_path_factory) -> Path:
    """A CE run of the tiny model (debug=cpu, 8 steps) with its final model, as `python -m ts2.train` leaves it."""
    import torch
    from omegaconf import OmegaConf

    from ts2.train import train

    root = tmp_path_factory.mktemp("runs")
    cfg = compose(["method=ce", "debug=cpu", "train.save_final_model=true", f"paths.runs_dir={root}"])
    run_dir = root / "train" / "method=ce"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model trains faster on one thread than on two shared cores
    try:
        train(cfg, run_dir)
    finally:
        torch.set_num_threads(threads)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what Hydra writes for a CLI run
    return run_dir


@pytest.fixture(scope="session")
def sample_cfg(compose):
    """sample_cfg(overrides) -> the composed `conf/sample.yaml` (CPU-stable: one torch thread)."""

    def _cfg(overrides: list[str]):
        return compose(["sampler.torch_threads=1", *overrides], config_name="sample")

    return _cfg
