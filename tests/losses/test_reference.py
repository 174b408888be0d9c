"""Tests of the losses of `ts2.losses`: the references (`ts2.losses.reference`) against the `entmax` package,
torch, hand-computed cases and identities; and properties every loss of `LOSSES` must have, checked on both
its reference and its fast exact kernel."""

from __future__ import annotations

import math

import entmax
import pytest
import torch
import torch.nn.functional as F

import ts2.losses
import ts2.losses.reference
from ts2.losses import LOSSES, GEMLoss, LabelSmoothingLoss, TS2Loss, entmax15, sparsemax, sparsemax_threshold
from ts2.losses.reference import (
    cross_entropy_loss,
    entmax15_loss,
    gem_loss,
    label_smoothing_loss,
    sparsemax_loss,
    ts2_loss,
)

F64 = torch.float64
INF = math.inf
# Every loss of LOSSES at its defaults (a new loss file is covered at once), plus other settings.
CASES = [(loss_id, {}) for loss_id in LOSSES] + [
    ("gem", {"beta": 0.7, "h": "linear"}),
    ("ts2", {"alpha": 2.0, "clamp": None, "temperature": 1.5}),
    ("ts2", {"alpha": 0.25, "adaptive": True}),
]
CASE_IDS = [f"{name}-{'-'.join(str(v) for v in kw.values())}" if kw else name for name, kw in CASES]
# Losses whose gradient is the true derivative of their value (GEM and adaptive TS² use detached weights).
TRUE_GRADIENT = [c for c in CASES if c[0] != "gem" and not c[1].get("adaptive")]
NONNEGATIVE = [c for c in CASES if c[0] != "gem"]  # GEM's surrogate value can be negative
IMPLS = ["reference", "fast"]


def _fn(name: str, impl: str, **kw):
    """The loss `name` with hyperparameters `kw`: its reference or its fast exact kernel."""
    loss = LOSSES[name](**kw)
    return loss.reference if impl == "reference" else loss


def _logits(n: int, v: int, *, seed: int, scale: float = 2.0, dtype: torch.dtype = F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, v, generator=g, dtype=F64)).to(dtype)


def _labels(n: int, v: int, *, seed: int, low: int = 0) -> torch.Tensor:
    return torch.randint(low, v, (n,), generator=torch.Generator().manual_seed(seed))


def _value_and_grad(fn, z: torch.Tensor, y: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().clone().requires_grad_()
    loss = fn(z, y, **kw)
    loss.backward()
    return loss.detach(), z.grad


def _per_row(fn, z: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
    return torch.stack([fn(z[i : i + 1], y[i : i + 1], reduction="sum", **kw) for i in range(len(y))])


def _with_ties_and_masks(z: torch.Tensor) -> torch.Tensor:
    """Rows 0-1 get exact ties at the top and elsewhere; rows 2-3 get -inf (masked) entries."""
    z = z.clone()
    z[0, 1] = z[0, 2] = z[0].max() + 0.3
    z[1, :] = 0.5
    z[2, :3] = -INF
    z[3, 1::2] = -INF
    return z


# ---------------------------------------------------------------- sparsemax / entmax15 vs the package


def test_sparsemax_hand_computed() -> None:
    # sorted 0.5, 0, -2: k* = 2, tau = (0.5 + 0 - 1) / 2 = -0.25.
    p = sparsemax(torch.tensor([-2.0, 0.0, 0.5]))
    assert torch.equal(p, torch.tensor([0.0, 0.25, 0.75]))
    tau, size = sparsemax_threshold(torch.tensor([[-2.0, 0.0, 0.5]]))
    assert tau.item() == -0.25 and size.item() == 2


@pytest.mark.parametrize(("ours", "theirs"), [(sparsemax, entmax.sparsemax), (entmax15, entmax.entmax15)])
def test_probs_match_entmax_package(ours, theirs) -> None:
    z = _with_ties_and_masks(_logits(16, 11, seed=0))
    assert torch.allclose(ours(z), theirs(z, dim=-1), atol=1e-6, rtol=0)
    zt = z.T.contiguous()  # dim != -1
    assert torch.allclose(ours(zt, dim=0), theirs(zt, dim=0), atol=1e-6, rtol=0)
    # Backward against the package's own closed-form Jacobian.
    z = _logits(6, 9, seed=1)
    g = _logits(6, 9, seed=2)
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    (ours(a) * g).sum().backward()
    (theirs(b, dim=-1) * g).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-9)


@pytest.mark.parametrize("fn", [sparsemax, entmax15])
def test_activation_gradcheck(fn) -> None:
    z = _logits(3, 6, seed=3, scale=0.7).requires_grad_()
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-6)


