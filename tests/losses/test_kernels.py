"""Tests of the fast exact kernels (each loss's `rows`, driven by `ts2.losses.kernels`) against independent
references: the `entmax` package (full sort), a float64 bisection for thresholds, torch's cross-entropy, and
short pure-torch references written here (GEM, TS²) differentiated by autograd; and against the project's
own references (`ts2.losses.reference`)."""

from __future__ import annotations

import math

import entmax
import pytest
import torch
import torch.nn.functional as F

from ts2.losses import (
    LOSSES,
    CrossEntropyLoss,
    GEMLoss,
    LabelSmoothingLoss,
    TS2Loss,
    cross_entropy_loss,
    entmax15_loss,
    gem_loss,
    kernels,
    label_smoothing_loss,
    sparsemax_loss,
    ts2_loss,
)
from ts2.losses.kernels import entmax15_threshold_fast, sparsemax_threshold_fast

# Every loss of LOSSES at its defaults (a new loss file is covered at once), and adaptive TS².
CASES = [(loss_id, {}) for loss_id in LOSSES] + [("ts2", {"adaptive": True})]
CASE_IDS = [f"{n}-{'-'.join(map(str, kw.values()))}" if kw else n for n, kw in CASES]
FAST = {"sparsemax": sparsemax_loss, "entmax15": entmax15_loss}

F64 = torch.float64
INF = math.inf


def _logits(
    n: int, v: int, *, seed: int, scale: float = 2.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, v, generator=g, dtype=F64)).to(dtype)


def _labels(n: int, v: int, *, seed: int) -> torch.Tensor:
    return torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(seed))


