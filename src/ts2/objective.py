"""The training objective handed to ``transformers.Trainer(compute_loss_func=...)``.

Normalisation (PAPER.md §3, official code): the loss of an optimizer step is the *sum* of per-token losses
over the response tokens of the global batch (all micro-batches of the step, all ranks) divided by the
number of those tokens. ``Trainer`` passes that count as ``num_items_in_batch`` (shifted labels that are not
``-100``, summed over gradient-accumulation micro-batches and ranks), so each micro-batch returns
``sum / num_items_in_batch`` and accumulation 4 x batch 1 gives the same gradient as 1 x 4.

Logged diagnostics (`pop_logs`): on logging steps only (``log_ce_now``, set by the trainer before each
optimizer step), one extra pass without gradient over that step's response tokens computes, per token,
the token cross-entropy ``logsumexp(z) - z_y``, the softmax entropy ``H(softmax(z)) = logsumexp(z) -
<softmax(z), z>`` and the sparsemax support size ``|S|``, ``S = {i : z_i > tau(z)}`` (PAPER.md §1, the
head that TS² keeps), and accumulates their sums; `pop_logs` returns their means over response tokens,
``{"ce", "entropy", "support_size"}``. Other steps pay nothing for them. In fused mode that pass goes
chunk by chunk from the hidden states (`fused_token_stats`), so it never holds the N x V logits either;
the support comes from the exact partial-selection threshold of `ts2.losses.kernels.select` (no sort).

Fused mode (``loss.fused=true``): `fused_head` patches the model's ``forward`` (not its modules) so that it
returns the final hidden states [B, T, d] and the LM head's weight, read inside the forward; the loss applies
the head chunk by chunk (:func:`ts2.losses.fused.fused_linear_loss`, with the configured loss object's row
kernel) without ever holding B*T x V logits. The model keeps its real ``lm_head`` module throughout, so what
FSDP2 shards (its parameters are swapped for DTensors, on ``meta`` first with
``fsdp_cpu_ram_efficient_loading``) and what DeepSpeed wraps is what the Trainer saves: no module is swapped
in and out (a swapped-back head would be the pre-shard, untrained one).

The loss is the object the config's ``_target_`` builds (a `ts2.losses.TokenLoss`, e.g. ``TS2Loss``), in
both modes; ``loss.id``, ``loss.fused`` and ``loss.chunk_size`` are settings of the objective
(`ObjectiveSettings`), not of the loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
from torch import nn

from ts2.losses import TokenLoss
from ts2.losses._common import compute_dtype
from ts2.losses.config import OBJECTIVE_KEYS
from ts2.losses.kernels import block_rows, row_blocks, select, softmax_into

IGNORE_INDEX = -100

STAT_KEYS = ("ce", "entropy", "support_size")
"""The per-token diagnostics `CausalLMObjective.pop_logs` returns (means over response tokens)."""


@dataclass(frozen=True)
class ObjectiveSettings:
    """The keys of a loss config that configure the objective rather than the loss."""

    id: str
    fused: bool = False
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None and (
            isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1
        ):
            raise ValueError(
                f"Invalid loss config (loss={self.id}): loss.chunk_size={self.chunk_size!r} must be null "
                "(the default chunk) or a positive number of rows."
            )


@dataclass(frozen=True)
class HeadWeight:
    """The LM head's weight [V, d] as the patched forward returns it (`fused_head`).

    A plain holder, not a tensor, so that output converters (accelerate's fp32 conversion of mixed-precision
    outputs) leave it in the parameter's dtype instead of making a V x d fp32 copy every micro-batch.
    """

    weight: torch.Tensor


def _hidden_forward(self: nn.Module, *args: Any, num_items_in_batch: Any = None, **kwargs: Any) -> dict:
    """The forward `fused_head` installs: the decoder's last hidden state and the head weight, no logits."""
    del num_items_in_batch  # Trainer passes it to models whose forward takes **kwargs; the loss gets its own
    kwargs.pop("logits_to_keep", None)
    out = self.base_model(*args, **kwargs)
    # Read inside the forward: under FSDP2 this is the unsharded (all-gathered) parameter, whose gradient
    # FSDP reduce-scatters like any other; under ZeRO-2 and DDP the parameter itself.
    return {"hidden": out.last_hidden_state, "head_weight": HeadWeight(self.get_output_embeddings().weight)}