def test_sparsemax_threshold_definition() -> None:
    z = _with_ties_and_masks(_logits(16, 11, seed=4))
    tau, size = sparsemax_threshold(z)
    assert torch.allclose(torch.clamp(z - tau[:, None], min=0).sum(-1), torch.ones(16, dtype=F64))
    assert torch.equal(size, (entmax.sparsemax(z, dim=-1) > 0).sum(-1))
    assert tau.dtype == F64 and sparsemax_threshold(z.float())[0].dtype == torch.float32
    assert sparsemax_threshold(z.half())[0].dtype == torch.float32  # fp32 inside


@pytest.mark.parametrize(
    ("ours", "theirs"), [(sparsemax_loss, entmax.sparsemax_loss), (entmax15_loss, entmax.entmax15_loss)]
)
def test_fy_losses_match_entmax_package(ours, theirs) -> None:
    z = _with_ties_and_masks(_logits(16, 11, seed=5))
    y = _labels(16, 11, seed=6, low=3)  # labels on finite logits (rows 2-3 mask columns < 3 and odd ones)
    y[3] = 4
    # The package's losses give NaN for -inf (0 * -inf); a very negative finite value is the same problem.
    z_ref = torch.where(torch.isinf(z), z[torch.isfinite(z)].min() - 100.0, z)
    ref = theirs(z_ref.clone().requires_grad_(), y)
    assert torch.allclose(_per_row(ours, z, y), ref.detach(), atol=1e-6, rtol=0)
    loss, grad = _value_and_grad(ours, z, y, reduction="sum")
    z_ref.requires_grad_()
    theirs(z_ref, y).sum().backward()
    assert torch.allclose(loss, ref.sum().detach(), atol=1e-6)
    assert torch.allclose(grad, z_ref.grad, atol=1e-6)


