"""Fused linear + loss for TS² ("TS²: Training with Sparsemax+, Testing with Softmax", ICLR 2026).

From hidden states X [N, d] and the LM-head weight W [V, d] straight to ``loss(X W^T, labels)`` and its
gradients, chunk by chunk over the N rows, never holding all N x V logits. For a chunk c:
``Z_c = X_c W^T``, ``G_c = dL/dZ_c`` (closed form, the loss's row kernel `TokenLoss.rows`),
``dX_c = G_c W``, ``dW += G_c^T X_c``. Only dX [N, d] and dW [V, d] are kept for the backward pass, which
multiplies them by the incoming gradient. Any `ts2.losses.TokenLoss` (every loss of `ts2.losses.LOSSES`, or
whatever the config's ``_target_`` builds) is supported, with the same value and gradients as the unfused
loss on ``X W^T``.

Peak memory beyond the inputs: dX [N, d] and dW [V, d] (fp32 while accumulating), plus buffers reused by
every chunk: the logits and G ([C, V] each, fp32; one more [C, V] in the input dtype for bf16/fp16, two
more fp32 for GEM), C = `chunk_size` (default: about 256 MiB of fp32 logits on CPU, 1 GiB on GPU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ts2.losses._common import REDUCTIONS, compute_dtype
from ts2.losses.base import TokenLoss
from ts2.losses.kernels import Workspace, block_rows, row_blocks, row_weight


def _check(hidden: Tensor, weight: Tensor, labels: Tensor, ignore_index: int, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"need hidden [N, d] and weight [V, d], got {tuple(hidden.shape)}, {tuple(weight.shape)}"
        )
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight must share a float dtype, got {hidden.dtype} and {weight.dtype}")
    if labels.dim() != 1 or labels.shape[0] != hidden.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must be integer [N], got {labels.dtype} {tuple(labels.shape)}")
    kept = labels[labels != ignore_index]
    if bool(((kept < 0) | (kept >= weight.shape[0])).any()):
        raise ValueError(f"labels out of range [0, {weight.shape[0]}) (and not ignore_index={ignore_index})")


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        labels: Tensor,
        loss: TokenLoss,
        ignore_index: int,
        reduction: str,
        chunk_size: int,
    ) -> Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype, cdt = hidden.dtype, compute_dtype(hidden.dtype)
        vocab = weight.shape[0]
        blocks = row_blocks(labels, ignore_index, chunk_size)
        n_kept = sum(b.stop - b.start if isinstance(b, slice) else b.numel() for b in blocks)
        w_row = row_weight(n_kept, reduction)
        grad_x = torch.zeros_like(hidden) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=cdt, device=weight.device) if need_w else None
        rows_max = max((b.stop - b.start if isinstance(b, slice) else b.numel() for b in blocks), default=0)
        logits_buf = hidden.new_empty(rows_max, vocab)
        upcast_buf = None if dtype == cdt else torch.empty(rows_max, vocab, dtype=cdt, device=hidden.device)
        grad_buf = torch.empty(rows_max, vocab, dtype=cdt, device=hidden.device) if need_x or need_w else None
        total = hidden.new_zeros((), dtype=cdt)
        ws = Workspace()
        for rows in blocks:
            x = hidden[rows] if isinstance(rows, slice) else hidden.index_select(0, rows)
            y = labels[rows] if isinstance(rows, slice) else labels.index_select(0, rows)
            n = x.shape[0]
            z = torch.mm(x, weight.t(), out=logits_buf[:n])
            if upcast_buf is not None:
                z = upcast_buf[:n].copy_(z)
            g = grad_buf[:n] if grad_buf is not None else None
            total = total + loss.rows(z, y, w_row, g, ws).sum() * w_row
            if g is None:
                continue
            g_low = g if dtype == cdt else g.to(dtype)
            if grad_x is not None:
                gx = g_low @ weight
                if isinstance(rows, slice):
                    grad_x[rows] = gx
                else:
                    grad_x.index_copy_(0, rows, gx)
            if grad_w is not None:
                if dtype == cdt:
                    grad_w.addmm_(g.t(), x)
                else:
                    grad_w.add_(g_low.t() @ x)
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype) if grad_w is not None else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        grad_x, grad_w = ctx.saved_tensors
        if not (grad_loss.numel() == 1 and bool(grad_loss == 1)):
            grad_x = grad_x * grad_loss.to(grad_x.dtype) if grad_x is not None else None
            grad_w = grad_w * grad_loss.to(grad_w.dtype) if grad_w is not None else None
        return grad_x, grad_w, None, None, None, None, None


def default_chunk_size(vocab: int, device: torch.device) -> int:
    """Rows per chunk: about 256 MiB (CPU) or 1 GiB (GPU) of fp32 logits, see `kernels.block_rows`."""
    return block_rows(vocab, device)


def fused_linear_loss(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    loss: TokenLoss,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """``loss(hidden @ weight.T, labels)`` without materialising the [N, V] logits.

    hidden [N, d] and weight [V, d] (same float dtype; the loss maths in fp32), labels [N] -> scalar fp32
    (fp64 for fp64 input). `loss` is an instantiated `ts2.losses.TokenLoss`, e.g. ``TS2Loss(alpha=0.25)``
    (its row kernel `rows` is applied chunk by chunk). Gradients for hidden and weight are computed in the
    forward pass, `chunk_size` rows at a time.
    """
    if not isinstance(loss, TokenLoss):
        raise TypeError(
            f"fused_linear_loss needs a ts2.losses.TokenLoss instance as `loss` (e.g. TS2Loss(alpha=0.25) or "
            f"ts2.losses.LOSSES['ts2']()), got {type(loss).__name__} {loss!r}"
        )
    _check(hidden, weight, labels, ignore_index, reduction)
    step = chunk_size if chunk_size is not None else default_chunk_size(weight.shape[0], hidden.device)
    if step < 1:
        raise ValueError(f"chunk_size must be >= 1, got {step}")
    return _FusedLinearLoss.apply(hidden, weight, labels, loss, ignore_index, reduction, step)
