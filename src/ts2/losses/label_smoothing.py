"""Label-smoothed cross-entropy, the CE+LS baseline of TS² (ICLR 2026), Table 1 (Szegedy et al., 2016).

Per token, with the target ``q = (1 - eps) e_y + eps u`` and u uniform over the vocabulary:
``L(z; y) = (1 - eps) (-log p_y) + eps * mean_i(-log p_i)``, p = softmax(z); gradient ``p - q``.
This is exactly ``torch.nn.functional.cross_entropy(..., label_smoothing=eps)``. Only where a row holds
-inf logits (a masked vocabulary) does it differ: u is then uniform over the finite logits, so the loss
stays finite (torch's would be +inf).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ts2.losses._common import check_hyperparameter, token_loss


def _per_token(z: Tensor, y: Tensor, *, epsilon: float) -> Tensor:
    logp = torch.log_softmax(z, dim=-1)
    nll = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
    finite = torch.isfinite(z)
    # where() rather than multiplying by the mask: 0 * (-inf) would be NaN.
    smooth = -torch.where(finite, logp, 0.0).sum(-1) / finite.sum(-1)
    return (1.0 - epsilon) * nll + epsilon * smooth


def label_smoothing_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    epsilon: float = 0.1,
) -> Tensor:
    """Label-smoothed cross-entropy ``(1 - eps) CE + eps * mean_i(-log p_i)`` over non-ignored tokens.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    epsilon must be in [0, 1).
    """
    check_hyperparameter("label_smoothing_loss", "epsilon", epsilon, low=0.0, high=1.0, low_inclusive=True)
    per_token = functools.partial(_per_token, epsilon=epsilon)
    return token_loss(logits, labels, per_token, ignore_index=ignore_index, reduction=reduction)
