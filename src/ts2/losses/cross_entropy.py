"""Token cross-entropy, the CE baseline of TS² (ICLR 2026), Table 1.

Per token: ``L(z; y) = logsumexp(z) - z_y = -log softmax(z)_y``; gradient ``softmax(z) - e_y``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ts2.losses._common import token_loss


def _per_token(z: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(z, y, reduction="none")


def cross_entropy_loss(
    logits: Tensor, labels: Tensor, *, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy ``logsumexp(z) - z_y`` averaged (or summed) over non-ignored tokens.

    logits [N, V] (any float dtype, computed in fp32), labels [N] -> scalar fp32 (fp64 for fp64 input).
    -inf logits (a masked vocabulary) are fine; a label on a -inf logit gives +inf loss.
    """
    return token_loss(logits, labels, _per_token, ignore_index=ignore_index, reduction=reduction)
