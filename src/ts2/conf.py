"""Hydra glue: the config folder and the OmegaConf resolvers the configs use."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

# The repo's conf/ (editable install / source checkout). Entry points pass this to @hydra.main.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _data_dir() -> str:
    from ts2.paths import data_dir

    found = data_dir(required=False)
    return str(found) if found else ""


def _dirname(overrides: str, default: str = "default") -> str:
    """A run-folder name from Hydra's override_dirname: path separators made safe, empty -> default."""
    return re.sub(r"[/\\]+", "_", overrides).strip("_") or default


def _subdir(parent: str | None, name: str) -> str | None:
    """``<parent>/<name>``, or None when no parent folder is given."""
    return str(Path(parent) / name) if parent else None


def register_resolvers() -> None:
    for name, fn in (("ts2_data_dir", _data_dir), ("ts2_dirname", _dirname), ("ts2_subdir", _subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
