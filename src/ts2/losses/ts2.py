"""Sparsemax+, the TS² training loss ("TS²: Training with Sparsemax+, Testing with Softmax", ICLR 2026).

Per token, with S the sparsemax support of T z (temperature T, default 1) and the head H = S ∪ {y}:
``L(z; y) = L_spm(T z; y) + alpha * a * penalty``,
``penalty = -log(1 - sum_{i not in H} softmax(z)_i) = logsumexp(z) - logsumexp(z_H)``.
Gradient: ``T (sparsemax(T z) - e_y) + alpha a (softmax(z) - softmax_H(z))``, softmax_H renormalised over H
and zero elsewhere; the support mask carries no gradient. ``a = 1``, or with ``adaptive=True`` (a variant
in the official code, conf/loss/ts2_adaptive.yaml) ``a = 1 - sparsemax(T z)_y``, detached.
Official-code quirk (kept as the default, ``clamp=0.99``): the tail mass is clamped at `clamp` before the
log, i.e. the penalty is capped at ``-log(1 - clamp)`` (about 4.605) with zero gradient above the cap.
``clamp=None`` gives the uncapped loss. alpha 0.25: the official Llama-3.1-8B script (PAPER.md §1).

Reference (`TS2Loss.per_token`): the sort-based sparsemax loss plus the penalty, autograd gradient.
Fast kernel (`TS2Loss.rows`): the sparsemax part from a top-k selection (`ts2.losses.sparsemax`), the
full-row logsumexp from one fused softmax pass that is also the dense part of the gradient, and the head
logsumexp over the small support: no [N, V] tensor beyond the gradient.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ts2.losses._common import check_hyperparameter
from ts2.losses.base import TokenLoss, loss_function
from ts2.losses.kernels import Workspace, one_thread, softmax_into
from ts2.losses.sparsemax import sparsemax_loss_and_probs, sparsemax_rows


@dataclasses.dataclass(frozen=True)
class TS2Loss(TokenLoss):
    """Sparsemax+ ``L_spm(T z; y) + alpha a (logsumexp(z) - logsumexp(z_H))``, H = S ∪ {y}.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    alpha >= 0; clamp in (0, 1) caps the tail mass (official quirk) or None (uncapped); temperature > 0
    scales the logits inside sparsemax only; adaptive scales each token's penalty by
    ``1 - sparsemax(T z)_y`` (detached). A label on a -inf logit gives +inf loss.
    """

    id = "ts2"
    alpha: float = 0.25
    clamp: float | None = 0.99
    temperature: float = 1.0
    adaptive: bool = False

    def __post_init__(self) -> None:
        check_hyperparameter(self.id, "alpha", self.alpha, low=0.0, low_inclusive=True)
        if self.clamp is not None:
            check_hyperparameter(self.id, "clamp", self.clamp, low=0.0, high=1.0)
        check_hyperparameter(self.id, "temperature", self.temperature, low=0.0)
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"{self.id}: adaptive must be a bool, got {type(self.adaptive).__name__}")

    def per_token(self, z: Tensor, y: Tensor) -> Tensor:
        t = self.temperature
        spm, p = sparsemax_loss_and_probs(z * t if t != 1.0 else z, y)
        head = (p > 0).scatter(1, y.unsqueeze(1), True)
        # A difference of logsumexps, not -log(1 - tail), stays exact as the tail mass nears 1; taking it in
        # the frame shifted by the (detached) row max keeps it exact for logits of size 1e4 in fp32.
        zs = z - z.detach().amax(dim=-1, keepdim=True)
        penalty = torch.logsumexp(zs, dim=-1) - torch.logsumexp(zs.masked_fill(~head, -math.inf), dim=-1)
        if self.clamp is not None:
            penalty = penalty.clamp(max=-math.log1p(-self.clamp))
        if self.adaptive:
            penalty = penalty * (1.0 - p.gather(1, y.unsqueeze(1)).squeeze(1))
        return spm + self.alpha * penalty

    def rows(self, z: Tensor, y: Tensor, weight: float, out: Tensor | None, workspace: Workspace) -> Tensor:
        temp = self.temperature
        y1 = y.unsqueeze(1)
        zy = z.gather(1, y1).squeeze(1)
        sel, loss, u_y = sparsemax_rows(z, zy, temp)
        p, zmax = sel.probs, sel.zmax
        # penalty = logsumexp(z) - logsumexp(z_H), H = S ∪ {y}, both in the frame shifted by max z so that
        # logits of size 1e4 keep their fp32 precision.
        if out is None:
            lse = torch.logsumexp(z - zmax.unsqueeze(1), 1)
        else:
            softmax_into(z, out)
            lse = -out.gather(1, sel.index[:, :1]).squeeze(1).log()  # softmax at the argmax is exp(-lse)
        with one_thread(z.device):
            in_support = torch.arange(p.shape[1], device=z.device).unsqueeze(0) < sel.size.unsqueeze(1)
            head = (sel.values - zmax.unsqueeze(1)).masked_fill(~in_support, -math.inf)
            y_in_support = ((sel.index == y1) & in_support).any(1)
            y_extra = (zy - zmax).masked_fill(y_in_support, -math.inf)
            lse_head = torch.logsumexp(torch.cat([head, y_extra.unsqueeze(1)], 1), 1)
            penalty = lse - lse_head
            scale = torch.ones_like(penalty)
            if self.clamp is not None:
                cap = -math.log1p(-self.clamp)
                scale = (penalty <= cap).to(z.dtype)  # torch.clamp passes the gradient at the cap itself
                penalty = penalty.clamp(max=cap)
            if self.adaptive:
                a = 1.0 - (u_y - sel.tau).clamp_min(0.0)  # 1 - sparsemax(T z)_y, detached
                penalty, scale = penalty * a, scale * a
            loss = loss + self.alpha * penalty
            dense = (weight * self.alpha * scale).unsqueeze(1)  # coefficient of softmax(z) - softmax_H(z)
        if out is not None:
            out.mul_(dense)
            with one_thread(z.device):
                out.scatter_add_(
                    1, sel.index, temp * weight * p - dense * (head - lse_head.unsqueeze(1)).exp()
                )
                out.scatter_add_(1, y1, -temp * weight - dense * (y_extra - lse_head).exp().unsqueeze(1))
        return loss


ts2_loss = loss_function(TS2Loss, "ts2_loss", "Sparsemax+ (TS²)")
reference = loss_function(TS2Loss, "ts2_loss", "Sparsemax+ (TS²)", reference=True)
