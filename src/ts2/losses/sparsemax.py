"""Sparsemax and the sparsemax loss (Martins & Astudillo, 2016), the sparse half of TS² (ICLR 2026).

With the logits of a row sorted, z_(1) >= ... >= z_(K):
``k* = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}``, ``tau = (sum_{j<=k*} z_(j) - 1) / k*``,
``sparsemax(z)_i = max(z_i - tau, 0)``, support S = {i : z_i > tau}.
Sparsemax loss (Fenchel-Young form): ``L(z; y) = -z_y + 1/2 sum_{j in S}(z_j^2 - tau^2) + 1/2``,
gradient ``sparsemax(z) - e_y``.

Reference (`SparsemaxLoss.per_token`, `sparsemax`, `sparsemax_threshold`): exact and sort-based. The maths
runs in fp32 (fp64 stays fp64) in the frame shifted by the row max, where tau lies in [-1, -1/K] and the
loss is computed as ``tau - z_y + (1 + ||p||^2) / 2`` (the same quantity, since
sum_S (z_j^2 - tau^2) / 2 = ||p||^2 / 2 + tau), so logits of size 1e4 lose no precision.
-inf logits (a masked vocabulary) never enter the support. A row needs at least one finite logit.
Fast kernel (`SparsemaxLoss.rows`): the same threshold from a top-k partial selection with an exactness
test (`ts2.losses.kernels.select`), and the gradient ``p - e_y`` written in closed form.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ts2.losses._common import compute_dtype
from ts2.losses.base import TokenLoss, loss_function
from ts2.losses.kernels import Selection, Workspace, one_thread, select


def _shifted_threshold(zs: Tensor) -> tuple[Tensor, Tensor]:
    """tau and |S| of rows already shifted so that their max is 0. zs [..., K] -> ([..., 1], [..., 1])."""
    srt = zs.sort(dim=-1, descending=True).values
    csum = srt.cumsum(dim=-1)
    k = torch.arange(1, zs.shape[-1] + 1, device=zs.device, dtype=zs.dtype)
    # -inf entries: 1 + k * (-inf) = -inf > -inf is False, so they never count.
    size = (1.0 + k * srt > csum).sum(dim=-1, keepdim=True).clamp_min(1)
    tau = (csum.gather(-1, size - 1) - 1.0) / size.to(zs.dtype)
    return tau, size


def _shifted_probs(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shifted logits zs = z - max, shifted threshold tau_s [..., 1] and sparsemax(z), all along dim -1."""
    zs = z - z.amax(dim=-1, keepdim=True)
    tau, _ = _shifted_threshold(zs)
    return zs, tau, torch.clamp(zs - tau, min=0.0)


def sparsemax_threshold(z: Tensor) -> tuple[Tensor, Tensor]:
    """Sparsemax threshold tau and support size |S| along the last dim (exact, sort-based, fp32 inside).

    z [..., V] -> (tau [...] in the compute dtype (fp32, fp64 for fp64 input), support size [...] int64),
    so that ``sparsemax(z) = max(z - tau[..., None], 0)``. No gradient.
    """
    if z.dim() == 0 or z.shape[-1] == 0:
        raise ValueError(f"sparsemax_threshold needs a non-empty last dimension, got shape {tuple(z.shape)}")
    z = z.detach().to(compute_dtype(z.dtype))
    zmax = z.amax(dim=-1, keepdim=True)
    tau, size = _shifted_threshold(z - zmax)
    return (tau + zmax).squeeze(-1), size.squeeze(-1)


