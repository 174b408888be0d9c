"""`ts2.objective`: the configured loss object reaches both training paths (unfused and the fused LM head),
``_target_`` included, with the global-token normalisation and the logged diagnostics (token CE, softmax
entropy, sparsemax support size: `pop_logs`), computed only on logging steps and, when fused, chunk by
chunk without the N x V logits."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ts2.losses import CrossEntropyLoss, TS2Loss, cross_entropy_loss, ts2_loss
from ts2.objective import (
    STAT_KEYS,
    CausalLMObjective,
    HeadWeight,
    ObjectiveSettings,
    fused_token_stats,
    make_loss,
    token_stats,
)


class TripledCE(CrossEntropyLoss):
    """A loss from outside `ts2.losses`, named by a config's ``_target_``: 3 x cross-entropy."""

    def rows(self, z, y, weight, out, workspace):
        return 3.0 * super().rows(z, y, 3.0 * weight, out, workspace)


def _batch(seed: int = 0, b: int = 3, t: int = 7, d: int = 8, v: int = 40):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=g)
    head = nn.Linear(d, v, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, d, generator=g))
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :3] = -100  # prompt tokens
    labels[2, 5:] = -100
    return hidden, head, labels


def _fused_out(hidden, head):
    """What a model inside `ts2.objective.fused_head` returns."""
    return {"hidden": hidden, "head_weight": HeadWeight(head.weight)}


def _expected(loss_fn, hidden, head, labels):
    """Shifted next-token loss summed over response tokens / their count, from the plain functions."""
    logits = head(hidden)[:, :-1].reshape(-1, head.weight.shape[0])
    targets = labels[:, 1:].reshape(-1)
    return loss_fn(logits, targets, reduction="sum") / targets.ne(-100).sum()


def test_make_loss_builds_the_target_and_the_settings() -> None:
    cfg = OmegaConf.create(
        {
            "_target_": "ts2.losses.TS2Loss",
            "id": "ts2",
            "alpha": 0.5,
            "clamp": None,
            "fused": True,
            "chunk_size": 4,
        }
    )
    loss, settings = make_loss(cfg)
    assert loss == TS2Loss(alpha=0.5, clamp=None)
    assert settings == ObjectiveSettings(id="ts2", fused=True, chunk_size=4)


def test_make_loss_refuses_a_target_that_is_not_a_token_loss() -> None:
    cfg = OmegaConf.create({"_target_": "torch.nn.CrossEntropyLoss", "id": "torch_ce"})
    with pytest.raises(TypeError, match=r"loss=torch_ce\).*not a ts2.losses.TokenLoss"):
        make_loss(cfg)


