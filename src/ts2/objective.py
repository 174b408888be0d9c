"""The training objective handed to ``transformers.Trainer(compute_loss_func=...)``.

Normalisation (PAPER.md §3, official code): the loss of an optimizer step is the *sum* of per-token losses
over the response tokens of the global batch (all micro-batches of the step, all ranks) divided by the
number of those tokens. ``Trainer`` passes that count as ``num_items_in_batch`` (shifted labels that are not
``-100``, summed over gradient-accumulation micro-batches and ranks), so each micro-batch returns
``sum / num_items_in_batch`` and accumulation 4 x batch 1 gives the same gradient as 1 x 4.

Logged CE: on logging steps only (``log_ce_now``, set by the trainer before each optimizer step), the token
cross-entropy of that step's batch is computed without gradient — free for ``ce``, one extra pass over the
logits otherwise — so other steps pay nothing for it.

Fused mode (``loss.fused=true``): the model's ``lm_head`` is replaced by a pass-through that keeps the same
weight parameter, so the model returns hidden states [B, T, d] and the loss applies the head chunk by chunk
(:func:`ts2.losses.fused.fused_linear_loss`) without ever holding B*T x V logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
RESERVED_KEYS = ("id", "fused", "chunk_size")


class HiddenPassthrough(nn.Module):
    """Stands in for ``lm_head`` in fused mode: returns its input; the loss applies ``weight``."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        if getattr(head, "bias", None) is not None:
            raise ValueError("Fused loss supports bias-free LM heads only (Llama, Qwen).")
        self.weight = head.weight
        self.original = [head]  # a list keeps it out of the module tree (no duplicate parameters)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


class CausalLMObjective:
    """Shift, flatten, compute ``loss_fn(..., reduction="sum") / num_items_in_batch``; track CE for logs."""

    def __init__(
        self,
        loss_fn: Callable[..., torch.Tensor],
        *,
        loss_id: str,
        hyperparameters: dict[str, Any] | None = None,
        fused: bool = False,
        chunk_size: int | None = None,
        head: nn.Module | None = None,
    ) -> None:
        self.loss_fn = loss_fn
        self.loss_id = loss_id
        self.hyperparameters = dict(hyperparameters or {})
        self.fused = fused
        self.chunk_size = chunk_size
        self.head = head
        self.ce_sum = 0.0
        self.ce_tokens = 0
        self.log_ce_now = True

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        out = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        out = out[:, :-1, :].reshape(-1, out.shape[-1])
        targets = labels[:, 1:].reshape(-1).to(out.device)
        denom = num_items_in_batch
        if denom is None:  # outside Trainer: normalise by this batch's own response tokens
            denom = targets.ne(IGNORE_INDEX).sum().clamp_min(1)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(out.device)
        if self.fused:
            from ts2.losses.fused import fused_linear_loss

            loss_sum = fused_linear_loss(
                out,
                self.head.weight,
                targets,
                loss=self.loss_id,
                reduction="sum",
                chunk_size=self.chunk_size,
                **self.hyperparameters,
            )
        else:
            loss_sum = self.loss_fn(out, targets, reduction="sum")
        if self.log_ce_now:
            self.ce_sum += float(self._ce_sum(out, targets, loss_sum))
            self.ce_tokens += int(targets.ne(IGNORE_INDEX).sum())
        return loss_sum / denom

    @torch.no_grad()
    def _ce_sum(self, out: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor) -> torch.Tensor:
        if self.loss_id == "ce":
            return loss_sum.detach()
        if self.fused:
            from ts2.losses.fused import fused_linear_loss

            return fused_linear_loss(
                out.detach(),
                self.head.weight.detach(),
                targets,
                loss="ce",
                reduction="sum",
                chunk_size=self.chunk_size,
            )
        return F.cross_entropy(out.detach().float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")

    def pop_ce(self) -> float | None:
        """Mean token CE of the batches seen since the last call with ``log_ce_now`` set (None if none)."""
        if self.ce_tokens == 0:
            return None
        ce = self.ce_sum / self.ce_tokens
        self.ce_sum, self.ce_tokens = 0.0, 0
        return ce


def make_loss(loss_cfg: Any) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
    """Instantiate the configured loss (a Hydra partial) and check its hyperparameters at once.

    The loss is called once on a 2 x 3 input, so that a bad setting (alpha < 0, an unknown GEM h, ...)
    fails in a second with the loss function's own message, not after the model has loaded.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(loss_cfg, resolve=True)
    fn_cfg = {k: v for k, v in cfg.items() if k not in RESERVED_KEYS}
    hyper = {k: v for k, v in fn_cfg.items() if not k.startswith("_")}
    fn = instantiate(fn_cfg)
    try:
        fn(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.5, -1.0]]), torch.tensor([2, 0]))
    except (ValueError, TypeError) as err:
        raise ValueError(f"Invalid loss config (loss={cfg.get('id')}): {err}") from err
    return fn, hyper