def _value_and_grad(fn, z: torch.Tensor, y: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().clone().requires_grad_()
    loss = fn(z, y, **kw)
    loss.backward()
    return loss.detach(), z.grad


# ---- independent references --------------------------------------------------------------------------


def _bisect_tau(z: torch.Tensor, power: float) -> torch.Tensor:
    """tau with sum_i max(z_i - tau, 0)^power = 1 per row, by 200 bisection steps in float64."""
    z = z.to(F64)
    hi = z.amax(-1)
    lo = hi - 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        mass = (z - mid.unsqueeze(-1)).clamp_min(0).pow(power).sum(-1)
        lo, hi = torch.where(mass > 1, mid, lo), torch.where(mass > 1, hi, mid)
    return (lo + hi) / 2


def _ts2_reference(z, y, *, alpha=0.25, clamp=0.99, temperature=1.0, adaptive=False, reduction="mean"):
    """Sparsemax+ from the entmax package (full sort) and torch logsumexp; autograd gives the gradient."""
    zf = z.float() if z.dtype != F64 else z
    spm = entmax.sparsemax_loss(temperature * zf, y)
    with torch.no_grad():
        p = entmax.sparsemax(temperature * zf, dim=-1)
        head = (p > 0).scatter(1, y.unsqueeze(1), True)
        scale = 1.0 - p.gather(1, y.unsqueeze(1)).squeeze(1) if adaptive else torch.ones_like(spm)
    penalty = torch.logsumexp(zf, -1) - torch.logsumexp(zf.masked_fill(~head, -INF), -1)
    if clamp is not None:
        penalty = penalty.clamp(max=-math.log(1 - clamp))
    per_token = spm + alpha * scale * penalty
    return per_token.mean() if reduction == "mean" else per_token.sum()


def _gem_reference(z, y, *, beta=0.7, h="logsigmoid"):
    """-sum_i q_i w_i (log p_y - log p_i), q = softmax(z / beta) and w detached, mean over tokens."""
    logp = torch.log_softmax(z.float(), -1)
    with torch.no_grad():
        q = torch.softmax(z.float() / beta, -1)
        w = (
            torch.sigmoid(0.01 * (z.float() - z.float().gather(1, y.unsqueeze(1))))
            if h == "logsigmoid"
            else 1.0
        )
    return -(q * w * (logp.gather(1, y.unsqueeze(1)) - logp)).sum(-1).mean()


def _ties(v: int) -> torch.Tensor:
    """Rows built to defeat a small top-k: all equal, a wide flat top, a top wider than k, a plain row."""
    g = torch.Generator().manual_seed(3)
    flat_top = -3.0 + torch.randn(v, generator=g, dtype=F64)
    flat_top[: v // 2] = 0.0
    wide = -5.0 + torch.randn(v, generator=g, dtype=F64)
    wide[:40] = -torch.rand(40, generator=g, dtype=F64) * 0.02
    return torch.stack(
        [torch.zeros(v, dtype=F64), flat_top, wide, 2 * torch.randn(v, generator=g, dtype=F64)]
    )


# ---- thresholds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 64])
@pytest.mark.parametrize("scale", [0.05, 1.0, 10.0])
def test_sparsemax_threshold_matches_bisection(k: int, scale: float) -> None:
    z = torch.cat([_logits(6, 300, seed=1, scale=scale, dtype=F64), _ties(300)])
    for temperature in (0.5, 1.0, 3.0):
        tau, size = sparsemax_threshold_fast(z, temperature=temperature, k=k)
        expected = _bisect_tau(temperature * z, 1.0) / temperature
        torch.testing.assert_close(tau, expected, rtol=0, atol=1e-9)
        p = (temperature * (z - tau.unsqueeze(1))).clamp_min(0)
        torch.testing.assert_close(p.sum(1), torch.ones(len(z), dtype=F64))
        assert torch.equal(size, (p > 0).sum(1))


@pytest.mark.parametrize("k", [1, 3, 64])
@pytest.mark.parametrize("scale", [0.05, 1.0, 10.0])
def test_entmax15_threshold_matches_bisection_and_entmax(k: int, scale: float) -> None:
    z = torch.cat([_logits(6, 300, seed=2, scale=scale, dtype=F64), _ties(300)])
    tau, size = entmax15_threshold_fast(z, k=k)
    torch.testing.assert_close(tau / 2, _bisect_tau(z / 2, 2.0), rtol=0, atol=1e-9)
    p = (z / 2 - tau.unsqueeze(1) / 2).clamp_min(0) ** 2
    torch.testing.assert_close(p, entmax.entmax15(z, dim=-1), rtol=0, atol=1e-9)
    assert torch.equal(size, (p > 0).sum(1))


def test_fp32_threshold_of_bf16_input() -> None:
    z = _logits(8, 5000, seed=4, dtype=torch.bfloat16)
    tau, _ = sparsemax_threshold_fast(z)
    assert tau.dtype == torch.float32
    torch.testing.assert_close(tau.double(), _bisect_tau(z.double(), 1.0), rtol=0, atol=1e-5)


def test_support_bounds_are_tight() -> None:
    # sparsemax: support within {z > max - 1}; entmax15 (entmax scaling): within {z > max - 2}.
    d = 1e-3
    for gap, fn, tau_fn in ((1.0, entmax.sparsemax, sparsemax_threshold_fast), (2.0, entmax.entmax15, None)):
        inside = torch.tensor([[0.0, -gap + d]], dtype=F64)
        outside = torch.tensor([[0.0, -gap - d]], dtype=F64)
        assert int((fn(inside, dim=-1) > 0).sum()) == 2
        assert int((fn(outside, dim=-1) > 0).sum()) == 1
        for z in (inside, outside):
            fast = (tau_fn or entmax15_threshold_fast)(z)[1]
            assert int(fast) == int((fn(z, dim=-1) > 0).sum())
    z = _logits(64, 2000, seed=5, scale=0.3, dtype=F64)  # flat rows: wide supports
    zmax = z.amax(1, keepdim=True)
    assert bool(((entmax.sparsemax(z, dim=-1) > 0) <= (z > zmax - 1)).all())
    assert bool(((entmax.entmax15(z, dim=-1) > 0) <= (z > zmax - 2)).all())


# ---- losses against independent references -----------------------------------------------------------


@pytest.fixture(params=[1, 64], ids=["k1-fallback", "k64"])
def topk(request, monkeypatch) -> int:
    monkeypatch.setattr(kernels, "TOPK", request.param)
    return request.param


@pytest.mark.parametrize(
    "name, ref", [("sparsemax", entmax.sparsemax_loss), ("entmax15", entmax.entmax15_loss)]
)
def test_fy_losses_match_entmax(name: str, ref, topk: int) -> None:
    z = torch.cat([_logits(12, 700, seed=6, scale=3.0), _ties(700).float()])
    y = _labels(len(z), 700, seed=7)
    y[3] = -100
    keep = y != -100
    got_loss, got_grad = _value_and_grad(FAST[name], z, y)
    ref_loss, ref_grad = _value_and_grad(lambda a, b: ref(a[keep], b[keep]).mean(), z, y)
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-5, atol=1e-6)
    total, _ = _value_and_grad(FAST[name], z, y, reduction="sum")
    torch.testing.assert_close(total, ref_loss * int(keep.sum()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        {"alpha": 0.25},
        {"alpha": 2.0, "clamp": None, "temperature": 1.5},
        {"alpha": 1.0, "clamp": 0.3, "temperature": 0.5},  # many tokens at the cap: zero penalty gradient
        {"alpha": 0.0},
    ],
)
@pytest.mark.parametrize("adaptive", [False, True])
def test_ts2_matches_reference(kw: dict, adaptive: bool, topk: int) -> None:
    z = torch.cat([_logits(16, 500, seed=8, scale=3.0), _ties(500).float()])
    y = _labels(len(z), 500, seed=9)
    y[:3] = z[:3].argmax(1)  # some labels inside the support
    y[5] = -100
    keep = y != -100
    for reduction in ("mean", "sum"):
        got_loss, got_grad = _value_and_grad(ts2_loss, z, y, reduction=reduction, adaptive=adaptive, **kw)
        ref_loss, ref_grad = _value_and_grad(
            lambda a, b, r=reduction: _ts2_reference(a[keep], b[keep], adaptive=adaptive, reduction=r, **kw),
            z,
            y,
        )
        torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.6])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ce_and_label_smoothing_match_torch(epsilon: float, reduction: str) -> None:
    z, y = _logits(20, 300, seed=10, scale=4.0), _labels(20, 300, seed=11)
    y[[2, 3, 9]] = -100
    ref = _value_and_grad(F.cross_entropy, z, y, label_smoothing=epsilon, reduction=reduction)
    for got in (
        _value_and_grad(label_smoothing_loss, z, y, epsilon=epsilon, reduction=reduction),
        *([_value_and_grad(cross_entropy_loss, z, y, reduction=reduction)] if epsilon == 0 else []),
    ):
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"beta": 1.3, "h": "linear"}, {"beta": 0.4, "h": "logsigmoid"}])
def test_gem_matches_reference(kw: dict) -> None:
    z, y = _logits(20, 400, seed=12, scale=3.0), _labels(20, 400, seed=13)
    got = _value_and_grad(gem_loss, z, y, **kw)
    ref = _value_and_grad(_gem_reference, z, y, **kw)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-6)
    if kw.get("h") == "linear":  # gradient = softmax(z / beta) - e_y
        expected = (torch.softmax(z / kw["beta"], -1) - F.one_hot(y, 400)) / 20
        torch.testing.assert_close(got[1], expected, rtol=1e-5, atol=1e-6)