@pytest.mark.parametrize("fused", [False, True])
def test_the_configured_target_is_what_trains(fused: bool) -> None:
    """``loss.fused=true`` used to pick the loss by id and ignore ``_target_``; now both paths run it."""
    loss, _ = make_loss(
        OmegaConf.create({"_target_": f"{__name__}.TripledCE", "id": "tripled", "fused": fused})
    )
    hidden, head, labels = _batch()
    if fused:
        objective = CausalLMObjective(loss, fused=True, chunk_size=5)
        value = objective(_fused_out(hidden, head), labels)
    else:
        objective = CausalLMObjective(loss)
        value = objective({"logits": head(hidden)}, labels)
    expected = 3.0 * _expected(cross_entropy_loss, hidden, head, labels)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    # The logged CE is the plain token CE, whatever the training loss.
    assert objective.pop_logs()["ce"] == pytest.approx(float(expected.detach()) / 3.0, rel=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_ts2_objective_value_gradient_and_logged_ce(fused: bool) -> None:
    hidden, head, labels = _batch(seed=1)
    loss = TS2Loss(alpha=0.5, clamp=None)
    h = hidden.clone().requires_grad_()
    if fused:
        objective = CausalLMObjective(loss, fused=True, chunk_size=4)
        value = objective(_fused_out(h, head), labels, num_items_in_batch=torch.tensor(10))
    else:
        objective = CausalLMObjective(loss)
        value = objective({"logits": head(h)}, labels, num_items_in_batch=torch.tensor(10))
    value.backward()
    h_ref = hidden.clone().requires_grad_()
    logits = head(h_ref)[:, :-1].reshape(-1, 40)
    ref = ts2_loss(logits, labels[:, 1:].reshape(-1), reduction="sum", alpha=0.5, clamp=None) / 10
    ref.backward()
    torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)
    ce = torch.nn.functional.cross_entropy(logits.detach(), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert objective.pop_logs()["ce"] == pytest.approx(float(ce), rel=1e-5)
    assert objective.pop_logs() == {}  # nothing since the last call
    assert objective.pop_ce() is None


def test_objective_needs_a_loss_object_and_the_matching_model_output() -> None:
    with pytest.raises(TypeError, match="TokenLoss"):
        CausalLMObjective(cross_entropy_loss)
    hidden, head, labels = _batch()
    with pytest.raises(ValueError, match=r"needs the model's hidden states.*fused_head"):
        CausalLMObjective(CrossEntropyLoss(), fused=True)({"logits": head(hidden)}, labels)
    with pytest.raises(ValueError, match=r"built with fused=False.*loss.fused=true"):
        CausalLMObjective(CrossEntropyLoss())(_fused_out(hidden, head), labels)


def _tiny_lm(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def test_fused_head_patches_the_forward_not_the_modules() -> None:
    """Inside `fused_head` the model returns its last hidden state and its own head weight (read in the
    forward); the loss and every gradient equal the unfused model's; the modules never change, and the
    class's forward (logits) is back afterwards."""
    from ts2.objective import fused_head

    model = _tiny_lm()
    head = model.lm_head
    modules = dict(model.named_modules())
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, :4] = -100
    loss = TS2Loss(alpha=0.5)

    unfused = CausalLMObjective(loss)(model(input_ids=ids), labels)
    grads_ref = torch.autograd.grad(unfused, list(model.parameters()))
    with fused_head(model) as same:
        assert same is model
        out = model(input_ids=ids, num_items_in_batch=torch.tensor(7))  # Trainer may pass it: dropped
        assert set(out) == {"hidden", "head_weight"} and out["head_weight"].weight is head.weight
        assert out["hidden"].shape == (2, 9, 16)
        fused = CausalLMObjective(loss, fused=True, chunk_size=4)(out, labels)
        grads = torch.autograd.grad(fused, list(model.parameters()))
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    assert dict(model.named_modules()) == modules and model.lm_head is head
    assert "forward" not in model.__dict__ and model(input_ids=ids).logits.shape == (2, 9, 50)


def test_fused_head_refuses_heads_it_cannot_fuse() -> None:
    from ts2.objective import fused_head

    model = _tiny_lm()
    model.lm_head = nn.Linear(16, 50, bias=True)
    with pytest.raises(ValueError, match="bias-free LM heads only"), fused_head(model):
        pass
    assert "forward" not in model.__dict__


# --------------------------------------------------------------------------------------------------------
# Logged diagnostics: softmax entropy and sparsemax support size (PAPER.md §1), beside the token CE


def _sparsemax_support_by_bisection(row: list[float]) -> int:
    """|S| of sparsemax(z) from its definition: tau solves sum_i max(z_i - tau, 0) = 1 (bisection on
    [max z - 1, max z], where the sum falls from >= 1 to 0); S = {i : z_i > tau}."""
    lo, hi = max(row) - 1.0, max(row)
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(max(z - mid, 0.0) for z in row) > 1.0:
            lo = mid
        else:
            hi = mid
    tau = (lo + hi) / 2
    return sum(z > tau + 1e-9 for z in row)


def _entropy(row: list[float]) -> float:
    m = max(row)
    e = [math.exp(z - m) for z in row]
    p = [x / sum(e) for x in e]
    return -sum(q * math.log(q) for q in p if q > 0)


# Hand-built rows with known sparsemax support (k* = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}, PAPER.md §1):
# [2, 1.5, -5, -5]: k = 2 holds (1 + 3 > 3.5), k = 3 fails -> tau = (3.5 - 1) / 2 = 1.25, |S| = 2;
# [3, 0, 0, 0]: k = 2 fails (1 > 3) -> tau = 2, |S| = 1; four equal logits: |S| = 4 (entropy log 4);
# [1, 0.5, 0.2, -3]: k = 3 fails (1 + 0.6 > 1.7 is false) -> tau = 0.25, |S| = 2; [1, 0, -inf, -inf]: |S| = 1,
# entropy of (e, 1) / (e + 1).
HAND_ROWS = [
    ([2.0, 1.5, -5.0, -5.0], 2),
    ([3.0, 0.0, 0.0, 0.0], 1),
    ([0.7, 0.7, 0.7, 0.7], 4),
    ([1.0, 0.5, 0.2, -3.0], 2),
    ([1.0, 0.0, -math.inf, -math.inf], 1),  # a masked vocabulary: k = 2 fails (1 > 1 is false) -> tau = 0
]


def test_token_stats_on_hand_built_rows() -> None:
    logits = torch.tensor([r for r, _ in HAND_ROWS])
    labels = torch.tensor([0, 1, 2, 3, 1])
    sums, n = token_stats(logits, labels)
    assert n == 5
    assert [_sparsemax_support_by_bisection(r) for r, _ in HAND_ROWS] == [k for _, k in HAND_ROWS]
    assert float(sums[2]) == sum(k for _, k in HAND_ROWS)
    assert float(sums[1]) == pytest.approx(sum(_entropy(r) for r, _ in HAND_ROWS), rel=1e-6)
    assert _entropy(HAND_ROWS[2][0]) == pytest.approx(math.log(4))
    q = math.e / (math.e + 1)
    assert _entropy(HAND_ROWS[4][0]) == pytest.approx(-q * math.log(q) - (1 - q) * math.log(1 - q))
    ce = sum(
        math.log(sum(math.exp(z) for z in r)) - r[y]
        for (r, _), y in zip(HAND_ROWS, [0, 1, 2, 3, 1], strict=True)
    )
    assert float(sums[0]) == pytest.approx(ce, rel=1e-6)
    # Row by row, ignored labels drop a row from every sum and from the count.
    for i, (row, k) in enumerate(HAND_ROWS):
        only = torch.full((len(HAND_ROWS),), -100)
        only[i] = 0
        s, m = token_stats(logits, only, chunk_size=1)
        assert m == 1 and int(s[2]) == k and float(s[1]) == pytest.approx(_entropy(row), rel=1e-6)


def test_token_stats_match_direct_computations_on_random_logits() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 30, generator=g, dtype=torch.float64) * 2.0
    logits[7] = 0.01 * torch.randn(30, generator=g, dtype=torch.float64)  # nearly flat: support ~ 30
    labels = torch.randint(0, 30, (50,), generator=g)
    labels[::4] = -100
    kept = labels != -100
    sums, n = token_stats(logits, labels, chunk_size=8)
    z, y = logits[kept], labels[kept]
    assert n == int(kept.sum())
    ce = torch.nn.functional.cross_entropy(z, y, reduction="sum")
    ent = torch.distributions.Categorical(logits=z).entropy().sum()
    support = sum(_sparsemax_support_by_bisection(r) for r in z.tolist())
    torch.testing.assert_close(sums[0], ce)
    torch.testing.assert_close(sums[1], ent)
    assert int(sums[2]) == support
    assert support > 50  # the flat row is in, so the check covers a large support too


