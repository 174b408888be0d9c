"""Label-smoothed cross-entropy, the loss of the CE+LS baseline of TS² (ICLR 2026), Table 1
(Szegedy et al., 2016). Loss id ``ce_ls``, as the method.

Per token, with the target ``q = (1 - eps) e_y + eps u`` and u uniform over the vocabulary:
``L(z; y) = (1 - eps) (-log p_y) + eps * mean_i(-log p_i)``, p = softmax(z); gradient ``p - q``.
This is exactly ``torch.nn.functional.cross_entropy(..., label_smoothing=eps)``. Only where a row holds
-inf logits (a masked vocabulary) does it differ: u is then uniform over the finite logits, so the loss
stays finite (torch's would be +inf). The paper does not publish eps; 0.1 is the common choice.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ts2.losses._common import check_hyperparameter
from ts2.losses.base import TokenLoss, loss_function
from ts2.losses.ce import softmax_ce_rows
from ts2.losses.kernels import Workspace


@dataclasses.dataclass(frozen=True)
class LabelSmoothingLoss(TokenLoss):
    """Label-smoothed cross-entropy ``(1 - eps) CE + eps * mean_i(-log p_i)``; epsilon in [0, 1).

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    """

    id = "ce_ls"
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        check_hyperparameter(self.id, "epsilon", self.epsilon, low=0.0, high=1.0, low_inclusive=True)

    def per_token(self, z: Tensor, y: Tensor) -> Tensor:
        logp = torch.log_softmax(z, dim=-1)
        nll = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
        finite = torch.isfinite(z)
        # where() rather than multiplying by the mask: 0 * (-inf) would be NaN.
        smooth = -torch.where(finite, logp, 0.0).sum(-1) / finite.sum(-1)
        return (1.0 - self.epsilon) * nll + self.epsilon * smooth

    def rows(self, z: Tensor, y: Tensor, weight: float, out: Tensor | None, workspace: Workspace) -> Tensor:
        return softmax_ce_rows(z, y, weight, out, self.epsilon)


label_smoothing_loss = loss_function(
    LabelSmoothingLoss, "label_smoothing_loss", "Label-smoothed cross-entropy"
)
reference = loss_function(
    LabelSmoothingLoss, "label_smoothing_loss", "Label-smoothed cross-entropy", reference=True
)
