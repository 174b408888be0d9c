"""Sparsemax+, the TS² training loss ("TS²: Training with Sparsemax+, Testing with Softmax", ICLR 2026).

Per token, with S the sparsemax support of T z (temperature T, default 1) and the head H = S ∪ {y}:
``L(z; y) = L_spm(T z; y) + alpha * penalty``,
``penalty = -log(1 - sum_{i not in H} softmax(z)_i) = logsumexp(z) - logsumexp(z_H)``.
Gradient: ``T (sparsemax(T z) - e_y) + alpha (softmax(z) - softmax_H(z))``, softmax_H renormalised over H
and zero elsewhere; the support mask carries no gradient.
Official-code quirk (kept as the default, ``clamp=0.99``): the tail mass is clamped at `clamp` before the
log, i.e. the penalty is capped at ``-log(1 - clamp)`` (about 4.605) with zero gradient above the cap.
``clamp=None`` gives the uncapped loss. `ts2_adaptive_loss` (a variant in the official code) scales the
penalty of each token by ``1 - sparsemax(T z)_y``, detached.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ts2.losses._common import check_hyperparameter, token_loss
from ts2.losses.sparsemax import sparsemax_loss_and_probs


def _per_token(
    z: Tensor, y: Tensor, *, alpha: float, clamp: float | None, temperature: float, adaptive: bool
) -> Tensor:
    spm, p = sparsemax_loss_and_probs(z * temperature if temperature != 1.0 else z, y)
    head = (p > 0).scatter(1, y.unsqueeze(1), True)
    # A difference of logsumexps, not -log(1 - tail), stays exact as the tail mass nears 1; taking it in the
    # frame shifted by the (detached) row max keeps it exact for logits of size 1e4 in fp32.
    zs = z - z.detach().amax(dim=-1, keepdim=True)
    penalty = torch.logsumexp(zs, dim=-1) - torch.logsumexp(zs.masked_fill(~head, -math.inf), dim=-1)
    if clamp is not None:
        penalty = penalty.clamp(max=-math.log1p(-clamp))
    if adaptive:
        penalty = penalty * (1.0 - p.gather(1, y.unsqueeze(1)).squeeze(1))
    return spm + alpha * penalty


def _check(name: str, alpha: float, clamp: float | None, temperature: float) -> None:
    if not alpha >= 0:
        raise ValueError(f"{name}: alpha must be >= 0, got {alpha!r}")
    if clamp is not None:
        check_hyperparameter(name, "clamp", clamp, low=0.0, high=1.0)
    check_hyperparameter(name, "temperature", temperature, low=0.0)


def ts2_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    alpha: float = 0.25,
    clamp: float | None = 0.99,
    temperature: float = 1.0,
) -> Tensor:
    """Sparsemax+ ``L_spm(T z; y) + alpha (logsumexp(z) - logsumexp(z_H))``, H = S ∪ {y}.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    alpha >= 0; clamp in (0, 1) caps the tail mass (official quirk) or None (uncapped); temperature > 0
    scales the logits inside sparsemax only. A label on a -inf logit gives +inf loss.
    """
    _check("ts2_loss", alpha, clamp, temperature)
    per_token = functools.partial(
        _per_token, alpha=alpha, clamp=clamp, temperature=temperature, adaptive=False
    )
    return token_loss(logits, labels, per_token, ignore_index=ignore_index, reduction=reduction)


def ts2_adaptive_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    alpha: float = 0.25,
    clamp: float | None = 0.99,
    temperature: float = 1.0,
) -> Tensor:
    """Adaptive Sparsemax+: as `ts2_loss`, the penalty of each token scaled by ``1 - sparsemax(T z)_y``.

    The scale is detached. Shapes, dtypes and hyperparameters as in `ts2_loss`.
    """
    _check("ts2_adaptive_loss", alpha, clamp, temperature)
    per_token = functools.partial(
        _per_token, alpha=alpha, clamp=clamp, temperature=temperature, adaptive=True
    )
    return token_loss(logits, labels, per_token, ignore_index=ignore_index, reduction=reduction)