def test_support_beyond_the_partial_selection_is_exact() -> None:
    """A row whose support exceeds the kernels' first top-k selection (64) is redone, not truncated."""
    v = 300
    z = torch.zeros(2, v)
    z[0] = torch.linspace(0.0, -0.001, v)  # every entry in the support: |S| = 300
    z[1, :100] = 0.5  # 100 tied leaders, then a gap of 0.5 > 1/100: |S| = 100
    sums, _ = token_stats(z, torch.tensor([0, 0]))
    assert [_sparsemax_support_by_bisection(r) for r in z.tolist()] == [300, 100]
    assert int(sums[2]) == 400
    assert float(sums[1]) == pytest.approx(_entropy(z[0].tolist()) + _entropy(z[1].tolist()), rel=1e-6)


def test_fused_stats_equal_unfused_and_never_hold_more_than_a_chunk(monkeypatch) -> None:
    import ts2.objective as objective_module

    hidden, head, labels = _batch(seed=5, b=4, t=9, v=50)
    shapes: list[tuple[int, int]] = []
    real = objective_module._chunk_logits
    monkeypatch.setattr(
        objective_module, "_chunk_logits", lambda x, w: shapes.append((x.shape[0], w.shape[0])) or real(x, w)
    )
    logs = {}
    for fused in (False, True):
        if fused:
            obj = CausalLMObjective(TS2Loss(), fused=True, chunk_size=5)
            obj(_fused_out(hidden, head), labels)
        else:
            obj = CausalLMObjective(TS2Loss())
            obj({"logits": head(hidden)}, labels)
        logs[fused] = obj.pop_logs()
    assert set(logs[True]) == {"ce", "entropy", "support_size"} == set(STAT_KEYS)
    for key in STAT_KEYS:
        assert logs[True][key] == pytest.approx(logs[False][key], rel=1e-5), key
    n_tokens = int(labels[:, 1:].ne(-100).sum())
    assert shapes and max(r for r, _ in shapes) <= 5 and sum(r for r, _ in shapes) == n_tokens
    # and the logged numbers are the direct ones
    logits = head(hidden)[:, :-1].reshape(-1, 50).detach()
    targets = labels[:, 1:].reshape(-1)
    z = logits[targets != -100]
    assert logs[True]["entropy"] == pytest.approx(
        float(torch.distributions.Categorical(logits=z).entropy().mean()), rel=1e-5
    )
    assert logs[True]["support_size"] == pytest.approx(
        sum(_sparsemax_support_by_bisection(r) for r in z.tolist()) / z.shape[0]
    )


