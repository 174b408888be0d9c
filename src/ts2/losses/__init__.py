"""Reference token losses for TS² (ICLR 2026): the Sparsemax+ training loss and the Table 1 baselines.

Every loss: ``fn(logits [N, V], labels [N], *, ignore_index=-100, reduction="mean", **hyperparameters)``
-> scalar (fp32; fp64 for fp64 input). `LOSSES` maps each loss id to its function.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ts2.losses.cross_entropy import cross_entropy_loss
from ts2.losses.entmax15 import entmax15, entmax15_loss
from ts2.losses.gem import gem_loss
from ts2.losses.label_smoothing import label_smoothing_loss
from ts2.losses.sparsemax import sparsemax, sparsemax_loss, sparsemax_threshold
from ts2.losses.ts2 import ts2_adaptive_loss, ts2_loss

LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce": cross_entropy_loss,
    "label_smoothing": label_smoothing_loss,
    "gem": gem_loss,
    "sparsemax": sparsemax_loss,
    "entmax15": entmax15_loss,
    "ts2": ts2_loss,
    "ts2_adaptive": ts2_adaptive_loss,
}

__all__ = [
    "LOSSES",
    "cross_entropy_loss",
    "entmax15",
    "entmax15_loss",
    "gem_loss",
    "label_smoothing_loss",
    "sparsemax",
    "sparsemax_loss",
    "sparsemax_threshold",
    "ts2_adaptive_loss",
    "ts2_loss",
]
