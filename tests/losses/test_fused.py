"""The fused linear + loss path (`ts2.losses.fused`) gives the loss and gradients of the unfused one:
``loss(hidden @ weight.T, labels)`` differentiated by autograd through the reference losses. It takes the
instantiated loss, so any `TokenLoss` (not only those of `LOSSES`) works fused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ts2.losses import LOSSES, CrossEntropyLoss, TS2Loss, cross_entropy_loss, ts2_loss
from ts2.losses.fused import fused_linear_loss

# Every loss of LOSSES at its defaults (a new loss file is covered at once), plus other settings.
CASES = [(loss_id, {}) for loss_id in LOSSES] + [
    ("ce_ls", {"epsilon": 0.2}),
    ("gem", {"beta": 1.2, "h": "linear"}),
    ("ts2", {"alpha": 1.5, "clamp": 0.3, "temperature": 0.7}),
    ("ts2", {"alpha": 0.5, "clamp": None, "adaptive": True}),
]


def _problem(n: int = 37, d: int = 12, v: int = 150, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(v, d, generator=g, dtype=torch.float64) * 0.8).to(dtype)
    y = torch.randint(0, v, (n,), generator=g)
    y[[0, 1, 2, 9, 20, 21]] = -100  # a run at the start, single rows, a pair
    return x, w, y


def _grads(fn, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    loss = fn(x, w)
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_fused_matches_unfused(name: str, kw: dict, chunk_size: int | None) -> None:
    x, w, y = _problem()
    loss = LOSSES[name](**kw)
    ref = _grads(lambda a, b: loss.reference(a @ b.t(), y), x, w)
    got = _grads(lambda a, b: fused_linear_loss(a, b, y, loss, chunk_size=chunk_size), x, w)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_fused_float64_sum_and_upstream_gradient(name: str, kw: dict) -> None:
    x, w, y = _problem(seed=1, dtype=torch.float64)
    loss = LOSSES[name](**kw)
    ref = _grads(lambda a, b: 2.5 * loss(a @ b.t(), y, reduction="sum"), x, w)
    got = _grads(lambda a, b: 2.5 * fused_linear_loss(a, b, y, loss, reduction="sum", chunk_size=8), x, w)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_fused_partial_requires_grad_and_no_grad() -> None:
    x, w, y = _problem(seed=2)
    loss_ref, gx_ref, gw_ref = _grads(lambda a, b: ts2_loss(a @ b.t(), y), x, w)
    w1 = w.clone().requires_grad_()
    fused_linear_loss(x, w1, y, TS2Loss(), chunk_size=4).backward()  # frozen hidden states
    torch.testing.assert_close(w1.grad, gw_ref, rtol=1e-5, atol=1e-6)
    x1 = x.clone().requires_grad_()
    fused_linear_loss(x1, w, y, TS2Loss(), chunk_size=4).backward()  # frozen head
    torch.testing.assert_close(x1.grad, gx_ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_loss(x, w, y, TS2Loss()), loss_ref, rtol=1e-5, atol=1e-6)


def test_fused_all_ignored_is_zero() -> None:
    x, w, _ = _problem(seed=3)
    y = torch.full((x.shape[0],), -100)
    loss, gx, gw = _grads(lambda a, b: fused_linear_loss(a, b, y, TS2Loss()), x, w)
    assert float(loss) == 0.0
    assert torch.equal(gx, torch.zeros_like(gx)) and torch.equal(gw, torch.zeros_like(gw))


def test_fused_bf16_close_to_fp32() -> None:
    x, w, y = _problem(n=64, d=32, v=500, seed=4)
    ref = _grads(lambda a, b: fused_linear_loss(a, b, y, TS2Loss()), x, w)
    got = _grads(
        lambda a, b: fused_linear_loss(a, b, y, TS2Loss(), chunk_size=16), x.bfloat16(), w.bfloat16()
    )
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], ref[0], rtol=2e-2, atol=2e-2)
    for r, g in zip(ref[1:], got[1:], strict=True):
        torch.testing.assert_close(g.float(), r, rtol=5e-2, atol=5e-3)


def test_fused_bad_arguments() -> None:
    x, w, y = _problem()
    with pytest.raises(ValueError):
        fused_linear_loss(x, w[:, :5], y, CrossEntropyLoss())
    with pytest.raises(TypeError):
        fused_linear_loss(x, w.double(), y, CrossEntropyLoss())
    with pytest.raises(ValueError):
        fused_linear_loss(x, w, torch.full_like(y, 150), CrossEntropyLoss())
    with pytest.raises(ValueError):
        fused_linear_loss(x, w, y, CrossEntropyLoss(), chunk_size=0)


class ScaledCE(CrossEntropyLoss):
    """A loss defined outside `ts2.losses` (as a config's ``_target_`` may name): 3 x cross-entropy."""

    def rows(self, z, y, weight, out, workspace):
        return 3.0 * super().rows(z, y, 3.0 * weight, out, workspace)


def test_fused_uses_the_given_loss_object_not_an_id() -> None:
    """The fused path runs whatever loss it is handed (its row kernel), so ``_target_`` is honoured."""
    x, w, y = _problem(seed=6)
    ref = _grads(lambda a, b: 3.0 * cross_entropy_loss(a @ b.t(), y), x, w)
    got = _grads(lambda a, b: fused_linear_loss(a, b, y, ScaledCE(), chunk_size=7), x, w)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="TokenLoss instance"):
        fused_linear_loss(x, w, y, "ts2")


def _peak_rss_mib(fn) -> float:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    status = Path("/proc/self/status").read_text
    before = int(next(line for line in status().splitlines() if line.startswith("VmRSS:")).split()[1])
    fn()
    after = int(next(line for line in status().splitlines() if line.startswith("VmHWM:")).split()[1])
    return (after - before) / 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_fused_never_holds_the_logits() -> None:
    """Peak resident memory of fused fwd+bwd stays far below one [N, V] fp32 tensor; unfused needs several."""
    n, d, v = 4096, 8, 8192  # logits: 128 MiB
    x, w, y = _problem(n=n, d=d, v=v, seed=5)
    x.requires_grad_()
    w.requires_grad_()

    def run(fn) -> float:
        def step() -> None:
            fn().backward()
            x.grad = w.grad = None

        step()  # warm up allocator and thread pools
        return _peak_rss_mib(step)

    fused = run(lambda: fused_linear_loss(x, w, y, TS2Loss(), chunk_size=256))  # chunks of 8 MiB
    unfused = run(lambda: cross_entropy_loss(x @ w.t(), y))
    logits_mib = n * v * 4 / 2**20
    assert fused < 0.25 * logits_mib, (fused, unfused)
    assert unfused > logits_mib, (fused, unfused)