@pytest.mark.parametrize("fused", [False, True])
def test_stats_are_computed_only_on_logging_steps(monkeypatch, fused: bool) -> None:
    import ts2.objective as objective_module

    calls = []
    for name in ("token_stats", "fused_token_stats"):
        real = getattr(objective_module, name)
        monkeypatch.setattr(objective_module, name, lambda *a, _r=real, **k: calls.append(1) or _r(*a, **k))
    hidden, head, labels = _batch(seed=2)
    if fused:
        obj = CausalLMObjective(TS2Loss(), fused=True, chunk_size=4)
        inputs = _fused_out(hidden, head)
    else:
        obj = CausalLMObjective(TS2Loss())
        inputs = {"logits": head(hidden)}
    obj.log_ce_now = False
    obj(inputs, labels)
    obj(inputs, labels)
    assert calls == [] and obj.pop_logs() == {}
    obj.log_ce_now = True
    obj(inputs, labels)
    first = obj.pop_logs()
    obj(inputs, labels)
    obj(inputs, labels)  # two batches of one logged step: the means over their tokens, same batch twice
    second = obj.pop_logs()
    assert len(calls) == 3
    assert set(first) == set(STAT_KEYS) and all(first[k] == pytest.approx(second[k]) for k in STAT_KEYS)


def test_stats_refuse_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"token_stats: labels out of range \[0, 3\)"):
        token_stats(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="fused_token_stats: need hidden"):
        fused_token_stats(torch.zeros(2, 4), torch.zeros(3, 5), torch.tensor([0, 1]))


