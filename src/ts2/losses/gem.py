"""GEM (Li et al., 2025, "Preserving diversity in supervised fine-tuning"), a TS² (ICLR 2026) baseline.

Per token, with p = softmax(z), q = softmax(z / beta) and weights w, both detached (stop-gradient):
``L(z; y) = -sum_i q_i w_i (log p_y - log p_i)``,
``w_i = sigmoid(0.01 (z_i - z_y))`` for h = "logsigmoid" (the official scripts) and ``w_i = 1`` for
h = "linear". Since ``log p_y - log p_i = z_y - z_i``, the gradient is ``g_i = q_i w_i`` for i != y and
``g_y = -sum_{i != y} q_i w_i``, i.e. ``c - (sum_i c_i) e_y`` with ``c = q * w``; with h = "linear" it is
``softmax(z / beta) - e_y``, the gradient of ``beta * CE(z / beta)``. The value is a surrogate whose
gradient is the one above (it can be negative); it is not the function whose derivative autograd would
give without the stop-gradients. Official scripts: beta 0.7, h logsigmoid.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ts2.losses._common import check_hyperparameter
from ts2.losses.base import TokenLoss, loss_function
from ts2.losses.kernels import Workspace, softmax_into

H_CHOICES = ("linear", "logsigmoid")


@dataclasses.dataclass(frozen=True)
class GEMLoss(TokenLoss):
    """GEM loss ``-sum_i q_i w_i (log p_y - log p_i)``, q = softmax(z / beta), q and w detached.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    beta > 0; h in ("linear", "logsigmoid"). A label on a -inf logit gives +inf loss.
    """

    id = "gem"
    beta: float = 0.7
    h: str = "logsigmoid"

    def __post_init__(self) -> None:
        check_hyperparameter(self.id, "beta", self.beta, low=0.0)
        if self.h not in H_CHOICES:
            raise ValueError(f"{self.id}: h must be one of {H_CHOICES}, got {self.h!r}")

    def per_token(self, z: Tensor, y: Tensor) -> Tensor:
        z_y = z.gather(1, y.unsqueeze(1))
        with torch.no_grad():
            q = torch.softmax(z / self.beta, dim=-1)
            w = torch.sigmoid(0.01 * (z - z_y)) if self.h == "logsigmoid" else torch.ones_like(z)
            qw = q * w
        # Masked (-inf) entries have q_i = 0; keep them out of the product, or 0 * inf = NaN.
        gap = torch.where(torch.isfinite(z), z - z_y, 0.0)
        return (qw * gap).sum(-1)

    def rows(self, z: Tensor, y: Tensor, weight: float, out: Tensor | None, workspace: Workspace) -> Tensor:
        y1 = y.unsqueeze(1)
        zy = z.gather(1, y1).squeeze(1)
        ws = workspace
        scratch = torch.mul(z, 1.0 / self.beta, out=ws.get("gem0", len(z), z))
        q = softmax_into(scratch, out if out is not None else ws.get("gem1", len(z), z))
        gap = torch.sub(z, zy.unsqueeze(1), out=scratch).nan_to_num_(neginf=0.0)  # -inf entries have q = 0
        tmp = ws.get("gem2", len(z), z)
        if self.h == "logsigmoid":
            q.mul_(torch.mul(gap, 0.01, out=tmp).sigmoid_())  # q <- c = q * w
        loss = torch.mul(q, gap, out=tmp).sum(1)
        if out is not None:
            mass = q.sum(1, keepdim=True)
            q.mul_(weight)
            q.scatter_add_(1, y1, -weight * mass)
        return loss


gem_loss = loss_function(GEMLoss, "gem_loss", "GEM")
reference = loss_function(GEMLoss, "gem_loss", "GEM", reference=True)