class _Sparsemax(torch.autograd.Function):
    """sparsemax along the last dim; Jacobian ``diag(s) - s s^T / |S|`` with s the support indicator."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        _, _, p = _shifted_probs(z)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        s = (p > 0).to(grad.dtype)
        return s * (grad - (s * grad).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    """sparsemax(z) = argmin_{p in simplex} ||p - z||^2 = max(z - tau, 0) along `dim`.

    z [..., V, ...] any float dtype -> same shape and dtype (computed in fp32, fp64 for fp64).
    Differentiable (closed-form Jacobian, no autograd through the sort).
    """
    if z.dim() == 0 or z.shape[dim] == 0:
        raise ValueError(f"sparsemax needs a non-empty dimension {dim}, got shape {tuple(z.shape)}")
    zc = z.to(compute_dtype(z.dtype)).movedim(dim, -1)
    return _Sparsemax.apply(zc).movedim(-1, dim).to(z.dtype)


class _SparsemaxLoss(torch.autograd.Function):
    """Per-token sparsemax loss and probabilities; backward is ``grad * (p - e_y)``, p gets no gradient."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        zs, tau, p = _shifted_probs(z)
        zs_y = zs.gather(1, y.unsqueeze(1))
        loss = (tau - zs_y).squeeze(1) + 0.5 * (1.0 + (p * p).sum(-1))
        ctx.save_for_backward(p, y)
        ctx.mark_non_differentiable(p)
        return loss, p

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_p: Tensor) -> tuple[Tensor, None]:
        p, y = ctx.saved_tensors
        grad = grad_loss.unsqueeze(1) * p
        grad.scatter_add_(1, y.unsqueeze(1), -grad_loss.unsqueeze(1))
        return grad, None


def sparsemax_loss_and_probs(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token sparsemax loss [M] and sparsemax(z) [M, V] (no gradient) for z [M, V], y [M].

    Building block of the TS² loss, which needs the support of the same logits. z must already be in the
    compute dtype; no input checks.
    """
    return _SparsemaxLoss.apply(z, y)


def sparsemax_rows(z: Tensor, zy: Tensor, temperature: float) -> tuple[Selection, Tensor, Tensor]:
    """Fast sparsemax loss of T z for a block of rows: z [M, V], zy [M] the label logits -> (the selection,
    losses [M], u_y = T (z_y - max z) [M]). In the frame shifted by T max z the loss is
    ``tau - u_y + (1 + ||p||^2) / 2``."""
    sel = select(z, temperature=temperature)
    p, zmax = sel.probs, sel.zmax
    with one_thread(z.device):
        u_y = temperature * (zy - zmax)
        loss = sel.tau - u_y + 0.5 * (1.0 + (p * p).sum(1))
    return sel, loss, u_y


def sparse_grad_into(out: Tensor, sel: Selection, y1: Tensor, weight: float) -> None:
    """``out = weight * (p - e_y)`` for the sparse probabilities p of `sel` and labels y1 [M, 1]."""
    out.zero_()
    with one_thread(out.device):
        out.scatter_add_(1, sel.index, weight * sel.probs)
        out.scatter_add_(1, y1, torch.full(y1.shape, -weight, dtype=out.dtype, device=out.device))


@dataclasses.dataclass(frozen=True)
class SparsemaxLoss(TokenLoss):
    """Sparsemax loss ``-z_y + 1/2 sum_{j in S}(z_j^2 - tau^2) + 1/2``; no hyperparameters.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    Gradient ``sparsemax(z) - e_y``. A label on a -inf logit gives +inf loss.
    """

    id = "sparsemax"

    def per_token(self, z: Tensor, y: Tensor) -> Tensor:
        return sparsemax_loss_and_probs(z, y)[0]

    def rows(self, z: Tensor, y: Tensor, weight: float, out: Tensor | None, workspace: Workspace) -> Tensor:
        y1 = y.unsqueeze(1)
        sel, loss, _ = sparsemax_rows(z, z.gather(1, y1).squeeze(1), 1.0)
        if out is not None:
            sparse_grad_into(out, sel, y1, weight)
        return loss


sparsemax_loss = loss_function(SparsemaxLoss, "sparsemax_loss", "Sparsemax loss")
reference = loss_function(SparsemaxLoss, "sparsemax_loss", "Sparsemax loss", reference=True)
