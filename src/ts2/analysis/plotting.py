"""Plotting style shared by the figures of :mod:`ts2.analysis` (one colour per method id, headless Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "ce": "#7f7f7f",
    "ce_wd": "#bcbd22",
    "neft": "#17becf",
    "gem": "#1f77b4",
    "ce_ls": "#9467bd",
    "sparsemax": "#ff7f0e",
    "entmax15": "#8c564b",
    "ts2": "#d62728",
    "pretrained": "#2ca02c",
}


class NoData(LookupError):
    """A figure's data is not in the runs (``ts2.analysis.figures.write_figures`` skips it with a log line)."""


EXTRA_COLORS = ("#e377c2", "#000000", "#9edae5", "#c49c94", "#dbdb8d", "#393b79")


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (folders made) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
