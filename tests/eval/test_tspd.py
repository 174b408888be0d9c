"""Tests for the TSPD meter `ts2.eval.tspd`: hand-computed distributions, a brute-force set definition,
the sparsemax support against the `entmax` package, streaming vs full logits on the tiny model, the
metrics file and the per-method table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ts2.eval.tspd import (
    quantity_names,
    sparsemax_support_size,
    stream_model_stats,
    summarize,
    token_stats,
    tspd_table,
)

P = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=torch.float64)


def stats_of(p: torch.Tensor, y: int, ms=(1, 2, 5)) -> dict[str, float]:
    return {k: float(v[0]) for k, v in token_stats(p.log(), torch.tensor([y]), ms).items()}


def test_hand_computed_label_inside_top_m():
    s = stats_of(P, 0)
    # y = 0 is the argmax: S = Top_m.
    assert s["head@1"] == pytest.approx(0.5) and s["tail@1"] == pytest.approx(0.5)
    assert s["head@2"] == pytest.approx(0.2) and s["tail@2"] == pytest.approx(0.3)
    assert s["head@5"] == pytest.approx(0.05) and s["tail@5"] == pytest.approx(0.0, abs=1e-15)


def test_hand_computed_label_outside_top_m():
    s = stats_of(P, 3)  # p_y = 0.1, rank 4
    # m=1: S = {y}; m=2: S = {0, 3}; m=5: y inside.
    assert s["head@1"] == pytest.approx(0.1) and s["tail@1"] == pytest.approx(0.9)
    assert s["head@2"] == pytest.approx(0.1) and s["tail@2"] == pytest.approx(0.4)
    assert s["head@5"] == pytest.approx(0.05)
    s = stats_of(P, 2, ms=(2,))  # p_y = 0.15, S = {0, 2}
    assert s["head@2"] == pytest.approx(0.15) and s["tail@2"] == pytest.approx(0.35)


def test_entropy_and_support_hand_computed():
    s = stats_of(P, 0)
    h = -(
        0.5 * math.log(0.5)
        + 0.2 * math.log(0.2)
        + 0.15 * math.log(0.15)
        + 0.1 * math.log(0.1)
        + 0.05 * math.log(0.05)
    )
    assert s["entropy"] == pytest.approx(h, rel=1e-12)
    # log P = (-0.693, -1.609, -1.897, ...): k=2 holds (1 - 3.219 > -2.303), k=3 fails (1 - 5.692 < -4.200).
    assert s["support"] == 2
    # z = (1, 0.8, 0.1, -2): k* = 2, tau = (1.8 - 1) / 2 = 0.4, sparsemax = (0.6, 0.4, 0, 0).
    assert int(sparsemax_support_size(torch.tensor([[1.0, 0.8, 0.1, -2.0]]))[0]) == 2
    assert int(sparsemax_support_size(torch.tensor([[3.0, 0.0, 0.0]]))[0]) == 1
    assert int(sparsemax_support_size(torch.zeros(1, 7))[0]) == 7  # uniform: full support


def test_ties_count_label_inside():
    p = torch.tensor([[0.4, 0.2, 0.2, 0.2]], dtype=torch.float64)
    for y in (1, 2, 3):  # only one entry is strictly larger than p_y: y is in Top_2
        s = stats_of(p, y, ms=(2,))
        assert s["head@2"] == pytest.approx(0.2) and s["tail@2"] == pytest.approx(0.4)


def test_masked_vocabulary_entropy_is_finite():
    z = torch.tensor([[0.0, 0.0, -math.inf, -math.inf]])
    s = token_stats(z, torch.tensor([1]), ms=(2,))
    assert float(s["entropy"][0]) == pytest.approx(math.log(2))
    assert int(s["support"][0]) == 2 and float(s["tail@2"][0]) == 0.0


def brute_force(p: np.ndarray, y: int, m: int) -> tuple[float, float]:
    """S from the definition with explicit sets: Top_m = an m-subset with the largest total (y kept on ties)."""
    order = sorted(range(len(p)), key=lambda j: (-p[j], j != y))
    top = set(order[:m])
    s = top if y in top else set(order[: m - 1]) | {y}
    return min(p[j] for j in s), sum(p[j] for j in range(len(p)) if j not in s)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_sets(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(40, 12, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 12, (40,), generator=g)
    stats = token_stats(z, y, ms=(2, 5, 10))
    p = torch.softmax(z, -1).numpy()
    for i in range(40):
        for m in (2, 5, 10):
            head, tail = brute_force(p[i], int(y[i]), m)
            assert float(stats[f"head@{m}"][i]) == pytest.approx(head, rel=1e-12)
            assert float(stats[f"tail@{m}"][i]) == pytest.approx(tail, rel=1e-9, abs=1e-15)


def test_support_matches_entmax_package():
    entmax = pytest.importorskip("entmax")
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 5.0, 50.0):
        z = torch.randn(64, 257, generator=g) * scale
        ref = (entmax.sparsemax(z.double(), dim=-1) > 0).sum(-1)
        assert torch.equal(sparsemax_support_size(z.double()), ref)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        token_stats(P.log(), torch.tensor([5]))
    with pytest.raises(ValueError, match="every m must be an int in"):
        token_stats(P.log(), torch.tensor([0]), ms=(10,))
    with pytest.raises(ValueError, match="logits must be"):
        token_stats(P.log()[0], torch.tensor([0]))
    with pytest.raises(ValueError, match="no response tokens"):
        summarize({"entropy": np.zeros(0)}, np.zeros(0, dtype=np.int64))


def test_summarize_quantiles_means_and_ci():
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 10.0])
    owner = np.array([0, 0, 1, 1, 2, 2])
    res = summarize({"entropy": v}, owner, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95), n_bootstrap=200)
    m = res.metrics
    assert m["entropy/mean"] == pytest.approx(25 / 6)
    # numpy linear quantiles by hand: position q * (n - 1) on the sorted values.
    assert m["entropy/q50"] == pytest.approx(3.5)
    assert m["entropy/q25"] == pytest.approx(2.25)
    assert m["entropy/q95"] == pytest.approx(5 + 0.75 * 5)
    assert m["entropy/q05"] == pytest.approx(1.25)
    lo, hi = res.ci["entropy/mean"]
    # Bootstrap means lie between the smallest and largest prompt mean.
    assert 1.5 <= lo <= 25 / 6 <= hi <= 7.5
    assert res.details["per_prompt_mean"]["entropy"] == pytest.approx([1.5, 3.5, 7.5])
    assert (res.num_prompts, res.num_samples) == (3, 6)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ts2.models.tiny import TinySpec, build_tiny_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TS2_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        path = build_tiny_model(TinySpec())
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def test_streaming_equals_full_logits(tiny_model):
    """Chunked hidden-state path (batched, padded) vs the model's own full logits, one example at a time."""
    _, tok, model = tiny_model
    from ts2.data import tokenize_conversation

    convs = [
        [
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue, like the sea."},
        ],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
        ],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ]
    examples = [tokenize_conversation(c, tok, 128) for c in convs]
    acc = stream_model_stats(model, examples, batch_size=2, chunk_size=5, pad_token_id=tok.pad_token_id)
    got, owner = acc.arrays()
    ref = {k: [] for k in quantity_names()}
    ref_owner = []
    order = sorted(range(3), key=lambda i: -len(examples[i]["input_ids"]))
    with torch.no_grad():
        for i in order:
            ex = examples[i]
            logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, :-1]
            lab = torch.tensor(ex["labels"][1:])
            keep = lab != -100
            s = token_stats(logits[keep], lab[keep])
            for k in ref:
                ref[k].append(s[k].numpy())
            ref_owner += [i] * int(keep.sum())
    assert owner.tolist() == ref_owner
    for k in ref:
        np.testing.assert_allclose(got[k], np.concatenate(ref[k]), rtol=1e-4, atol=1e-6, err_msg=k)