@pytest.mark.parametrize("fn", [sparsemax_loss, entmax15_loss, ts2_loss])
def test_large_logits_lose_no_precision(fn) -> None:
    # Multiples of 1/64 stay exact in fp32 after adding 1e4, so any error would come from the loss itself
    # (1/2 sum z^2 - tau^2 at 1e8 would lose about 10 in fp32).
    z = torch.round(_logits(8, 50, seed=7, dtype=torch.float32) * 64) / 64
    y = _labels(8, 50, seed=8)
    assert torch.allclose(fn(z + 1e4, y), fn(z.double(), y).float(), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(("name", "kw"), TRUE_GRADIENT, ids=[f"{n}-{kw}" for n, kw in TRUE_GRADIENT])
def test_gradcheck(name: str, kw: dict) -> None:
    z = _logits(3, 6, seed=9, scale=0.8).requires_grad_()
    y = torch.tensor([0, -100, 5])
    fn = _fn(name, "reference", **kw)
    assert torch.autograd.gradcheck(lambda x: fn(x, y), (z,), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------- TS²


def _ts2_reference(z: torch.Tensor, y: torch.Tensor, alpha: float, t: float, adaptive: bool):
    """Per-token values and the summed gradient, built from entmax's sparsemax and torch's softmax."""
    p = entmax.sparsemax(t * z, dim=-1)
    head = (p > 0) | F.one_hot(y, z.shape[1]).bool()
    penalty = torch.logsumexp(z, -1) - torch.logsumexp(z.masked_fill(~head, -INF), -1)
    scale = 1 - p.gather(1, y[:, None]).squeeze(1) if adaptive else torch.ones_like(penalty)
    value = entmax.sparsemax_loss(t * z, y) + alpha * scale * penalty
    grad_pen = torch.softmax(z, -1) - torch.softmax(z.masked_fill(~head, -INF), -1)
    grad = t * (p - F.one_hot(y, z.shape[1])) + alpha * scale[:, None] * grad_pen
    return value, grad, penalty


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("clamp", [None, 0.99])
def test_ts2_matches_independent_formula(adaptive: bool, temperature: float, clamp: float | None) -> None:
    z = _logits(12, 15, seed=10, scale=1.5)
    y = _labels(12, 15, seed=11)
    alpha = 0.6
    value, grad, penalty = _ts2_reference(z, y, alpha, temperature, adaptive)
    assert penalty.max() < -math.log(0.01) and penalty.min() >= 0  # below the cap: clamp changes nothing
    assert (penalty > 1e-3).sum() > 6  # and the penalty is really exercised
    kw = {"alpha": alpha, "clamp": clamp, "temperature": temperature, "adaptive": adaptive}
    assert torch.allclose(_per_row(ts2_loss, z, y, **kw), value, atol=1e-10)
    loss, g = _value_and_grad(ts2_loss, z, y, reduction="sum", **kw)
    assert torch.allclose(g, grad, atol=1e-10)


def test_ts2_alpha_zero_is_sparsemax_loss() -> None:
    z = _logits(10, 13, seed=12)
    y = _labels(10, 13, seed=13)
    assert torch.equal(ts2_loss(z, y, alpha=0.0), sparsemax_loss(z, y))
    assert torch.equal(ts2_loss(z, y, alpha=0.0, adaptive=True), sparsemax_loss(z, y))


def test_ts2_clamp_caps_the_penalty() -> None:
    # Sparsemax support {0} (z_0 - z_i = 1.5 > 1), softmax tail mass 1000 / (1000 + e^1.5) = 0.9955 > 0.99.
    z = torch.zeros(1, 1001, dtype=F64)
    z[0, 0] = 1.5
    y = torch.tensor([0])
    spm, spm_grad = _value_and_grad(sparsemax_loss, z, y, reduction="sum")
    capped, capped_grad = _value_and_grad(ts2_loss, z, y, reduction="sum", alpha=1.0)
    assert torch.allclose(capped - spm, torch.tensor(-math.log(0.01), dtype=F64), atol=1e-12)
    assert torch.equal(capped_grad, spm_grad)  # zero penalty gradient above the cap
    free, free_grad = _value_and_grad(ts2_loss, z, y, reduction="sum", alpha=1.0, clamp=None)
    uncapped = math.log(1000 + math.exp(1.5)) - 1.5
    assert abs((free - spm).item() - uncapped) < 1e-12 and uncapped > -math.log(0.01)
    expected = torch.softmax(z, -1) - F.one_hot(y, 1001)  # softmax_H = e_0 since H = {0}
    assert torch.allclose(free_grad - spm_grad, expected, atol=1e-12)
    # Another cap: clamp=0.5 caps at ln 2.
    half = ts2_loss(z, y, reduction="sum", alpha=1.0, clamp=0.5)
    assert torch.allclose(half - spm, torch.tensor(math.log(2.0), dtype=F64), atol=1e-12)


# ------------------------------------------------------------------------------ CE, LS, GEM


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_label_smoothing_matches_torch(reduction: str, eps: float) -> None:
    z = _logits(14, 10, seed=14, dtype=torch.float32)
    y = _labels(14, 10, seed=15)
    y[[2, 5, 6]] = -7
    loss, g = _value_and_grad(label_smoothing_loss, z, y, ignore_index=-7, reduction=reduction, epsilon=eps)
    ref, g_ref = _value_and_grad(
        F.cross_entropy, z, y, ignore_index=-7, reduction=reduction, label_smoothing=eps
    )
    assert torch.allclose(loss, ref, atol=1e-6) and torch.allclose(g, g_ref, atol=1e-7)
    ce, g_ce = _value_and_grad(cross_entropy_loss, z, y, ignore_index=-7, reduction=reduction)
    ref, g_ref = _value_and_grad(F.cross_entropy, z, y, ignore_index=-7, reduction=reduction)
    assert torch.allclose(ce, ref, atol=1e-6) and torch.allclose(g_ce, g_ref, atol=1e-7)


def test_gem_linear_gradient_is_tempered_softmax_minus_onehot() -> None:
    z = _logits(9, 12, seed=16)
    y = _labels(9, 12, seed=17)
    for beta in (0.7, 1.0, 2.5):
        _, g = _value_and_grad(gem_loss, z, y, reduction="sum", beta=beta, h="linear")
        assert torch.allclose(g, torch.softmax(z / beta, -1) - F.one_hot(y, 12), atol=1e-12)


@pytest.mark.parametrize("h", ["linear", "logsigmoid"])
def test_gem_matches_log_softmax_formulation(h: str) -> None:
    z = _logits(9, 12, seed=18)
    y = _labels(9, 12, seed=19)
    beta = 0.7
    zr = z.clone().requires_grad_()
    logp = torch.log_softmax(zr, -1)
    q = torch.softmax(z / beta, -1)
    w = torch.sigmoid(0.01 * (z - z.gather(1, y[:, None]))) if h == "logsigmoid" else torch.ones_like(z)
    ref = -(q * w * (logp.gather(1, y[:, None]) - logp)).sum(-1).mean()
    ref.backward()
    loss, g = _value_and_grad(gem_loss, z, y, beta=beta, h=h)
    assert torch.allclose(loss, ref.detach(), atol=1e-12) and torch.allclose(g, zr.grad, atol=1e-12)


# ----------------------------------------------------------------------- properties, all losses


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "kw"), NONNEGATIVE, ids=[f"{n}-{kw}" for n, kw in NONNEGATIVE])
def test_nonnegative(name: str, kw: dict, impl: str) -> None:
    z = _with_ties_and_masks(_logits(64, 20, seed=20, scale=3.0))
    y = _labels(64, 20, seed=21, low=3)
    y[3] = 4
    per_row = _per_row(_fn(name, impl, **kw), z, y)
    assert per_row.min() >= -1e-12


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_is_zero_with_zero_grad(name: str, kw: dict, reduction: str, impl: str) -> None:
    z = _logits(5, 7, seed=22)
    z[1, 2] = -INF  # masked logits must not turn the zero into NaN
    for logits, labels in ((z, torch.full((5,), -100)), (z[:0], torch.zeros(0, dtype=torch.long))):
        loss, g = _value_and_grad(_fn(name, impl, **kw), logits, labels, reduction=reduction)
        assert loss.item() == 0.0 and loss.dtype == F64
        assert torch.equal(g, torch.zeros_like(logits))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_ignore_index_equals_dropping_rows_and_sum_is_mean_times_count(
    name: str, kw: dict, impl: str
) -> None:
    z = _logits(10, 8, seed=23)
    y = _labels(10, 8, seed=24)
    ignored = torch.tensor([1, 4, 5, 9])
    y[ignored] = -1
    z[ignored] = torch.nan  # whatever sits in ignored rows must reach neither value nor gradient
    kept = torch.tensor([0, 2, 3, 6, 7, 8])
    fn = _fn(name, impl, **kw)
    for reduction in ("mean", "sum"):
        loss, g = _value_and_grad(fn, z, y, ignore_index=-1, reduction=reduction)
        ref, g_ref = _value_and_grad(fn, z[kept], y[kept], reduction=reduction)
        assert torch.allclose(loss, ref, atol=1e-12, rtol=0)
        assert torch.allclose(g[kept], g_ref, atol=1e-12) and torch.equal(
            g[ignored], torch.zeros(4, 8, dtype=F64)
        )
    mean = fn(z, y, ignore_index=-1, reduction="mean")
    total = fn(z, y, ignore_index=-1, reduction="sum")
    assert torch.allclose(total, mean * len(kept), atol=1e-12, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_masked_vocab_equals_dropping_columns(name: str, kw: dict, impl: str) -> None:
    z = _logits(6, 9, seed=25)
    y = torch.tensor([0, 2, 3, 5, 6, 8])
    masked, kept = torch.tensor([1, 4, 7]), torch.tensor([0, 2, 3, 5, 6, 8])
    z[:, masked] = -INF
    loss, g = _value_and_grad(_fn(name, impl, **kw), z, y)
    ref, g_ref = _value_and_grad(_fn(name, impl, **kw), z[:, kept], torch.arange(6))
    assert torch.allclose(loss, ref, atol=1e-12, rtol=0)
    assert torch.allclose(g[:, kept], g_ref, atol=1e-12) and torch.equal(
        g[:, masked], torch.zeros(6, 3, dtype=F64)
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_is_computed_in_fp32(name: str, kw: dict, dtype: torch.dtype, impl: str) -> None:
    z = _logits(16, 30, seed=26, dtype=torch.float32)
    y = _labels(16, 30, seed=27)
    low, g = _value_and_grad(_fn(name, impl, **kw), z.to(dtype), y)
    assert low.dtype == torch.float32 and g.dtype == dtype and torch.isfinite(g).all()
    # The same maths as fp32 on the rounded input, and close to the fp32 loss on the unrounded input.
    same, g_same = _value_and_grad(_fn(name, impl, **kw), z.to(dtype).float(), y)
    assert torch.allclose(low, same, atol=1e-6, rtol=1e-6)
    assert torch.allclose(g.float(), g_same.to(dtype).float(), atol=1e-6)
    assert torch.allclose(low, _fn(name, impl, **kw)(z, y), atol=3e-2, rtol=3e-2)
    assert _fn(name, impl, **kw)(z.double(), y).dtype == F64


def _hard_inputs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    big = 1e4 * torch.sign(_logits(6, 10, seed=28, dtype=torch.float32))
    big[0, 3] = big[1, 0] = -1e4
    ties = torch.zeros(4, 10)
    ties[2, :5] = 3.0
    ties[3, ::2] = -1e4
    masked = _logits(4, 10, seed=29, dtype=torch.float32)
    masked[:, ::2] = -INF
    masked[0, 1:8] = -INF  # a single finite logit: the label's
    return [
        ("pm1e4", big, torch.tensor([3, 0, 1, 2, 9, 4])),
        ("ties", ties, torch.tensor([0, 9, 7, 3])),
        ("V=1", _logits(3, 1, seed=30, dtype=torch.float32), torch.zeros(3, dtype=torch.long)),
        (
            "V=2",
            torch.tensor([[0.0, 0.0], [1e4, -1e4], [-1e4, 1e4], [0.3, -0.2]]),
            torch.tensor([0, 1, 0, 1]),
        ),
        ("masked", masked, torch.tensor([9, 3, 5, 1])),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_no_nan_or_inf_on_hard_inputs(name: str, kw: dict, dtype: torch.dtype, impl: str) -> None:
    for case, z, y in _hard_inputs():
        for reduction in ("mean", "sum"):
            loss, g = _value_and_grad(_fn(name, impl, **kw), z.to(dtype), y, reduction=reduction)
            assert torch.isfinite(loss), (case, reduction)
            assert torch.isfinite(g).all(), (case, reduction)


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_bad_shapes_labels_and_reduction(name: str, kw: dict, impl: str) -> None:
    fn = _fn(name, impl, **kw)
    z, y = _logits(4, 5, seed=31), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="reduction"):
        fn(z, y, reduction="none")
    with pytest.raises(ValueError, match="2-D"):
        fn(z[None], y)
    with pytest.raises(ValueError, match="1-D"):
        fn(z, y[:, None])
    with pytest.raises(ValueError, match="disagree on N"):
        fn(z, y[:3])
    with pytest.raises(ValueError, match="label 5 is out of range"):
        fn(z, torch.tensor([0, 5, 1, -100]))
    with pytest.raises(ValueError, match="label -3 is out of range"):
        fn(z, torch.tensor([0, -3, 1, -100]))
    with pytest.raises(TypeError, match="floating-point"):
        fn(torch.ones(4, 5, dtype=torch.long), y)
    with pytest.raises(TypeError, match="integer"):
        fn(z, y.double())


@pytest.mark.parametrize(
    ("cls", "kw", "message"),
    [
        (TS2Loss, {"alpha": -0.1}, "ts2: alpha must be a finite number >= 0, got -0.1"),
        (TS2Loss, {"alpha": -1.0, "adaptive": True}, "alpha must be a finite number >= 0"),
        (TS2Loss, {"alpha": math.nan}, "alpha must be a finite number >= 0, got nan"),
        (TS2Loss, {"alpha": math.inf}, "alpha must be a finite number >= 0, got inf"),
        (TS2Loss, {"clamp": 1.0}, "clamp must be in"),
        (TS2Loss, {"clamp": 0.0}, "clamp must be in"),
        (TS2Loss, {"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        (TS2Loss, {"temperature": math.inf}, "temperature must be a finite number > 0, got inf"),
        (GEMLoss, {"h": "tanh"}, r"gem: h must be one of \('linear', 'logsigmoid'\), got 'tanh'"),
        (GEMLoss, {"beta": 0.0}, "beta must be a finite number > 0"),
        (GEMLoss, {"beta": math.inf}, "gem: beta must be a finite number > 0, got inf"),
        (LabelSmoothingLoss, {"epsilon": 1.0}, "ce_ls: epsilon must be in"),
        (LabelSmoothingLoss, {"epsilon": -0.1}, "epsilon must be in"),
        (LabelSmoothingLoss, {"epsilon": math.nan}, r"ce_ls: epsilon must be in \[0.0, 1.0\), got nan"),
    ],
)
def test_bad_hyperparameters(cls, kw: dict, message: str) -> None:
    """Checked on construction, so the fast kernel, the reference and the fused path all refuse them."""
    with pytest.raises(ValueError, match=message):
        cls(**kw)
    fast = {TS2Loss: "ts2_loss", GEMLoss: "gem_loss", LabelSmoothingLoss: "label_smoothing_loss"}[cls]
    for fn in (getattr(ts2.losses, fast), getattr(ts2.losses.reference, fast)):
        with pytest.raises(ValueError, match=message):
            fn(_logits(2, 3, seed=32), torch.tensor([0, 1]), **kw)


@pytest.mark.parametrize(
    ("cls", "kw", "message"),
    [
        (TS2Loss, {"alpha": True}, "ts2: alpha must be a float, got bool True"),
        (TS2Loss, {"alpha": "0.5"}, "alpha must be a float, got str"),
        (TS2Loss, {"clamp": True}, "clamp must be a float"),
        (TS2Loss, {"adaptive": 1}, "adaptive must be a bool, got int"),
        (GEMLoss, {"beta": None}, "beta must be a float, got NoneType"),
        (LabelSmoothingLoss, {"epsilon": False}, "epsilon must be a float, got bool"),
    ],
)
def test_wrongly_typed_hyperparameters(cls, kw: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        cls(**kw)


def test_unknown_hyperparameter_is_refused() -> None:
    with pytest.raises(TypeError, match="beta"):
        ts2.losses.ts2_loss(_logits(2, 3, seed=33), torch.tensor([0, 1]), beta=0.3)


def test_registry_ids() -> None:
    assert list(LOSSES) == ["ce", "ce_ls", "entmax15", "gem", "sparsemax", "ts2"]  # one per file, by name
    assert all(cls.id == loss_id for loss_id, cls in LOSSES.items())
    defaults = {loss_id: cls().hyperparameters for loss_id, cls in LOSSES.items()}
    assert defaults == {  # the documented defaults (PAPER.md §1-2), written once, in the dataclasses
        "ce": {},
        "ce_ls": {"epsilon": 0.1},
        "gem": {"beta": 0.7, "h": "logsigmoid"},
        "sparsemax": {},
        "entmax15": {},
        "ts2": {"alpha": 0.25, "clamp": 0.99, "temperature": 1.0, "adaptive": False},
    }
