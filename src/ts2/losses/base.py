"""`TokenLoss`, the shape every loss of `ts2.losses` has (TS², ICLR 2026, and its Table 1 baselines).

A loss is a frozen dataclass whose fields are its hyperparameters, with their defaults: the one place they
are written down (the Hydra schema of ``conf/loss/<id>.yaml`` is built from them, `ts2.losses.config`).
Validation lives in ``__post_init__`` and names the hyperparameter. Three ways to evaluate it:

- ``loss(logits [N, V], labels [N], *, ignore_index=-100, reduction="mean") -> scalar``: the fast exact
  path, through the loss's row kernel `rows` (`ts2.losses.kernels.RowKernelLoss`);
- ``loss.rows(z [M, V], y [M], weight, out, workspace) -> [M]``: the row kernel itself, per-row losses and
  ``weight * dL/dz`` written into ``out`` (also driven chunk by chunk by `ts2.losses.fused`);
- ``loss.reference(logits, labels, ...)``: the short pure-torch reference (`per_token`, autograd gradient).

The value is fp32 (fp64 for fp64 input) whatever the logits' dtype; "mean" divides by the number of
non-ignored tokens, "sum" does not; with every token ignored the loss is 0 with a zero gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from ts2.losses._common import check_inputs, token_loss
from ts2.losses.kernels import RowKernelLoss, Workspace


@dataclasses.dataclass(frozen=True)
class TokenLoss:
    """Base of the token losses: subclasses set `id`, declare hyperparameters as fields, and implement
    `per_token` (reference) and `rows` (fast exact kernel)."""

    id: ClassVar[str] = ""

    def __call__(
        self, logits: Tensor, labels: Tensor, *, ignore_index: int = -100, reduction: str = "mean"
    ) -> Tensor:
        """The fast exact loss: logits [N, V], labels [N] -> scalar, closed-form gradient."""
        check_inputs(logits, labels, ignore_index=ignore_index, reduction=reduction)
        return RowKernelLoss.apply(logits, labels, self, ignore_index, reduction)

    def reference(
        self, logits: Tensor, labels: Tensor, *, ignore_index: int = -100, reduction: str = "mean"
    ) -> Tensor:
        """The short pure-torch reference (same maths as `__call__`, gradient by autograd)."""
        return token_loss(logits, labels, self.per_token, ignore_index=ignore_index, reduction=reduction)

    def per_token(self, z: Tensor, y: Tensor) -> Tensor:
        """Reference per-token losses: z [M, V] in the compute dtype, y [M] (none ignored) -> [M]."""
        raise NotImplementedError

    def rows(self, z: Tensor, y: Tensor, weight: float, out: Tensor | None, workspace: Workspace) -> Tensor:
        """Fast kernel: z [M, V] in the compute dtype, y [M] (none ignored), `weight` of every row in the
        reduction, `out` [M, V] (z's dtype, not aliasing z) to receive ``weight * dL/dz``, or None for the
        value only -> per-row losses [M] (unweighted). `workspace` holds reusable [M, V] scratch buffers."""
        raise NotImplementedError

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters as a dict (field name -> value)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def loss_function(
    cls: type[TokenLoss], name: str, summary: str, *, reference: bool = False
) -> Callable[..., Tensor]:
    """The loss ``cls`` as a plain function ``name(logits, labels, *, ignore_index=-100, reduction="mean",
    **hyperparameters) -> scalar``: its fast exact kernel, or (``reference=True``) its pure-torch reference.
    Hyperparameters and their defaults are the dataclass fields of ``cls`` (one place)."""

    def fn(
        logits: Tensor,
        labels: Tensor,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        **hyperparameters: Any,
    ) -> Tensor:
        loss = cls(**hyperparameters)
        run = loss.reference if reference else loss
        return run(logits, labels, ignore_index=ignore_index, reduction=reduction)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = cls.__module__
    kind = "pure-torch reference" if reference else "fast exact kernel"
    fn.__doc__ = (
        f"{summary}, {kind}: logits [N, V], labels [N] -> scalar (hyperparameters: `{cls.__name__}`)."
    )
    return fn
