"""Provenance recorded by every stage (run.json, samples meta, metrics files): git sha, package versions, and
the stage's own log file (``train.log``, ``sample.log``)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

BASE_PACKAGES = ("ts2", "torch", "transformers")


def git_sha() -> str | None:
    """HEAD of the ts2 checkout, or None outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def versions(*extra: str) -> dict[str, str]:
    """Python and the installed versions of ts2, torch, transformers and ``extra`` packages (absent: left out)."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in (*BASE_PACKAGES, *extra):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def log_to_file(path: Path) -> logging.Handler:
    """Send the root logger to ``path`` too (what Hydra's job log did, but only once a run is accepted)."""
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # created on the first record
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler
