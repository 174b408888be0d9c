"""Shared machinery of the fast exact losses of TS² ("TS²: Training with Sparsemax+, Testing with Softmax",
ICLR 2026): exact sparse thresholds from a partial selection, row blocking, and the autograd Function that
drives a loss's row kernel (`TokenLoss.rows`, one per loss file in `ts2.losses`).

- Sparsemax threshold from a partial selection. With u = T (z - max z), ``tau`` lies in [-1, -1/V], so the
  support lies in {i : u_i > -1}. For 1.5-entmax (entmax package scaling, u = (z - max z) / 2,
  ``p_i = [u_i - tau]_+^2``, ``sum_i p_i = 1``): ``(0 - tau)^2 <= 1`` gives ``tau >= -1``, so the support
  lies in {i : z_i > max z - 2}.
  Exactness test: solve on the top k+1 values of a row. If fewer than k+1 of them are in the support, the
  (k+1)-th value is <= tau, and by monotonicity so is every smaller value, so tau is the full-row tau.
  Otherwise the row is redone with ``k = #{candidates} + 1`` (or more), which always passes; a row of V ties
  ends at k = V, a full sort of that row only.
- Support test without a division: j is in the support iff the row's objective at t = u_(j) is below 1,
  ``sum_{i<=j} (u_(i) - u_(j)) < 1`` (sparsemax) and ``sum_{i<=j} (u_(i) - u_(j))^2 < 1`` (1.5-entmax).
  Both are nondecreasing in j, so the support size is a count.
- A loss's row kernel returns the per-row losses of a block and writes ``weight * dL/dz`` (closed form) into
  a buffer: the gradient is formed in the forward pass, row block by row block, and is the only [N, V]
  tensor kept (`RowKernelLoss`). `ts2.losses.fused` drives the same kernels chunk by chunk from hidden
  states.

Shapes: logits [N, V] (any float dtype; maths in fp32, fp64 for fp64 input), labels [N] -> scalar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ts2.losses._common import compute_dtype

if TYPE_CHECKING:
    from ts2.losses.base import TokenLoss

TOPK = 64
"""Values selected per row before the exactness test (a row whose support needs more is redone)."""

BLOCK_BYTES_CPU = 1 << 28
"""Rows are processed in blocks of about this many bytes of fp32 logits (bounds the scratch memory)."""

BLOCK_BYTES_GPU = 1 << 30


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run the small [M, k] ops on one CPU thread: on a shared 2-core machine their thread barriers, not
    their arithmetic, would dominate. The [M, V] passes stay multi-threaded."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------
# Exact thresholds from a partial selection


def _solve_sparsemax(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sparsemax of rows u [M, K] sorted descending with u[:, 0] = 0 -> (tau [M], |S| [M], p [M, K])."""
    j = torch.arange(1, u.shape[1] + 1, dtype=u.dtype, device=u.device)
    csum = u.cumsum(1)
    size = (csum - j * u < 1.0).sum(1)
    tau = (csum.gather(1, (size - 1).unsqueeze(1)).squeeze(1) - 1.0) / size.to(u.dtype)
    return tau, size, (u - tau.unsqueeze(1)).clamp_min(0.0)


