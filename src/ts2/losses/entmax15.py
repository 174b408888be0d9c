"""1.5-entmax and its Fenchel-Young loss (Peters, Niculae & Martins, 2019), a TS² (ICLR 2026) baseline.

``entmax15(z)_i = max(z_i / 2 - tau, 0)^2`` with tau the unique value making the entries sum to 1.
With x = z / 2 sorted, x_(1) >= ... >= x_(K), and for each k the mean m_k and mean of squares s_k of the
top k: ``tau_k = m_k - sqrt(max((1 - k (s_k - m_k^2)) / k, 0))``; |S| = #{k : tau_k <= x_(k)}, tau = tau_|S|.
Loss: ``L(z; y) = (1 - sum_i p_i^{3/2}) / 0.75 + <p - e_y, z>``, p = entmax15(z); gradient ``p - e_y``.

Reference (`Entmax15Loss.per_token`, `entmax15`): exact and sort-based, in fp32 (fp64 stays fp64), in the
frame shifted by the row max (the loss is shift-invariant). -inf logits (a masked vocabulary) never enter
the support. A row needs one finite logit.
Fast kernel (`Entmax15Loss.rows`): the threshold from a top-k partial selection with an exactness test
(`ts2.losses.kernels.select`; the support lies in {i : z_i > max z - 2}), gradient ``p - e_y`` in closed form.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ts2.losses._common import compute_dtype
from ts2.losses.base import TokenLoss, loss_function
from ts2.losses.kernels import Workspace, one_thread, select
from ts2.losses.sparsemax import sparse_grad_into


def _shifted_probs(z: Tensor) -> tuple[Tensor, Tensor]:
    """Shifted logits zs = z - max and entmax15(z), both [..., K], along the last dim."""
    zs = z - z.amax(dim=-1, keepdim=True)
    x = zs / 2
    srt = x.sort(dim=-1, descending=True).values
    finite = torch.isfinite(srt)
    srt0 = torch.where(finite, srt, 0.0)  # keep -inf out of the cumulative sums (inf - inf = NaN)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    mean = srt0.cumsum(-1) / k
    mean_sq = (srt0 * srt0).cumsum(-1) / k
    delta = (1.0 - k * (mean_sq - mean * mean)) / k
    tau = mean - torch.sqrt(delta.clamp_min(0.0))
    size = ((tau <= srt) & finite).sum(dim=-1, keepdim=True).clamp_min(1)
    tau_star = tau.gather(-1, size - 1)
    return zs, torch.clamp(x - tau_star, min=0.0) ** 2


class _Entmax15(torch.autograd.Function):
    """entmax15 along the last dim; Jacobian ``diag(r) - r r^T / sum(r)`` with r = sqrt(p)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        _, p = _shifted_probs(z)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        r = p.sqrt()
        return r * (grad - (r * grad).sum(-1, keepdim=True) / r.sum(-1, keepdim=True))


def entmax15(z: Tensor, dim: int = -1) -> Tensor:
    """1.5-entmax ``max(z / 2 - tau, 0)^2`` along `dim` (exact, sort-based).

    z [..., V, ...] any float dtype -> same shape and dtype (computed in fp32, fp64 for fp64).
    Differentiable (closed-form Jacobian, no autograd through the sort).
    """
    if z.dim() == 0 or z.shape[dim] == 0:
        raise ValueError(f"entmax15 needs a non-empty dimension {dim}, got shape {tuple(z.shape)}")
    zc = z.to(compute_dtype(z.dtype)).movedim(dim, -1)
    return _Entmax15.apply(zc).movedim(-1, dim).to(z.dtype)


class _Entmax15Loss(torch.autograd.Function):
    """Per-token 1.5-entmax loss; backward is ``grad * (p - e_y)``."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor) -> Tensor:
        zs, p = _shifted_probs(z)
        omega = (1.0 - (p * p.sqrt()).sum(-1)) / 0.75
        # p_i = 0 wherever zs_i = -inf; where() avoids 0 * (-inf) = NaN in <p, z>.
        p_dot_z = (p * torch.where(p > 0, zs, 0.0)).sum(-1)
        loss = omega + p_dot_z - zs.gather(1, y.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(p, y)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor, None]:
        p, y = ctx.saved_tensors
        grad = grad_loss.unsqueeze(1) * p
        grad.scatter_add_(1, y.unsqueeze(1), -grad_loss.unsqueeze(1))
        return grad, None


@dataclasses.dataclass(frozen=True)
class Entmax15Loss(TokenLoss):
    """1.5-entmax loss ``(1 - sum p^{3/2}) / 0.75 + <p - e_y, z>``; no hyperparameters.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    Gradient ``entmax15(z) - e_y``. A label on a -inf logit gives +inf loss.
    """

    id = "entmax15"

    def per_token(self, z: Tensor, y: Tensor) -> Tensor:
        return _Entmax15Loss.apply(z, y)

    def rows(self, z: Tensor, y: Tensor, weight: float, out: Tensor | None, workspace: Workspace) -> Tensor:
        y1 = y.unsqueeze(1)
        zy = z.gather(1, y1).squeeze(1)
        sel = select(z, entmax15=True)
        p, zmax = sel.probs, sel.zmax
        with one_thread(z.device):
            # Fenchel-Young: (1 - sum p^1.5) / 0.75 + <p, z - zmax> - (z_y - zmax); z - zmax = 2u on S
            u = ((sel.values - zmax.unsqueeze(1)) * 0.5).clamp_min(-2.0)  # p = 0 where clamped: no 0 * inf
            loss = (1.0 - (p * p.sqrt()).sum(1)) / 0.75 + 2.0 * (p * u).sum(1) - (zy - zmax)
        if out is not None:
            sparse_grad_into(out, sel, y1, weight)
        return loss


entmax15_loss = loss_function(Entmax15Loss, "entmax15_loss", "1.5-entmax loss")
reference = loss_function(Entmax15Loss, "entmax15_loss", "1.5-entmax loss", reference=True)
