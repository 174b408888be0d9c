"""Fast exact TS² losses ("TS²: Training with Sparsemax+, Testing with Softmax", ICLR 2026).

Same maths and signatures as the references in `ts2.losses`, computed without sorting a vocabulary row and
with closed-form gradients:

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
- Gradients in closed form (dL/dz; p the sparse probabilities, e_y the one-hot label):
  ce ``softmax(z) - e_y``; label smoothing ``softmax(z) - (1 - eps) e_y - eps u`` (u uniform over finite
  logits); GEM ``c - (sum_i c_i) e_y`` with ``c = softmax(z / beta) * w`` detached; sparsemax and 1.5-entmax
  ``p - e_y``; TS² ``T (sparsemax(T z) - e_y) + alpha a (softmax(z) - softmax_H(z))`` with H = S ∪ {y},
  ``a = 1`` (ts2) or ``1 - sparsemax(T z)_y`` (ts2_adaptive), and a = 0 where the penalty sits at its cap.
  The gradient is formed in the forward pass, row block by row block, and is the only [N, V] tensor kept.

Shapes: logits [N, V] (any float dtype; maths in fp32, fp64 for fp64 input), labels [N] -> scalar.
`row_losses` is the block kernel also used by `ts2.losses.fused`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ts2.losses._common import check_hyperparameter, check_inputs, compute_dtype

TOPK = 64
"""Values selected per row before the exactness test (a row whose support needs more is redone)."""

BLOCK_BYTES_CPU = 1 << 28
"""Rows are processed in blocks of about this many bytes of fp32 logits (bounds the scratch memory)."""

BLOCK_BYTES_GPU = 1 << 30

LOSS_IDS = ("ce", "label_smoothing", "gem", "sparsemax", "entmax15", "ts2", "ts2_adaptive")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "ce": {},
    "label_smoothing": {"epsilon": 0.1},
    "gem": {"beta": 0.7, "h": "logsigmoid"},
    "sparsemax": {},
    "entmax15": {},
    "ts2": {"alpha": 0.25, "clamp": 0.99, "temperature": 1.0},
    "ts2_adaptive": {"alpha": 0.25, "clamp": 0.99, "temperature": 1.0},
}


@dataclass(frozen=True)
class LossSpec:
    """A loss id and its hyperparameters (defaults as in the reference losses)."""

    name: str
    epsilon: float = 0.0
    beta: float = 1.0
    h: str = "linear"
    alpha: float = 0.0
    clamp: float | None = None
    temperature: float = 1.0


def make_spec(loss: str, **hyperparameters: Any) -> LossSpec:
    """Validate `hyperparameters` for `loss` (one of `LOSS_IDS`) and fill in the reference defaults."""
    if loss not in _DEFAULTS:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSS_IDS}")
    unknown = set(hyperparameters) - set(_DEFAULTS[loss])
    if unknown:
        raise TypeError(f"{loss}: unexpected hyperparameters {sorted(unknown)}")
    hp = {**_DEFAULTS[loss], **hyperparameters}
    if loss == "label_smoothing":
        check_hyperparameter(loss, "epsilon", hp["epsilon"], low=0.0, high=1.0, low_inclusive=True)
    if loss == "gem":
        check_hyperparameter(loss, "beta", hp["beta"], low=0.0)
        if hp["h"] not in ("linear", "logsigmoid"):
            raise ValueError(f"gem: h must be 'linear' or 'logsigmoid', got {hp['h']!r}")
    if loss.startswith("ts2"):
        if not hp["alpha"] >= 0:
            raise ValueError(f"{loss}: alpha must be >= 0, got {hp['alpha']!r}")
        if hp["clamp"] is not None:
            check_hyperparameter(loss, "clamp", hp["clamp"], low=0.0, high=1.0)
        check_hyperparameter(loss, "temperature", hp["temperature"], low=0.0)
    return LossSpec(name=loss, **hp)


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
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
    with _one_thread(z.device):
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


def row_losses(
    z: Tensor,
    y: Tensor,
    weight: float,
    out: Tensor | None,
    spec: LossSpec,
    *,
    k: int | None = None,
    workspace: Workspace | None = None,
) -> Tensor:
    """Per-row losses of a block of rows, and ``weight * dL/dz`` written into `out`.

    z [M, V] logits in the compute dtype (fp32 or fp64), y [M] labels (none ignored), weight the weight of
    every row in the reduction, out [M, V] buffer of z's dtype (not aliasing z) or None for the loss only
    -> losses [M] (unweighted). Every pass over [M, V] is one whole-block op: with many small ops, two
    cores shared with other jobs spend their time waiting at thread barriers.
    """
    y1 = y.unsqueeze(1)
    zy = z.gather(1, y1).squeeze(1)
    name = spec.name
    if name in ("ce", "label_smoothing"):
        eps = spec.epsilon if name == "label_smoothing" else 0.0
        if out is None:
            lse = torch.logsumexp(z, 1)
        else:
            zmax = z.amax(1)
            _softmax_into(z, out)  # its row max is exp(zmax - lse)
            lse = zmax - out.amax(1).log()
        loss = lse - zy
        if eps:
            zsum, count = z.sum(1), torch.full_like(lse, z.shape[1])
            masked = ~torch.isfinite(zsum)
            if bool(masked.any()):  # smoothing is uniform over the finite logits, as in the reference
                rows = masked.nonzero().squeeze(1)
                finite = torch.isfinite(z.index_select(0, rows))
                zsum[rows] = torch.where(finite, z.index_select(0, rows), 0.0).sum(1)
                count[rows] = finite.sum(1).to(z.dtype)
            loss = (1.0 - eps) * loss + eps * (lse - zsum / count)
        if out is not None:
            out.mul_(weight)
            if eps:
                smooth = (weight * eps / count).unsqueeze(1)
                out.sub_(torch.where(torch.isfinite(z), smooth, 0.0) if bool(masked.any()) else smooth)
            out.scatter_add_(1, y1, torch.full_like(zy, -(1.0 - eps) * weight).unsqueeze(1))
        return loss
    if name == "gem":
        ws = workspace or Workspace()
        scratch = torch.mul(z, 1.0 / spec.beta, out=ws.get("gem0", len(z), z))
        q = _softmax_into(scratch, out if out is not None else ws.get("gem1", len(z), z))
        gap = torch.sub(z, zy.unsqueeze(1), out=scratch).nan_to_num_(neginf=0.0)  # -inf entries have q = 0
        tmp = ws.get("gem2", len(z), z)
        if spec.h == "logsigmoid":
            q.mul_(torch.mul(gap, 0.01, out=tmp).sigmoid_())  # q <- c = q * w
        loss = torch.mul(q, gap, out=tmp).sum(1)
        if out is not None:
            mass = q.sum(1, keepdim=True)
            q.mul_(weight)
            q.scatter_add_(1, y1, -weight * mass)
        return loss

    is_entmax = name == "entmax15"
    temp = spec.temperature if name.startswith("ts2") else 1.0
    sel = select(z, k=k, entmax15=is_entmax, temperature=temp)
    p, zmax = sel.probs, sel.zmax
    with _one_thread(z.device):
        if is_entmax:
            # Fenchel-Young: (1 - sum p^1.5) / 0.75 + <p, z - zmax> - (z_y - zmax); z - zmax = 2u on S
            u = ((sel.values - zmax.unsqueeze(1)) * 0.5).clamp_min(-2.0)  # p = 0 where clamped: no 0 * inf
            loss = (1.0 - (p * p.sqrt()).sum(1)) / 0.75 + 2.0 * (p * u).sum(1) - (zy - zmax)
        else:
            # sparsemax loss of T z in the frame shifted by T max z: tau - u_y + (1 + ||p||^2) / 2
            u_y = temp * (zy - zmax)
            loss = sel.tau - u_y + 0.5 * (1.0 + (p * p).sum(1))
    if name in ("sparsemax", "entmax15"):
        if out is not None:
            out.zero_()
            with _one_thread(z.device):
                out.scatter_add_(1, sel.index, weight * p)
                out.scatter_add_(1, y1, torch.full_like(zy, -weight).unsqueeze(1))
        return loss

    # TS²: penalty = logsumexp(z) - logsumexp(z_H), H = S ∪ {y}, both in the frame shifted by max z so
    # that logits of size 1e4 keep their fp32 precision.
    if out is None:
        lse = torch.logsumexp(z - zmax.unsqueeze(1), 1)
    else:
        _softmax_into(z, out)
        lse = -out.gather(1, sel.index[:, :1]).squeeze(1).log()  # softmax at the argmax is exp(-lse)
    with _one_thread(z.device):
        in_support = torch.arange(p.shape[1], device=z.device).unsqueeze(0) < sel.size.unsqueeze(1)
        head = (sel.values - zmax.unsqueeze(1)).masked_fill(~in_support, -math.inf)
        y_in_support = ((sel.index == y1) & in_support).any(1)
        y_extra = (zy - zmax).masked_fill(y_in_support, -math.inf)
        lse_head = torch.logsumexp(torch.cat([head, y_extra.unsqueeze(1)], 1), 1)
        penalty = lse - lse_head
        scale = torch.ones_like(penalty)
        if spec.clamp is not None:
            cap = -math.log1p(-spec.clamp)
            scale = (penalty <= cap).to(z.dtype)  # torch.clamp passes the gradient at the cap itself
            penalty = penalty.clamp(max=cap)
        if name == "ts2_adaptive":
            a = 1.0 - (u_y - sel.tau).clamp_min(0.0)  # 1 - sparsemax(T z)_y, detached
            penalty, scale = penalty * a, scale * a
        loss = loss + spec.alpha * penalty
        dense = (weight * spec.alpha * scale).unsqueeze(1)  # coefficient of softmax(z) - softmax_H(z)
    if out is not None:
        out.mul_(dense)
        with _one_thread(z.device):
            out.scatter_add_(1, sel.index, temp * weight * p - dense * (head - lse_head.unsqueeze(1)).exp())
            out.scatter_add_(1, y1, -temp * weight - dense * (y_extra - lse_head).exp().unsqueeze(1))
    return loss


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
    logits: Tensor, labels: Tensor, spec: LossSpec, ignore_index: int, reduction: str, need_grad: bool
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
        total = total + row_losses(z, y, weight, out, spec, workspace=ws).sum() * weight
        if grad is not None and not direct:
            if sliced:
                grad[rows].copy_(out)
            else:
                grad.index_copy_(0, rows, out.to(grad.dtype))
    return total, grad


class _FastLoss(torch.autograd.Function):
    """Loss in the forward pass; dL/dlogits is formed there too and is the only tensor saved."""

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, labels: Tensor, spec: LossSpec, ignore_index: int, reduction: str
    ) -> Tensor:
        loss, grad = _loss_and_grad(logits, labels, spec, ignore_index, reduction, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None
        if grad_loss.numel() == 1 and bool(grad_loss == 1):
            return grad, None, None, None, None
        return grad * grad_loss.to(grad.dtype), None, None, None, None


def fast_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    loss: str,
    ignore_index: int = -100,
    reduction: str = "mean",
    **hyperparameters: Any,
) -> Tensor:
    """Any loss of `LOSS_IDS` on logits [N, V] -> scalar, with the closed-form gradient (see module doc)."""
    check_inputs(logits, labels, ignore_index=ignore_index, reduction=reduction)
    spec = make_spec(loss, **hyperparameters)
    return _FastLoss.apply(logits, labels, spec, ignore_index, reduction)


def cross_entropy_loss_fast(
    logits: Tensor, labels: Tensor, *, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy ``logsumexp(z) - z_y``; gradient ``softmax(z) - e_y``. [N, V], [N] -> scalar."""
    return fast_loss(logits, labels, loss="ce", ignore_index=ignore_index, reduction=reduction)