@contextmanager
def fused_head(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model(...)`` returns ``{"hidden": [B, T, d], "head_weight": HeadWeight}`` (what
    `CausalLMObjective` reads with ``fused=True``) instead of logits; the class's forward comes back on exit.

    Only the instance's ``forward`` is replaced (a bound method, so accelerate's autocast wrapper can wrap
    it); every module and parameter stays where it is. Needs a transformers causal LM with a decoder
    (``model.base_model`` is not the model itself) and a bias-free LM head (Llama, Qwen).
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"loss.fused=true: {type(model).__name__} has no LM head weight to fuse.")
    if getattr(head, "bias", None) is not None:
        raise ValueError(
            "loss.fused=true supports bias-free LM heads only (Llama, Qwen): set loss.fused=false."
        )
    if getattr(model, "base_model", model) is model:
        raise ValueError(f"loss.fused=true: {type(model).__name__} has no separate decoder (base_model).")
    model.forward = MethodType(_hidden_forward, model)
    try:
        yield model
    finally:
        # accelerate may have wrapped ours (forward) and kept it (_original_forward): drop both.
        model.__dict__.pop("forward", None)
        kept = model.__dict__.get("_original_forward")
        if getattr(kept, "__func__", None) is _hidden_forward:
            del model.__dict__["_original_forward"]


