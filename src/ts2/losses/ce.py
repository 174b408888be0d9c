"""Token cross-entropy, the CE baseline of TS² (ICLR 2026), Table 1.

Per token: ``L(z; y) = logsumexp(z) - z_y = -log softmax(z)_y``; gradient ``softmax(z) - e_y``.
Reference: ``torch.nn.functional.cross_entropy``. Fast kernel: one fused softmax pass per row block that
gives both the gradient and, from its row max ``exp(max z - logsumexp z)``, the logsumexp.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from ts2.losses.base import TokenLoss, loss_function
from ts2.losses.kernels import Workspace, softmax_into


def softmax_ce_rows(z: Tensor, y: Tensor, weight: float, out: Tensor | None, epsilon: float) -> Tensor:
    """Row kernel of label-smoothed CE (plain CE for ``epsilon = 0``), see `TokenLoss.rows`.

    Value ``(1 - eps)(lse - z_y) + eps (lse - mean_i z_i)`` over the finite logits i; gradient
    ``softmax(z) - (1 - eps) e_y - eps u``, u uniform over the finite logits.
    """
    y1 = y.unsqueeze(1)
    zy = z.gather(1, y1).squeeze(1)
    if out is None:
        lse = torch.logsumexp(z, 1)
    else:
        zmax = z.amax(1)
        softmax_into(z, out)  # its row max is exp(zmax - lse)
        lse = zmax - out.amax(1).log()
    loss = lse - zy
    if epsilon:
        zsum, count = z.sum(1), torch.full_like(lse, z.shape[1])
        masked = ~torch.isfinite(zsum)
        if bool(masked.any()):  # smoothing is uniform over the finite logits, as in the reference
            rows = masked.nonzero().squeeze(1)
            finite = torch.isfinite(z.index_select(0, rows))
            zsum[rows] = torch.where(finite, z.index_select(0, rows), 0.0).sum(1)
            count[rows] = finite.sum(1).to(z.dtype)
        loss = (1.0 - epsilon) * loss + epsilon * (lse - zsum / count)
    if out is not None:
        out.mul_(weight)
        if epsilon:
            smooth = (weight * epsilon / count).unsqueeze(1)
            out.sub_(torch.where(torch.isfinite(z), smooth, 0.0) if bool(masked.any()) else smooth)
        out.scatter_add_(1, y1, torch.full_like(zy, -(1.0 - epsilon) * weight).unsqueeze(1))
    return loss


@dataclasses.dataclass(frozen=True)
class CrossEntropyLoss(TokenLoss):
    """Cross-entropy ``logsumexp(z) - z_y``; no hyperparameters.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    -inf logits (a masked vocabulary) are fine; a label on a -inf logit gives +inf loss.
    """

    id = "ce"

    def per_token(self, z: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(z, y, reduction="none")

    def rows(self, z: Tensor, y: Tensor, weight: float, out: Tensor | None, workspace: Workspace) -> Tensor:
        return softmax_ce_rows(z, y, weight, out, 0.0)


cross_entropy_loss = loss_function(CrossEntropyLoss, "cross_entropy_loss", "Cross-entropy")
reference = loss_function(CrossEntropyLoss, "cross_entropy_loss", "Cross-entropy", reference=True)


ce_loss = cross_entropy_loss