def label_smoothing_loss_fast(
    logits: Tensor, labels: Tensor, *, ignore_index: int = -100, reduction: str = "mean", epsilon: float = 0.1
) -> Tensor:
    """Label smoothing ``(1 - eps)(-log p_y) + eps mean_i(-log p_i)`` (finite i). [N, V], [N] -> scalar."""
    return fast_loss(
        logits,
        labels,
        loss="label_smoothing",
        ignore_index=ignore_index,
        reduction=reduction,
        epsilon=epsilon,
    )


def gem_loss_fast(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    beta: float = 0.7,
    h: str = "logsigmoid",
) -> Tensor:
    """GEM ``-sum_i q_i w_i (log p_y - log p_i)``, q = softmax(z/beta), w detached. [N, V], [N] -> scalar."""
    return fast_loss(
        logits, labels, loss="gem", ignore_index=ignore_index, reduction=reduction, beta=beta, h=h
    )


def sparsemax_loss_fast(
    logits: Tensor, labels: Tensor, *, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    """Sparsemax loss ``-z_y + 1/2 sum_{j in S}(z_j^2 - tau^2) + 1/2``, top-k threshold. [N, V], [N] -> scalar."""
    return fast_loss(logits, labels, loss="sparsemax", ignore_index=ignore_index, reduction=reduction)


def entmax15_loss_fast(
    logits: Tensor, labels: Tensor, *, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    """1.5-entmax Fenchel-Young loss ``(1 - sum p^1.5) / 0.75 + <p - e_y, z>``. [N, V], [N] -> scalar."""
    return fast_loss(logits, labels, loss="entmax15", ignore_index=ignore_index, reduction=reduction)


def ts2_loss_fast(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    alpha: float = 0.25,
    clamp: float | None = 0.99,
    temperature: float = 1.0,
) -> Tensor:
    """Sparsemax+ ``L_spm(T z; y) + alpha (logsumexp(z) - logsumexp(z_H))``, H = S ∪ {y}. -> scalar."""
    return fast_loss(
        logits,
        labels,
        loss="ts2",
        ignore_index=ignore_index,
        reduction=reduction,
        alpha=alpha,
        clamp=clamp,
        temperature=temperature,
    )


def ts2_adaptive_loss_fast(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    alpha: float = 0.25,
    clamp: float | None = 0.99,
    temperature: float = 1.0,
) -> Tensor:
    """As `ts2_loss_fast`, each token's penalty scaled by ``1 - sparsemax(T z)_y`` (detached). -> scalar."""
    return fast_loss(
        logits,
        labels,
        loss="ts2_adaptive",
        ignore_index=ignore_index,
        reduction=reduction,
        alpha=alpha,
        clamp=clamp,
        temperature=temperature,
    )


FAST_LOSSES = {
    "ce": cross_entropy_loss_fast,
    "label_smoothing": label_smoothing_loss_fast,
    "gem": gem_loss_fast,
    "sparsemax": sparsemax_loss_fast,
    "entmax15": entmax15_loss_fast,
    "ts2": ts2_loss_fast,
    "ts2_adaptive": ts2_adaptive_loss_fast,
}
