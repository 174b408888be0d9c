"""The short pure-torch reference losses of `ts2.losses` (TS², ICLR 2026, and its Table 1 baselines).

Same signature and maths as the fast exact kernels of the same name in `ts2.losses` (``ts2.losses.ts2_loss``
is fast; ``ts2.losses.reference.ts2_loss`` is this): sort-based thresholds and autograd gradients, written to
be read and to check the kernels against, not to train with (about 30x torch CE at V = 128k). Each is
``<Loss>(**hyperparameters).reference(...)`` of the loss's own file.
"""

from __future__ import annotations

from ts2.losses.ce import reference as cross_entropy_loss
from ts2.losses.ce_ls import reference as label_smoothing_loss
from ts2.losses.entmax15 import entmax15
from ts2.losses.entmax15 import reference as entmax15_loss
from ts2.losses.gem import reference as gem_loss
from ts2.losses.sparsemax import reference as sparsemax_loss
from ts2.losses.sparsemax import sparsemax, sparsemax_threshold
from ts2.losses.ts2 import reference as ts2_loss

ce_loss = cross_entropy_loss

__all__ = [
    "ce_loss",
    "cross_entropy_loss",
    "entmax15",
    "entmax15_loss",
    "gem_loss",
    "label_smoothing_loss",
    "sparsemax",
    "sparsemax_loss",
    "sparsemax_threshold",
    "ts2_loss",
]
