"""GEM (Li et al., 2025, "Preserving diversity in supervised fine-tuning"), a TS² (ICLR 2026) baseline.

Per token, with p = softmax(z), q = softmax(z / beta) and weights w, both detached (stop-gradient):
``L(z; y) = -sum_i q_i w_i (log p_y - log p_i)``,
``w_i = sigmoid(0.01 (z_i - z_y))`` for h = "logsigmoid" (the official scripts) and ``w_i = 1`` for
h = "linear". Since ``log p_y - log p_i = z_y - z_i``, the gradient is ``g_i = q_i w_i`` for i != y and
``g_y = -sum_{i != y} q_i w_i``; with h = "linear" it is ``softmax(z / beta) - e_y``, the gradient of
``beta * CE(z / beta)``. The value is a surrogate whose gradient is the one above (it can be negative);
it is not the function whose derivative autograd would give without the stop-gradients.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ts2.losses._common import check_hyperparameter, token_loss

H_CHOICES = ("linear", "logsigmoid")


def _per_token(z: Tensor, y: Tensor, *, beta: float, h: str) -> Tensor:
    z_y = z.gather(1, y.unsqueeze(1))
    with torch.no_grad():
        q = torch.softmax(z / beta, dim=-1)
        w = torch.sigmoid(0.01 * (z - z_y)) if h == "logsigmoid" else torch.ones_like(z)
        qw = q * w
    # Masked (-inf) entries have q_i = 0; keep them out of the product, or 0 * inf = NaN.
    gap = torch.where(torch.isfinite(z), z - z_y, 0.0)
    return (qw * gap).sum(-1)


def gem_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    beta: float = 0.7,
    h: str = "logsigmoid",
) -> Tensor:
    """GEM loss ``-sum_i q_i w_i (log p_y - log p_i)``, q = softmax(z / beta), q and w detached.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    beta > 0; h in ("linear", "logsigmoid"). A label on a -inf logit gives +inf loss.
    """
    check_hyperparameter("gem_loss", "beta", beta, low=0.0)
    if h not in H_CHOICES:
        raise ValueError(f"gem_loss: h must be one of {H_CHOICES}, got {h!r}")
    per_token = functools.partial(_per_token, beta=beta, h=h)
    return token_loss(logits, labels, per_token, ignore_index=ignore_index, reduction=reduction)
