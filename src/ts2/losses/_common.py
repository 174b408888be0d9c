"""Shared plumbing for the token-level losses: input checks, fp32 upcast, ignored tokens, reduction.

Every loss in `ts2.losses` has the signature
``fn(logits [N, V], labels [N], *, ignore_index=-100, reduction="mean", **hyperparameters) -> scalar``
and is written as a per-token function ``per_token(z [M, V], y [M]) -> [M]`` on the M non-ignored rows,
already upcast to the compute dtype. `token_loss` does the rest, so every loss treats the corner cases
(all tokens ignored, N = 0, low-precision input) in the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum")

PerTokenLoss = Callable[[Tensor, Tensor], Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the maths is done in: float64 stays float64, every other float dtype becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_inputs(logits: Tensor, labels: Tensor, *, ignore_index: int, reduction: str) -> None:
    """Raise a clear error for a bad shape, dtype, reduction or label value.

    logits: [N, V] float; labels: [N] integer; non-ignored labels must lie in [0, V).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(
            f"logits and labels must be torch Tensors, got {type(logits).__name__} and {type(labels).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [N, V], got shape {tuple(logits.shape)}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {tuple(labels.shape)}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits and labels disagree on N: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}"
        )
    vocab = logits.shape[1]
    valid = labels[labels != ignore_index]
    bad = valid[(valid < 0) | (valid >= vocab)]
    if bad.numel() > 0:
        raise ValueError(
            f"label {int(bad[0])} is out of range [0, {vocab}) (and is not ignore_index={ignore_index})"
        )


def check_number(loss: str, name: str, value: object) -> None:
    """Raise TypeError unless `value` is a real number (an int or a float, not a bool: True is no alpha)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{loss}: {name} must be a float, got {type(value).__name__} {value!r}")


def check_hyperparameter(
    loss: str, name: str, value: float, *, low: float, high: float = math.inf, low_inclusive: bool = False
) -> None:
    """Raise TypeError unless `value` is a number and ValueError unless ``low < value < high``
    (``low <= value`` when `low_inclusive`); NaN and +-inf fail (an infinite weight or temperature reaches the
    kernels as NaN and crashes there, far from the setting)."""
    check_number(loss, name, value)
    ok_low = value >= low if low_inclusive else value > low
    if not (ok_low and value < high and math.isfinite(value)):
        if high == math.inf:
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"{loss}: {name} must be a finite number {op} {low:g}, got {value!r}")
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{loss}: {name} must be in {bracket}{low}, {high}), got {value!r}")


def token_loss(
    logits: Tensor, labels: Tensor, per_token: PerTokenLoss, *, ignore_index: int, reduction: str
) -> Tensor:
    """Check the inputs, keep the non-ignored rows, upcast, apply `per_token`, reduce.

    logits [N, V] (any float dtype), labels [N] -> scalar in float32 (float64 for float64 input).
    "mean" divides by the number of non-ignored tokens, "sum" does not. Ignored rows are dropped before
    the loss is computed, so whatever they hold (padding, NaN) cannot reach the value or the gradient.
    With no non-ignored token the result is 0, still connected to the graph (its gradient is zero).
    """
    check_inputs(logits, labels, ignore_index=ignore_index, reduction=reduction)
    keep = (labels != ignore_index).nonzero().squeeze(1)
    z = logits.index_select(0, keep).to(compute_dtype(logits.dtype))
    if keep.numel() == 0:
        return z.sum()  # empty sum: 0, differentiable, zero gradient (no 0 * inf from masked logits)
    losses = per_token(z, labels.index_select(0, keep))
    return losses.mean() if reduction == "mean" else losses.sum()