def _row_stats(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sums over the rows of a block of ``[CE, entropy, support size]``: z [M, V] in the compute dtype, y [M].

    CE ``logsumexp(z) - z_y``; entropy ``-sum_i p_i log p_i = logsumexp(z) - sum_i p_i z_i`` with p =
    softmax(z) (entries with p_i = 0, e.g. -inf logits, add nothing); support size ``|{i : z_i > tau}|``
    of sparsemax(z) (PAPER.md §1), exact from `ts2.losses.kernels.select`.
    """
    lse = torch.logsumexp(z, dim=1)
    ce = lse - z.gather(1, y.unsqueeze(1)).squeeze(1)
    p = softmax_into(z, torch.empty_like(z))
    pz = torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)  # <p, z> per row, no [M, V] temporary
    bad = ~torch.isfinite(pz)  # 0 * -inf: rows with masked (-inf) logits
    if bool(bad.any()):
        zb, pb = z[bad], p[bad]
        pz[bad] = torch.where(pb > 0, pb * zb, pb.new_zeros(())).sum(1)
    entropy = lse - pz
    size = select(z).size.to(z.dtype)
    return torch.stack([ce.sum(), entropy.sum(), size.sum()])


def _check_stats_inputs(labels: torch.Tensor, n: int, vocab: int, where: str) -> None:
    if labels.dim() != 1 or labels.shape[0] != n or labels.is_floating_point():
        raise ValueError(f"{where}: labels must be integer [N={n}], got {labels.dtype} {tuple(labels.shape)}")
    kept = labels[labels != IGNORE_INDEX]
    if bool(((kept < 0) | (kept >= vocab)).any()):
        raise ValueError(f"{where}: labels out of range [0, {vocab}) (and not {IGNORE_INDEX})")


@torch.no_grad()
def token_stats(
    logits: torch.Tensor, labels: torch.Tensor, *, chunk_size: int | None = None
) -> tuple[torch.Tensor, int]:
    """Sums of the per-token ``[CE, softmax entropy, sparsemax support size]`` over the response tokens.

    logits [N, V], labels [N] (``-100`` = not a response token) -> (sums [3] in the compute dtype, number
    of response tokens). Rows go through in blocks (`chunk_size` rows, default about 256 MiB of fp32 on
    CPU), so the scratch memory stays bounded; no gradient.
    """
    if logits.dim() != 2:
        raise ValueError(f"token_stats: logits must be [N, V], got shape {tuple(logits.shape)}")
    _check_stats_inputs(labels, logits.shape[0], logits.shape[1], "token_stats")
    cdt = compute_dtype(logits.dtype)
    step = chunk_size or block_rows(logits.shape[1], logits.device)
    total = torch.zeros(3, dtype=cdt, device=logits.device)
    count = 0
    for rows in row_blocks(labels, IGNORE_INDEX, step):
        z = logits[rows] if isinstance(rows, slice) else logits.index_select(0, rows)
        y = labels[rows] if isinstance(rows, slice) else labels.index_select(0, rows)
        total += _row_stats(z.detach().to(cdt), y)
        count += z.shape[0]
    return total, count


def _chunk_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Logits of one chunk of rows, ``x W^T`` [C, V], upcast to the compute dtype."""
    return torch.mm(x, weight.t()).to(compute_dtype(x.dtype))


@torch.no_grad()
def fused_token_stats(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, chunk_size: int | None = None
) -> tuple[torch.Tensor, int]:
    """`token_stats` of ``hidden @ weight.T`` without materialising the [N, V] logits.

    hidden [N, d], weight [V, d] (the LM head), labels [N]: the logits are formed `chunk_size` rows at a
    time (default as `ts2.losses.fused.fused_linear_loss`), only for response tokens, and dropped after
    their block's sums are taken.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fused_token_stats: need hidden [N, d] and weight [V, d], got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}"
        )
    _check_stats_inputs(labels, hidden.shape[0], weight.shape[0], "fused_token_stats")
    step = chunk_size or block_rows(weight.shape[0], hidden.device)
    total = torch.zeros(3, dtype=compute_dtype(hidden.dtype), device=hidden.device)
    count = 0
    w = weight.detach()
    for rows in row_blocks(labels, IGNORE_INDEX, step):
        x = hidden[rows] if isinstance(rows, slice) else hidden.index_select(0, rows)
        y = labels[rows] if isinstance(rows, slice) else labels.index_select(0, rows)
        total += _row_stats(_chunk_logits(x.detach(), w), y)
        count += x.shape[0]
    return total, count


class CausalLMObjective:
    """Shift, flatten, compute ``loss(..., reduction="sum") / num_items_in_batch``; track diagnostics for logs.

    `loss` is a `ts2.losses.TokenLoss` (its fast kernel on the model's ``logits``; with ``fused=True`` its row
    kernel through `fused_linear_loss`, on the ``hidden`` states and ``head_weight`` that a model inside
    `fused_head` returns). While ``log_ce_now`` is set, each call also accumulates the token CE, softmax
    entropy and sparsemax support size of its response tokens (`pop_logs`).
    """

    def __init__(self, loss: TokenLoss, *, fused: bool = False, chunk_size: int | None = None) -> None:
        if not isinstance(loss, TokenLoss):
            raise TypeError(f"CausalLMObjective needs a ts2.losses.TokenLoss, got {type(loss).__name__}")
        self.loss = loss
        self.fused = fused
        self.chunk_size = chunk_size
        self.stat_sums = torch.zeros(3, dtype=torch.float64)
        self.stat_tokens = 0
        self.log_ce_now = True  # set by the trainer (ts2.trainer.ce_log_schedule): compute the diagnostics?

    def _model_output(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, T, V], None) or, fused, (hidden [B, T, d], head weight [V, d])."""
        keys = outputs.keys() if hasattr(outputs, "keys") else ()
        if self.fused:
            if "hidden" not in keys:
                raise ValueError(
                    "CausalLMObjective(fused=True) needs the model's hidden states and head weight: run the "
                    "model inside ts2.objective.fused_head(model) (ts2.train does this for loss.fused=true)."
                )
            weight = outputs["head_weight"].weight
            return outputs["hidden"].to(weight.dtype), weight  # accelerate may have upcast the hidden states
        if "hidden" in keys:
            raise ValueError(
                "The model returns hidden states (inside ts2.objective.fused_head) but the objective was built "
                "with fused=False: build it with fused=True (loss.fused=true)."
            )
        return (outputs["logits"] if isinstance(outputs, dict) else outputs.logits), None

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        out, weight = self._model_output(outputs)
        out = out[:, :-1, :].reshape(-1, out.shape[-1])
        targets = labels[:, 1:].reshape(-1).to(out.device)
        denom = num_items_in_batch
        if denom is None:  # outside Trainer: normalise by this batch's own response tokens
            denom = targets.ne(IGNORE_INDEX).sum().clamp_min(1)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(out.device)
        if weight is not None:
            from ts2.losses.fused import fused_linear_loss

            loss_sum = fused_linear_loss(
                out, weight, targets, self.loss, reduction="sum", chunk_size=self.chunk_size
            )
        else:
            loss_sum = self.loss(out, targets, reduction="sum")
        if self.log_ce_now:
            if weight is not None:
                sums, n = fused_token_stats(out, weight, targets, chunk_size=self.chunk_size)
            else:
                sums, n = token_stats(out, targets, chunk_size=self.chunk_size)
            self.stat_sums += sums.detach().double().cpu()
            self.stat_tokens += n
        return loss_sum / denom

    def pop_logs(self) -> dict[str, float]:
        """Means over the response tokens seen since the last call (while ``log_ce_now`` was set) of the
        token CE, softmax entropy and sparsemax support size, ``{"ce", "entropy", "support_size"}``
        (`STAT_KEYS`); ``{}`` if there were none. Resets the sums.

        Under a distributed launch the sums and counts are added over all ranks first
        (`ts2.distributed.all_reduce_sum`, a collective: every rank calls this at the same log steps, as
        ``Trainer.log`` does), so every rank logs the global batch's means.
        """
        from ts2.distributed import all_reduce_sum

        *sums, tokens = all_reduce_sum([*self.stat_sums.tolist(), float(self.stat_tokens)])
        self.stat_sums.zero_()
        self.stat_tokens = 0
        if tokens == 0:
            return {}
        return {key: value / tokens for key, value in zip(STAT_KEYS, sums, strict=True)}

    def pop_ce(self) -> float | None:
        """Mean token CE since the last pop (None if none); the other diagnostics are dropped. Kept for
        callers written before `pop_logs`."""
        return self.pop_logs().get("ce")


def make_loss(loss_cfg: Any) -> tuple[TokenLoss, ObjectiveSettings]:
    """Build the configured loss (``instantiate`` of its ``_target_``) and the objective's settings.

    `loss_cfg` is the ``loss`` node (conf/loss/<id>.yaml on the schema of `ts2.losses.config`). Its keys
    other than ``id``/``fused``/``chunk_size`` are the loss's arguments. The loss validates them on
    construction and is then called once on a 2 x 3 input, so that a bad setting (alpha < 0, an unknown
    GEM h, ...) fails in a second, with a message naming the loss and the setting, not after the model
    has loaded.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(loss_cfg, resolve=True)
    where = f"Invalid loss config (loss={cfg.get('id')})"
    try:
        loss = instantiate({k: v for k, v in cfg.items() if k not in OBJECTIVE_KEYS})
    except Exception as err:  # Hydra wraps the constructor's error in an InstantiationException
        cause = err.__cause__ or err
        kind = TypeError if isinstance(cause, TypeError) else ValueError
        raise kind(f"{where}: {cause}") from err
    if not isinstance(loss, TokenLoss):
        raise TypeError(
            f"{where}: loss._target_={cfg.get('_target_')!r} built a {type(loss).__name__}, not a "
            "ts2.losses.TokenLoss (the fast and fused paths need its row kernel `rows`)."
        )
    try:
        loss(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.5, -1.0]]), torch.tensor([2, 0]))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from err
    settings = ObjectiveSettings(
        id=str(cfg.get("id") or loss.id),
        fused=bool(cfg.get("fused", False)),
        chunk_size=cfg.get("chunk_size"),
    )
    return loss, settings
