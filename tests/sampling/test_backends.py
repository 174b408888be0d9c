"""Generation backends: batch plans, seeds, stop handling, EOS / padding bookkeeping, the vLLM guard.

The vLLM backend itself runs for real in test_vllm.py."""

from __future__ import annotations

import pytest

from ts2.sampling.backends import Batch, HFBackend, SamplingParams, cut_at_stop, derive_seed, import_vllm


def _params(**kw) -> SamplingParams:
    base = {"n": 4, "temperature": 0.6, "top_k": 50, "top_p": 0.9, "max_new_tokens": 12, "seed": 42}
    return SamplingParams(**{**base, **kw})


@pytest.fixture(scope="module")
def backend():
    from omegaconf import OmegaConf

    from ts2.models import resolve_model_path

    cfg = OmegaConf.to_container(OmegaConf.create({"id": "tiny", "tiny": {}, "dtype": "float32"}))
    return HFBackend(resolve_model_path(cfg), cfg, batch_size=8, device="cpu", torch_threads=1)


def _ids(backend, texts):
    tok = backend.tokenizer
    return [
        tok(
            tok.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )["input_ids"]
        for t in texts
    ]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n": 2, "temperature": 0.0}, "sample.n=2 with temperature 0"),
        ({"top_p": 0.0}, "sample.top_p=0.0"),
        ({"max_new_tokens": 0}, "sample.max_new_tokens=0"),
        ({"stop": ("",)}, "sample.stop"),
        ({"top_k": -3}, "sample.top_k=-3"),
    ],
)
def test_bad_sampling_parameters_name_the_key(kw, message):
    with pytest.raises(ValueError, match=message):
        _params(**kw)


@pytest.mark.parametrize(
    ("num_prompts", "n", "batch_size"), [(5, 4, 8), (3, 200, 64), (7, 7, 4), (2, 1, 64), (1, 32, 48)]
)
def test_hf_plan_covers_every_pair_once_within_the_batch_size(backend, num_prompts, n, batch_size):
    backend.batch_size = batch_size
    try:
        plan = backend.plan(num_prompts, n)
    finally:
        backend.batch_size = 8
    pairs = [(i, s) for b in plan for i in b.prompts for s in b.samples]
    assert sorted(pairs) == [(i, s) for i in range(num_prompts) for s in range(n)]
    assert all(len(b.prompts) * len(b.samples) <= batch_size for b in plan)
    assert len({len(b.samples) for b in plan}) == 1  # equal chunks: one num_return_sequences per call


def test_seeds_and_stop_cuts():
    # pinned: sha256("42:0:0")[:8] read big-endian, mod 2**31 - 1 (computed independently with hashlib)
    assert derive_seed(42, 0, 0) == 483917756
    assert len({derive_seed(42, i, s) for i in range(20) for s in range(0, 200, 50)}) == 80
    assert 0 <= derive_seed(1, "x") < 2**31
    assert cut_at_stop("def f():\n    return 1\n```\nmore```", ["```"]) == ("def f():\n    return 1\n", True)
    assert cut_at_stop("abc", ["x", "b"]) == ("a", True)
    assert cut_at_stop("abc", []) == ("abc", False)


def test_hf_generate_is_deterministic_and_counts_tokens(backend):
    ids = _ids(backend, ["Write a poem about the sea.", "Hi"])
    batch, params = Batch((0, 1), range(4)), _params()
    first = backend.generate(ids, batch, params)
    assert [len(g) for g in first] == [4, 4]
    assert first == backend.generate(ids, batch, params)  # same batch, same seed: same samples
    other = backend.generate(ids, batch, _params(seed=7))
    assert first != other
    for g in (x for row in first for x in row):
        assert 1 <= g.num_tokens <= params.max_new_tokens
        assert (g.finish_reason == "length") == (g.num_tokens == params.max_new_tokens)


def test_hf_stop_strings_end_and_cut_the_completion(backend):
    ids = _ids(backend, ["Tell me a story.", "Describe a tree."])
    params = _params(max_new_tokens=24, stop=("e",))  # a common letter: most samples hit it
    gens = [g for row in backend.generate(ids, Batch((0, 1), range(4)), params) for g in row]
    assert all("e" not in g.text for g in gens)
    stopped = [g for g in gens if g.finish_reason == "stop"]
    assert stopped and all(g.num_tokens < 24 for g in stopped)