# --------------------------------------------------------------------------------------------------------
# In training: train_log.jsonl and the offline wandb run carry the diagnostics


def complete_wandb_records(path: Path, timeout_s: float = 30.0) -> list:
    """The records of an offline run file once its ``exit`` record is there: ``wandb.finish()`` can return
    before wandb's service process has flushed the file, so poll it (bounded) instead of reading it once."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        records = list(read_wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_wandb_records(path: Path):
    """The protobuf records of an offline run's ``run-<id>.wandb`` file (wandb's LevelDB-style log: a 7-byte
    header ``:W&B`` + magic 0xBEE1 + version, then 32 KiB blocks of chunks, each with a 7-byte header
    crc32 / length / type, FULL=1, FIRST=2, MIDDLE=3, LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts + chunk)
            parts = b""
            yield record
        elif kind in (2, 3):
            parts += chunk
        else:  # zero padding at the end of a block
            pos += (block - pos % block) % block


def test_training_logs_entropy_and_support_to_jsonl_and_offline_wandb(compose, tmp_path, monkeypatch) -> None:
    import ts2.objective as objective_module
    from ts2.train import train

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []
    real = objective_module.token_stats
    monkeypatch.setattr(objective_module, "token_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = compose(
        [
            "method=ts2",
            "debug=cpu",
            "train.max_steps=4",
            "train.logging_steps=2",
            "logger=wandb",
            "name=diag_exp",
            "loss.alpha=0.5",
            "seed=7",
        ]
    )
    train(cfg, tmp_path)
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    logged = [r for r in log if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 4]  # logging_first_step, then every 2 steps
    assert len(calls) == 3  # the diagnostics pass ran on the logged steps only (one batch per step)
    vocab = int(cfg.model.tiny.vocab_size)
    for r in logged:
        assert 0.0 < r["entropy"] <= math.log(vocab) and 1.0 <= r["support_size"] <= vocab and r["ce"] > 0
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history, run_info = [], None
    for rec in complete_wandb_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "run":
            run_info = rec.run
    with_loss = [h for h in history if "train/loss" in h]
    assert len(with_loss) == 3
    for h, r in zip(with_loss, logged, strict=True):
        assert h["train/global_step"] == r["step"]
        for key in STAT_KEYS:
            assert h[f"train/{key}"] == pytest.approx(r[key]), key
    # grouped by experiment, tagged by method, model, alpha and seed
    assert run_info is not None and run_info.run_group == "diag_exp"
    assert {"ts2", "tiny", "alpha=0.5", "seed=7"} <= set(run_info.tags)


def _pop_logs_worker(rank: int, tmp: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=2)
    try:
        hidden, head, labels = _batch(seed=10 + rank, b=3 + rank)  # ranks see different batches and sizes
        obj = CausalLMObjective(TS2Loss(), fused=True, chunk_size=4)
        obj(_fused_out(hidden, head), labels)
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(obj.pop_logs()))
    finally:
        dist.destroy_process_group()


def test_pop_logs_gives_every_rank_the_global_means(tmp_path) -> None:
    """Two gloo ranks with different batches both log the means over all their response tokens."""
    import torch.multiprocessing as mp

    mp.spawn(_pop_logs_worker, args=(str(tmp_path),), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    sums, n = torch.zeros(3, dtype=torch.float64), 0
    for rank in (0, 1):
        hidden, head, labels = _batch(seed=10 + rank, b=3 + rank)
        s, k = token_stats(head(hidden)[:, :-1].reshape(-1, 40).detach(), labels[:, 1:].reshape(-1))
        sums, n = sums + s.double(), n + k
    for key, total in zip(STAT_KEYS, sums.tolist(), strict=True):
        assert got[0][key] == pytest.approx(total / n, rel=1e-5) and got[1][key] == got[0][key], key
