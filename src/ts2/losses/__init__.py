"""Token losses for TS² (ICLR 2026): the Sparsemax+ training loss and the Table 1 baselines.

Every loss: ``fn(logits [N, V], labels [N], *, ignore_index=-100, reduction="mean", **hyperparameters)``
-> scalar (fp32; fp64 for fp64 input). Two implementations with the same maths and signature:

- ``<name>`` (e.g. ``ts2_loss``): the short reference, one file per loss; `LOSSES` maps ids to them.
- ``<name>_fast`` (e.g. ``ts2_loss_fast``, :mod:`ts2.losses.kernels`): exact partial-selection thresholds and
  closed-form gradients, no sort of a vocabulary row; the training default. `FAST_LOSSES` maps ids to them.

:func:`ts2.losses.fused.fused_linear_loss` goes from hidden states and the LM-head weight to any of these
losses without materialising the logits (``loss.fused=true`` in training).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ts2.losses.cross_entropy import cross_entropy_loss
from ts2.losses.entmax15 import entmax15, entmax15_loss
from ts2.losses.gem import gem_loss
from ts2.losses.kernels import (
    FAST_LOSSES,
    cross_entropy_loss_fast,
    entmax15_loss_fast,
    gem_loss_fast,
    label_smoothing_loss_fast,
    sparsemax_loss_fast,
    ts2_adaptive_loss_fast,
    ts2_loss_fast,
)
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
    "FAST_LOSSES",
    "LOSSES",
    "cross_entropy_loss",
    "cross_entropy_loss_fast",
    "entmax15",
    "entmax15_loss",
    "entmax15_loss_fast",
    "gem_loss",
    "gem_loss_fast",
    "label_smoothing_loss",
    "label_smoothing_loss_fast",
    "sparsemax",
    "sparsemax_loss",
    "sparsemax_loss_fast",
    "sparsemax_threshold",
    "ts2_adaptive_loss",
    "ts2_adaptive_loss_fast",
    "ts2_loss",
    "ts2_loss_fast",
]
