"""Token losses for TS² (ICLR 2026): the Sparsemax+ training loss and the Table 1 baselines.

One file per loss, ``ts2/losses/<id>.py``, holding a frozen `TokenLoss` dataclass (its hyperparameters and
their defaults, validated on construction) with the short reference and the fast exact kernel behind the
same signature ``(logits [N, V], labels [N], *, ignore_index=-100, reduction="mean") -> scalar`` (fp32;
fp64 for fp64 input). `LOSSES` maps each id to its class; it is found by listing this package, so a new
loss file is picked up by the Hydra schemas and the property tests without an edit here. The names a user
reaches for are the fast kernels:

    from ts2.losses import ts2_loss, TS2Loss
    ts2_loss(logits, labels, alpha=0.25)          # == TS2Loss(alpha=0.25)(logits, labels)
    ts2.losses.reference.ts2_loss(logits, labels)  # the sort-based reference, same value

:func:`ts2.losses.fused.fused_linear_loss` goes from hidden states and the LM-head weight to any of these
losses without materialising the logits (``loss.fused=true`` in training).
"""

from __future__ import annotations

import importlib
import pkgutil

from ts2.losses import reference
from ts2.losses.base import TokenLoss
from ts2.losses.ce import CrossEntropyLoss, ce_loss, cross_entropy_loss
from ts2.losses.ce_ls import LabelSmoothingLoss, label_smoothing_loss
from ts2.losses.entmax15 import Entmax15Loss, entmax15, entmax15_loss
from ts2.losses.gem import GEMLoss, gem_loss
from ts2.losses.sparsemax import SparsemaxLoss, sparsemax, sparsemax_loss, sparsemax_threshold
from ts2.losses.ts2 import TS2Loss, ts2_loss


def _find_losses() -> dict[str, type[TokenLoss]]:
    """Every `TokenLoss` subclass with an id defined in a module of this package, by id (module order)."""
    found: dict[str, type[TokenLoss]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            defined_here = isinstance(obj, type) and obj.__module__ == module.__name__
            if defined_here and issubclass(obj, TokenLoss) and obj.id:
                if obj.id in found:
                    raise ValueError(f"loss id {obj.id!r} defined twice: {found[obj.id]} and {obj}")
                found[obj.id] = obj
    return found


LOSSES: dict[str, type[TokenLoss]] = _find_losses()

__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "Entmax15Loss",
    "GEMLoss",
    "LabelSmoothingLoss",
    "SparsemaxLoss",
    "TS2Loss",
    "TokenLoss",
    "ce_loss",
    "cross_entropy_loss",
    "entmax15",
    "entmax15_loss",
    "gem_loss",
    "label_smoothing_loss",
    "reference",
    "sparsemax",
    "sparsemax_loss",
    "sparsemax_threshold",
    "ts2_loss",
]