def test_evaluate_writes_metrics_file_and_table(compose, tiny_model, tmp_path, monkeypatch):
    """`python -m ts2.evaluate eval=tspd model=tiny metrics_dir=...`: the only command line of the meter."""
    from ts2.evaluate import evaluate_bench

    path, _, _ = tiny_model
    monkeypatch.setenv("TS2_CACHE_DIR", str(path.parent.parent))
    overrides = ["eval=tspd", "model=tiny", f"metrics_dir={tmp_path}", "eval.sample.limit=3"]
    dest = evaluate_bench(compose([*overrides, "eval.metrics.n_bootstrap=50"], "evaluate"))
    assert dest == tmp_path / "tspd.json"
    d = json.loads(dest.read_text())
    for key in ("benchmark", "scale", "complete", "metrics", "num_prompts", "num_samples", "ci", "details"):
        assert key in d, key
    assert d["benchmark"] == "tspd" and d["scale"].startswith("tiny") and d["complete"] is True
    assert d["limit"] == 3 and d["num_prompts"] == d["details"]["data"]["rows"] <= 3
    assert d["num_samples"] == d["details"]["num_tokens"] == sum(d["details"]["tokens_per_prompt"])
    names = quantity_names()
    assert {f"{n}/{s}" for n in names for s in ("mean", "q05", "q25", "q50", "q75", "q95")} == set(
        d["metrics"]
    )
    # Random init over ~1k tokens: nearly uniform, so the head is tiny and the tail almost 1.
    assert d["metrics"]["tail@2/mean"] > d["metrics"]["tail@5/mean"] > d["metrics"]["tail@10/mean"]
    assert d["metrics"]["entropy/mean"] <= math.log(1030)
    table = tspd_table([dest])
    assert "| tiny | tiny-scale" in table and table.count("\n|") == 3