HP = {"ce_ls": {"epsilon": 0.2}, "gem": {"beta": 0.5}, "ts2": {"alpha": 0.7, "temperature": 1.3}}


@pytest.mark.parametrize("name, kw", CASES, ids=CASE_IDS)
def test_matches_project_reference_losses(name: str, kw: dict) -> None:
    """Same value and gradient as the loss's own reference (`ts2.losses.reference`)."""
    z, y = _logits(24, 600, seed=14, scale=3.0), _labels(24, 600, seed=15)
    y[[1, 7]] = -100
    loss = LOSSES[name](**{**HP.get(name, {}), **kw})
    got = _value_and_grad(loss, z, y)
    ref = _value_and_grad(loss.reference, z, y)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("ce", {}),
        ("ce_ls", {"epsilon": 0.3}),
        ("sparsemax", {}),
        ("entmax15", {}),
        ("ts2", {"alpha": 0.8, "clamp": None, "temperature": 1.7}),
        ("ts2", {"alpha": 0.8, "clamp": 0.2}),
    ],
)
def test_gradcheck_float64(name: str, kw: dict) -> None:
    """The closed-form gradient is the derivative of the value (GEM and ts2_adaptive detach weights)."""
    z = _logits(4, 9, seed=16, scale=1.5, dtype=F64).requires_grad_()
    y = torch.tensor([0, 3, -100, 8])
    loss = LOSSES[name](**kw)
    assert torch.autograd.gradcheck(lambda a: loss(a, y), (z,))