def _solve_entmax15(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """1.5-entmax of rows u [M, K] (already halved) sorted descending, u[:, 0] = 0 -> (tau, |S|, p)."""
    j = torch.arange(1, u.shape[1] + 1, dtype=u.dtype, device=u.device)
    s1, s2 = u.cumsum(1), (u * u).cumsum(1)
    size = (s2 - 2.0 * u * s1 + j * u * u < 1.0).sum(1)
    at = (size - 1).unsqueeze(1)
    n = size.to(u.dtype)
    mean, mean_sq = s1.gather(1, at).squeeze(1) / n, s2.gather(1, at).squeeze(1) / n
    # sum_{i in S} (u_i - tau)^2 = 1, smaller root
    tau = mean - ((1.0 - n * (mean_sq - mean * mean)) / n).clamp_min(0.0).sqrt()
    return tau, size, (u - tau.unsqueeze(1)).clamp_min(0.0).square()


class Selection(NamedTuple):
    """Top values of each row and the exact threshold they give (see `select`)."""

    zmax: Tensor  # [M] row max
    values: Tensor  # [M, K] the K largest logits, descending
    index: Tensor  # [M, K] their positions
    tau: Tensor  # [M] threshold in the frame u (u = T (z - zmax), or (z - zmax) / 2 for entmax15)
    size: Tensor  # [M] support size
    probs: Tensor  # [M, K] probabilities of the selected entries (0 outside the support)


def _select_once(z: Tensor, k: int, entmax15: bool, temperature: float) -> tuple[Selection, Tensor]:
    vocab = z.shape[1]
    kk = min(k + 1, vocab)
    values, index = z.topk(kk, dim=1)
    with one_thread(z.device):
        zmax = values[:, 0]
        # Entries with u <= -1 never enter the support; clamping them to -2 leaves tau unchanged and
        # removes -inf and huge gaps from the cumulative sums.
        scale = 0.5 if entmax15 else temperature
        u = ((values - zmax.unsqueeze(1)) * scale).clamp_min(-2.0)
        tau, size, probs = (_solve_entmax15 if entmax15 else _solve_sparsemax)(u)
        solved = size < kk if kk < vocab else torch.ones_like(size, dtype=torch.bool)
    return Selection(zmax, values, index, tau, size, probs), solved


def select(z: Tensor, *, k: int | None = None, entmax15: bool = False, temperature: float = 1.0) -> Selection:
    """Exact sparsemax (or 1.5-entmax) threshold of T z from a top-k selection, with fallback.

    z [M, V] in the compute dtype -> `Selection`; every row's support lies within its selected entries.
    Rows whose support may extend past the selection are redone with k = #{candidates} (the entries with
    z_i > max z - 1/T, or > max z - 2 for entmax15), doubled at least, until the test passes.
    """
    k = TOPK if k is None else k
    sel, solved = _select_once(z, k, entmax15, temperature)
    if bool(solved.all()):
        return sel
    rows = (~solved).nonzero().squeeze(1)
    zr = z.index_select(0, rows)
    bound = 2.0 if entmax15 else 1.0 / temperature
    candidates = int((zr > sel.zmax.index_select(0, rows).unsqueeze(1) - bound).sum(1).max())
    sub = select(zr, k=max(candidates, 2 * k), entmax15=entmax15, temperature=temperature)
    width = sub.values.shape[1]
    if width > sel.values.shape[1]:  # widen every row's selection with entries outside the support
        pad = width - sel.values.shape[1]
        sel = sel._replace(
            values=torch.cat([sel.values, sel.values[:, -1:].expand(-1, pad)], 1),
            index=torch.cat([sel.index, sel.index[:, -1:].expand(-1, pad)], 1),
            probs=torch.cat([sel.probs, sel.probs.new_zeros(sel.probs.shape[0], pad)], 1),
        )
    sel.values[rows], sel.index[rows], sel.probs[rows] = sub.values, sub.index, sub.probs
    sel.tau[rows], sel.size[rows] = sub.tau, sub.size
    return sel


def _threshold(z: Tensor, entmax15: bool, temperature: float, k: int | None) -> tuple[Tensor, Tensor]:
    if z.dim() == 0 or z.shape[-1] == 0:
        raise ValueError(f"need a non-empty last dimension, got shape {tuple(z.shape)}")
    zc = z.detach().to(compute_dtype(z.dtype))
    flat = zc.reshape(-1, zc.shape[-1])
    sel = select(flat, k=k, entmax15=entmax15, temperature=temperature)
    scale = 0.5 if entmax15 else temperature
    tau = sel.tau / scale + sel.zmax  # back to the frame of z (T z for sparsemax: tau / T + max z)
    return tau.reshape(zc.shape[:-1]), sel.size.reshape(zc.shape[:-1])


def sparsemax_threshold_fast(
    z: Tensor, *, temperature: float = 1.0, k: int | None = None
) -> tuple[Tensor, Tensor]:
    """Exact sparsemax threshold of T z by partial selection (no full sort). No gradient.

    z [..., V] any float dtype -> (tau [...], |S| [...] int64) in the compute dtype, such that
    ``sparsemax(T z) = max(T z - T tau, 0)``, i.e. tau is returned in the frame of z.
    """
    return _threshold(z, False, temperature, k)


def entmax15_threshold_fast(z: Tensor, *, k: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact 1.5-entmax threshold by partial selection. No gradient.

    z [..., V] -> (tau [...], |S| [...]) with ``entmax15(z) = max(z / 2 - tau / 2, 0)^2`` (tau in the frame
    of z, i.e. twice the threshold of z / 2).
    """
    return _threshold(z, True, 1.0, k)


# --------------------------------------------------------------------------------------------------------
# Block kernel: per-row losses and weighted gradients


class Workspace:
    """Scratch [rows, V] buffers reused across the row blocks of one call.

    A fresh large tensor costs a page fault per 4 KiB page on first touch (glibc maps every allocation
    above 32 MiB anew), which is as slow as a pass over it; reusing buffers pays that once per call.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, rows: int, like: Tensor) -> Tensor:
        """A [rows, like.shape[1]] buffer with like's dtype and device (contents undefined)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1:] != like.shape[1:] or buf.dtype != like.dtype:
            buf = like.new_empty((rows, *like.shape[1:]))
            self._buffers[name] = buf
        return buf[:rows]


def _softmax_into(z: Tensor, out: Tensor) -> Tensor:
    """softmax(z) along dim 1 written into `out` (same dtype), one fused row-wise kernel."""
    return torch.ops.aten._softmax.out(z, 1, False, out=out)


def softmax_into(z: Tensor, out: Tensor) -> Tensor:
    """softmax(z) along dim 1 written into `out` (same dtype), one fused row-wise kernel."""
    return torch.ops.aten._softmax.out(z, 1, False, out=out)


def block_rows(vocab: int, device: torch.device) -> int:
    """Rows per block: about `BLOCK_BYTES_CPU` (`BLOCK_BYTES_GPU`) of fp32 logits."""
    budget = BLOCK_BYTES_GPU if device.type != "cpu" else BLOCK_BYTES_CPU
    return max(1, budget // (4 * vocab))


def row_weight(n_kept: int, reduction: str) -> float:
    """Weight of each kept row: 1 / n for "mean", 1 for "sum"."""
    return 1.0 / n_kept if reduction == "mean" and n_kept > 0 else 1.0


def _runs(keep: Tensor) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of consecutive row numbers in the sorted 1-D `keep`."""
    if keep.numel() == 0:
        return []
    k = keep.cpu()
    breaks = ((k[1:] - k[:-1]) != 1).nonzero().squeeze(1) + 1
    bounds = [0, *breaks.tolist(), k.numel()]
    return [(int(k[a]), int(k[b - 1]) + 1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def row_blocks(labels: Tensor, ignore_index: int, step: int) -> list[slice | Tensor]:
    """The kept (non-ignored) rows in blocks of at most `step` rows: slices of runs of consecutive kept rows
    (no gathering) unless the runs are so short that this would make over 4 times as many blocks, then
    index tensors."""
    keep = (labels != ignore_index).nonzero().squeeze(1)
    slices = [slice(a, min(a + step, stop)) for start, stop in _runs(keep) for a in range(start, stop, step)]
    if len(slices) <= 4 * -(-keep.numel() // step):
        return slices
    return list(keep.split(step))


def _loss_and_grad(
    logits: Tensor, labels: Tensor, loss: TokenLoss, ignore_index: int, reduction: str, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    cdt = compute_dtype(logits.dtype)
    logits = logits.contiguous()
    vocab = logits.shape[1]
    blocks = row_blocks(labels, ignore_index, block_rows(vocab, logits.device))
    n_kept = sum(b.stop - b.start if isinstance(b, slice) else b.numel() for b in blocks)
    weight = row_weight(n_kept, reduction)
    grad = torch.empty_like(logits) if need_grad else None
    if grad is not None and n_kept < labels.numel():
        grad.index_fill_(0, (labels == ignore_index).nonzero().squeeze(1), 0.0)
    total = logits.new_zeros((), dtype=cdt)
    ws = Workspace()
    for rows in blocks:
        sliced = isinstance(rows, slice)
        direct = sliced and logits.dtype == cdt
        n = rows.stop - rows.start if sliced else rows.numel()
        z = logits[rows] if direct else ws.get("z", n, logits.new_empty(0, vocab, dtype=cdt))
        if sliced and not direct:
            z.copy_(logits[rows])
        elif not sliced:
            if logits.dtype == cdt:
                torch.index_select(logits, 0, rows, out=z)
            else:
                z.copy_(logits.index_select(0, rows))
        out = None
        if grad is not None:
            out = grad[rows] if direct else ws.get("out", n, z)
        y = labels[rows] if sliced else labels.index_select(0, rows)
        total = total + loss.rows(z, y, weight, out, ws).sum() * weight
        if grad is not None and not direct:
            if sliced:
                grad[rows].copy_(out)
            else:
                grad.index_copy_(0, rows, out.to(grad.dtype))
    return total, grad


class RowKernelLoss(torch.autograd.Function):
    """``loss`` on logits [N, V] through its row kernel: the value in the forward pass, where dL/dlogits is
    formed too and is the only tensor saved; the backward pass scales it by the incoming gradient."""

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, labels: Tensor, loss: TokenLoss, ignore_index: int, reduction: str
    ) -> Tensor:
        value, grad = _loss_and_grad(logits, labels, loss, ignore_index, reduction, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None
        if grad_loss.numel() == 1 and bool(grad_loss == 1):
            return grad, None, None, None, None
        return grad * grad_loss.to(grad.dtype), None, None, None, None
