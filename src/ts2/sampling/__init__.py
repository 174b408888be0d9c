"""The sampling stage's parts: prompt builders, generation backends and the append-only sample store.

The entry point is :mod:`ts2.sample`; ``evaluation/README.md`` documents the files this stage writes.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

from ts2.sampling.backends import Batch, Generation, HFBackend, SamplingParams, VLLMBackend, derive_seed
from ts2.sampling.prompts import PromptRecord
from ts2.sampling.store import Sample, SampleFileError, SampleStore, read_samples

__all__ = [
    "Batch",
    "Generation",
    "HFBackend",
    "PromptRecord",
    "Sample",
    "SampleFileError",
    "SampleStore",
    "SamplingParams",
    "VLLMBackend",
    "derive_seed",
    "read_samples",
    "samples_dir",
]


def samples_dir(run_dir: str | None, model_path: str | None, model_id: str | None, runs_dir: str) -> str:
    """Default ``out_dir``: ``<run_dir>/samples``, else ``<runs_dir>/samples/<model name>``.

    The model name is a hub id with "/" made "_" (``meta-llama_Llama-3.1-8B``), the last two parts of a
    local folder (``ce-run_model``), or the ``model=`` config's id.
    """
    if run_dir:
        return str(Path(run_dir) / "samples")
    if model_path:
        p = Path(model_path)
        name = "_".join(p.parts[-2:]) if p.exists() else model_path
        return str(Path(runs_dir) / "samples" / (re.sub(r"[^\w.\-]+", "_", name).strip("_") or "model"))
    if model_id:
        return str(Path(runs_dir) / "samples" / model_id)
    raise ValueError(
        "Nothing to sample from: give run_dir=<training run folder>, model_path=<model> or model=<config>."
    )


if not OmegaConf.has_resolver("ts2_samples_dir"):
    OmegaConf.register_new_resolver("ts2_samples_dir", samples_dir)