def test_hf_greedy_batched_equals_alone(backend):
    """Left padding is right: a short prompt decodes the same beside a long one as alone."""
    ids = _ids(backend, ["Hi", "Please write a long and careful essay about rivers, mountains and the sea."])
    params = _params(n=1, temperature=0.0, max_new_tokens=10)
    together = backend.generate(ids, Batch((0, 1), range(1)), params)
    alone = [backend.generate([x], Batch((i,), range(1)), params)[0] for i, x in enumerate(ids)]
    assert [g.text for row in together for g in row] == [g.text for row in alone for g in row]


def test_hf_finish_bookkeeping(backend):
    tok, pad = backend.tokenizer, backend.pad_id
    eos = backend.eos_ids[0]
    a, b = tok("hello world", add_special_tokens=False)["input_ids"][:2]
    p = _params(max_new_tokens=5)
    g = backend._finish([a, b, eos, pad, pad], p)
    assert (g.finish_reason, g.num_tokens, g.text) == ("stop", 3, tok.decode([a, b]))
    g = backend._finish([a, b, a, b, a], p)
    assert (g.finish_reason, g.num_tokens) == ("length", 5)
    g = backend._finish([a, b, pad, pad, pad], p)  # a sampled pad without a stop string is a token
    assert (g.finish_reason, g.num_tokens) == ("length", 5)
    stop = tok.decode([b])[-1]
    g = backend._finish([a, b, pad, pad, pad], _params(max_new_tokens=5, stop=(stop,)))
    assert (g.finish_reason, g.num_tokens) == ("stop", 2)
    assert stop not in g.text


def test_vllm_missing_says_so(monkeypatch):
    """What no real engine can show: the message when vllm cannot be imported (None in sys.modules)."""
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"sampler=vllm needs the `vllm` package.*make install.*sampler=hf"):
        import_vllm()


def test_end_of_turn_token_comes_from_the_chat_template(backend):
    import copy

    from ts2.sampling.backends import end_of_turn_id

    tok = backend.tokenizer
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.convert_tokens_to_ids("<|eot_id|>") in backend.eos_ids
    other = copy.deepcopy(tok)
    other.chat_template = "{% for m in messages %}{{ m['content'] }}<|end_of_text|>\n{% endfor %}"
    assert end_of_turn_id(other) == tok.convert_tokens_to_ids("<|end_of_text|>")
    other.chat_template = "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"
    assert end_of_turn_id(other) is None


def test_row_sampler_draws_each_row_from_the_warped_softmax_with_its_own_seed():
    """RowSampler (HF sampling, one generator per sequence): empirical frequencies over 20,000 seeded rows
    match softmax(z / T) after top-k / top-p within 4 standard errors; a row's token depends only on its seed."""
    import math

    import torch

    from ts2.sampling.backends import RowSampler

    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    z = torch.log(p)  # the last token is masked (-inf)
    n = 20_000

    def freqs(**kw):
        params = _params(**{"top_k": None, "top_p": 1.0, "temperature": 1.0, **kw})
        out = RowSampler(list(range(n)), params, "cpu")(None, z.expand(n, -1).clone())
        assert bool(((out == 0) | (out == -math.inf)).all()) and bool(((out == 0).sum(1) == 1).all())
        return torch.bincount(out.argmax(1), minlength=5).double() / n

    def close(got, want):
        se = (want * (1 - want) / n).sqrt()
        assert bool(((got - want).abs() <= 4 * se + 1e-12).all()), (got, want)

    close(freqs(), p.double())
    close(freqs(temperature=2.0), (p.sqrt() / p.sqrt().sum()).double())  # softmax(z / 2) ∝ p^(1/2)
    kept = torch.tensor([0.5, 0.3, 0, 0, 0]) / 0.8
    close(freqs(top_k=2), kept.double())
    close(freqs(top_p=0.75), kept.double())  # the smallest head with mass >= 0.75 is {0, 1}
    # a row's draw does not depend on the rows beside it
    params = _params(top_k=None, top_p=1.0, temperature=1.0)
    alone = [int(RowSampler([s], params, "cpu")(None, z[None].clone()).argmax()) for s in (11, 12, 13)]
    batch = RowSampler([11, 12, 13], params, "cpu")(None, z.expand(3, -1).clone()).argmax(1).tolist()
    assert alone == batch