# ---- corner cases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kw", CASES, ids=CASE_IDS)
def test_corner_cases(name: str, kw: dict) -> None:
    fn = LOSSES[name](**kw)
    # every token ignored: 0 and a zero gradient
    z = _logits(3, 10, seed=17)
    loss, grad = _value_and_grad(fn, z, torch.full((3,), -100))
    assert float(loss) == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    cases = [
        (torch.tensor([[1e4, -1e4, 0.0, 1e4]]), torch.tensor([1])),  # huge logits, a tie at the top
        (torch.full((2, 6), 0.3), torch.tensor([0, 5])),  # all equal
        (torch.tensor([[2.0]]), torch.tensor([0])),  # V = 1
        (torch.tensor([[0.0, 5.0], [1.0, 1.0]]), torch.tensor([0, 1])),  # V = 2
        (torch.tensor([[-INF, 1.0, 0.5, -INF, 0.7]]), torch.tensor([2])),  # masked vocabulary
    ]
    for z, y in cases:
        loss, grad = _value_and_grad(fn, z, y)
        assert torch.isfinite(loss) and bool(torch.isfinite(grad).all()), (name, z)
        if name != "gem":
            assert float(loss) >= -1e-6
        if name not in ("gem",):  # the gradient of each row sums to zero (softmax/sparse maps sum to 1)
            torch.testing.assert_close(grad.sum(1), torch.zeros(len(z)), rtol=0, atol=1e-5)
    loss, _ = _value_and_grad(fn, torch.tensor([[2.0]]), torch.tensor([0]))
    assert abs(float(loss)) < 1e-6  # one class: nothing to learn


@pytest.mark.parametrize("name", ["ce", "sparsemax", "entmax15", "ts2", "gem"])
def test_bf16_input_is_computed_in_fp32(name: str) -> None:
    z, y = _logits(10, 3000, seed=18, dtype=torch.bfloat16), _labels(10, 3000, seed=19)
    loss, grad = _value_and_grad(LOSSES[name](), z, y)
    ref_loss, ref_grad = _value_and_grad(LOSSES[name](), z.float(), y)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad.bfloat16())


@pytest.mark.parametrize("name, kw", CASES, ids=CASE_IDS)
def test_blocks_no_grad_and_upstream_gradient(name: str, kw: dict, monkeypatch) -> None:
    fn = LOSSES[name](**kw)
    z, y = _logits(40, 257, seed=20, scale=3.0), _labels(40, 257, seed=21)
    y[10:14] = -100
    whole = _value_and_grad(fn, z, y)
    monkeypatch.setattr(kernels, "BLOCK_BYTES_CPU", 3 * 4 * 257)  # 3 rows a block: runs of rows as slices
    assert all(isinstance(b, slice) for b in kernels.row_blocks(y, -100, 3))
    torch.testing.assert_close(_value_and_grad(fn, z, y), whole, rtol=1e-6, atol=1e-7)
    y2 = y.clone()
    y2[::2] = -100  # runs of one row, blocks of 10 rows: gathered blocks
    assert not any(isinstance(b, slice) for b in kernels.row_blocks(y2, -100, 10))
    monkeypatch.setattr(kernels, "BLOCK_BYTES_CPU", 1 << 28)
    ref = _value_and_grad(fn, z, y2)
    monkeypatch.setattr(kernels, "BLOCK_BYTES_CPU", 10 * 4 * 257)
    torch.testing.assert_close(_value_and_grad(fn, z, y2), ref, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(fn(z, y), whole[0], rtol=1e-6, atol=1e-7)
    z3 = z.clone().requires_grad_()
    (3.0 * fn(z3, y)).backward()
    torch.testing.assert_close(z3.grad, 3.0 * whole[1])


def test_bad_arguments() -> None:
    z, y = _logits(2, 5, seed=22), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="beta"):
        ts2_loss(z, y, beta=0.3)
    with pytest.raises(ValueError, match="temperature"):
        ts2_loss(z, y, temperature=0.0)
    with pytest.raises(ValueError, match="label 5 is out of range"):
        cross_entropy_loss(z, torch.tensor([0, 5]))


def test_losses_are_values_with_their_settings() -> None:
    """Frozen dataclasses: equal settings compare equal, hash alike and print their settings (what a
    config's ``_target_`` builds and what the objective compares with CE)."""
    assert TS2Loss() == TS2Loss(alpha=0.25) != TS2Loss(alpha=0.5)
    assert hash(GEMLoss()) == hash(GEMLoss(beta=0.7)) and CrossEntropyLoss() != LabelSmoothingLoss(
        epsilon=0.0
    )
    assert repr(TS2Loss(clamp=None)) == "TS2Loss(alpha=0.25, clamp=None, temperature=1.0, adaptive=False)"
    with pytest.raises(AttributeError):
        TS2Loss().alpha = 1.0  # type: ignore[misc]
