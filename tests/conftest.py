"""Shared fixtures: compose the real Hydra config, offline settings, a tiny-model run."""

from __future__ import annotations

import os

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
