"""Tests for the pretrained tiny base (`ts2.models.tiny_base`; its corpus: test_corpus.py).

Checked against independent references: the parameter count against the model transformers builds, the
learning-rate schedule against its closed form, the packing against a decode, the resume against an uninterrupted
run, a whole build on a small committed corpus against its own files, and the committed weights against their
manifest (sha256, recomputed held-out perplexity on the corpus record's held-out texts). The slow tier rebuilds
the base and compares.

No test depends on this machine's stdlib being the build's (Python 3.11.7): the committed ``corpus.json`` pins the
corpus (every document's sha256, the held-out texts), so the manifest's corpus fingerprint (test_corpus.py) and
held-out perplexity are checked everywhere.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from ts2.models import tiny_base as tb
from ts2.models.corpus import (
    Document,
    corpus_fingerprint,
    corpus_record,
    load_corpus,
    recorded_heldout,
)

COMMITTED = (tb.ASSETS_DIR / "manifest.json").is_file()


def committed() -> tuple[dict, dict]:
    """The committed base's manifest and corpus record."""
    man = json.loads((tb.ASSETS_DIR / "manifest.json").read_text())
    return man, json.loads((tb.ASSETS_DIR / tb.CORPUS_FILE).read_text())


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


# ------------------------------------------------------------------ spec, schedule, packing


def test_spec_validation():
    with pytest.raises(ValueError, match="head_dim 16 < 32"):
        tb.TinyBaseSpec(hidden_size=64, num_attention_heads=4)
    with pytest.raises(ValueError, match="not divisible"):
        tb.TinyBaseSpec(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="Unknown tiny base spec key"):
        tb.TinyBaseSpec.from_dict({"hidden": 3})
    assert tb.TinyBaseSpec().head_dim >= 32


@pytest.mark.parametrize("tie", [True, False])
def test_num_params_matches_transformers(tie):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = tb.TinyBaseSpec(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)  # fmt: skip
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)  # fmt: skip
    assert s.num_params() == sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())


def test_lr_schedule_closed_form():
    s = tb.TinyBaseSpec(steps=100, warmup_steps=10, learning_rate=1e-3, min_lr_ratio=0.1)
    assert tb.lr_at(s, 0) == pytest.approx(1e-4)
    assert tb.lr_at(s, 9) == pytest.approx(1e-3)
    assert tb.lr_at(s, 10) == pytest.approx(1e-3)
    assert tb.lr_at(s, 55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway through the cosine
    assert tb.lr_at(s, 100) == pytest.approx(1e-4)


def test_batches_cover_each_chunk_once_per_epoch():
    s = tb.TinyBaseSpec(batch_size=4, seed=3)
    seen = [i for step in range(5) for i in tb.batch_indices(s, 22, step)]  # 5 full batches per epoch
    assert len(seen) == 20 and len(set(seen)) == 20
    assert tb.batch_indices(s, 22, 5) != tb.batch_indices(s, 22, 0)  # a new permutation next epoch
    with pytest.raises(ValueError, match="fewer than one batch"):
        tb.batch_indices(s, 3, 0)


def test_pack_roundtrip(tiny_tokenizer):
    docs = [
        Document("stdlib", "a.py", "def f(x):\n    return x + 1\n"),
        Document("stdlib", "b.py", "print('hi')"),
    ]
    chunks = tb.pack(tiny_tokenizer, docs, 4)
    flat = chunks.flatten().tolist()
    ids = []
    for d in docs:
        ids += [tiny_tokenizer.convert_tokens_to_ids("<|begin_of_text|>")]
        ids += tiny_tokenizer(d.text, add_special_tokens=False)["input_ids"]
        ids += [tiny_tokenizer.convert_tokens_to_ids("<|end_of_text|>")]
    assert chunks.shape[1] == 4 and flat == ids[: len(ids) // 4 * 4]


def test_resume_equals_uninterrupted_run(tiny_tokenizer, tmp_path):
    """Killed after 2 steps and resumed from the checkpoint = 4 steps in one go, bit for bit."""
    torch.set_num_threads(1)
    s = tb.TinyBaseSpec(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, seq_len=16, batch_size=2, steps=4,
                        warmup_steps=1, checkpoint_every=1)  # fmt: skip
    chunks = torch.arange(8 * 16).view(8, 16) % 5 + 10  # a learnable periodic text
    quiet = lambda *a, **k: None  # noqa: E731
    ref = tb.init_model(s, tiny_tokenizer)
    ref_log = tb.pretrain(s, ref, chunks, None, print_fn=quiet)
    ckpt = tmp_path / "ckpt.pt"
    tb.pretrain(s, tb.init_model(s, tiny_tokenizer), chunks, ckpt, stop_after=2, print_fn=quiet)
    resumed = tb.init_model(s, tiny_tokenizer)
    log = tb.pretrain(s, resumed, chunks, ckpt, print_fn=quiet)
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert ref_log[-1]["loss"] < ref_log[0]["loss"]


# ------------------------------------------------------------------ the committed base


@pytest.mark.skipif(not COMMITTED, reason="no committed base under assets/tiny_base/")
def test_committed_base_matches_manifest():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    man = json.loads((tb.ASSETS_DIR / "manifest.json").read_text())
    spec = tb.TinyBaseSpec()
    assert man["spec"] == json.loads(
        json.dumps(tb.asdict(spec))
    )  # the committed copy is today's default spec
    assert tb.sha256_file(tb.ASSETS_DIR / tb.WEIGHTS_FILE) == man["weights_sha256"]
    assert (tb.ASSETS_DIR / tb.WEIGHTS_FILE).stat().st_size <= 25 * 2**20
    assert tb.build_tiny_base(spec) == tb.ASSETS_DIR  # found without building
    tok = AutoTokenizer.from_pretrained(tb.ASSETS_DIR)
    model = AutoModelForCausalLM.from_pretrained(tb.ASSETS_DIR, dtype=torch.float32)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, len(tok)) == (
        spec.hidden_size, spec.num_hidden_layers, spec.num_attention_heads, spec.vocab_size)  # fmt: skip
    assert cfg.hidden_size // cfg.num_attention_heads >= 32
    assert sum(p.numel() for p in model.parameters()) == spec.num_params() == man["num_params"]
    assert "<|eot_id|>" in tok.get_vocab() and "<|start_header_id|>" in tok.chat_template


@pytest.mark.skipif(not COMMITTED, reason="no committed base under assets/tiny_base/")
def test_committed_heldout_perplexity_recomputed():
    """The manifest's held-out perplexity and token count, recomputed from the committed weights on the held-out
    texts of the committed corpus record."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    man, rec = committed()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tb.ASSETS_DIR)
    model = AutoModelForCausalLM.from_pretrained(tb.ASSETS_DIR, dtype=torch.float32)
    chunks = tb.pack(tok, recorded_heldout(rec), man["spec"]["seq_len"])
    assert chunks.numel() == man["heldout_tokens"]
    nll = tb.mean_nll(model, chunks)
    assert math.exp(nll) == pytest.approx(man["heldout_perplexity"], rel=1e-4)
    # far below a uniform guess over the vocabulary, i.e. the base did learn the text
    assert man["heldout_perplexity"] < len(tok) / 20


@pytest.mark.skipif(not COMMITTED, reason="no committed base under assets/tiny_base/")
def test_build_on_a_small_committed_corpus(tmp_path, monkeypatch):
    """The whole build (tokenizer, packing, pretraining, fp16 save, manifest, corpus record) on a small corpus that
    is committed (the base's held-out files and the README snapshot): the manifest's numbers recomputed from the
    files written, and a second build bit-identical."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    _, rec = committed()
    docs = [d for d in recorded_heldout(rec) if d.source == "stdlib"] + load_corpus(("metadata",))
    monkeypatch.setattr(tb, "load_corpus", lambda sources: docs)
    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path))
    spec = tb.TinyBaseSpec(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, seq_len=64, batch_size=2, steps=3,
                           warmup_steps=1, checkpoint_every=2)  # fmt: skip
    path = tb.build_tiny_base(spec, print_fn=lambda *a, **k: None)
    assert path == tmp_path / "models" / f"tiny-base-{spec.fingerprint(corpus_fingerprint(docs))}"
    man = json.loads((path / "manifest.json").read_text())
    assert json.loads((path / tb.CORPUS_FILE).read_text()) == corpus_record(docs)
    assert man["corpus_fingerprint"] == corpus_fingerprint(docs)
    assert man["weights_sha256"] == tb.sha256_file(path / tb.WEIGHTS_FILE)
    tok = AutoTokenizer.from_pretrained(path)
    train, held = [d for d in docs if not d.heldout], [d for d in docs if d.heldout]
    assert man["heldout_files"] == [d.path for d in held] and len(tok) == 320
    assert man["train_tokens"] == tb.pack(tok, train, 64).numel() and man["tokens_seen"] == 3 * 2 * 64
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert math.exp(tb.mean_nll(model, tb.pack(tok, held, 64))) == pytest.approx(
        man["heldout_perplexity"], rel=1e-6
    )
    assert [r["step"] for r in json.loads((path / "build_log.json").read_text())] == [1, 2, 3]
    again = tb.build_tiny_base(spec, force=True, print_fn=lambda *a, **k: None)
    a, b = load_file(path / tb.WEIGHTS_FILE), load_file(again / tb.WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.skipif(not COMMITTED, reason="no committed base under assets/tiny_base/")
def test_rebuild_reproduces_committed_base(corpus, tmp_path, monkeypatch):
    """Rebuild from scratch (this machine's corpus) and compare.

    By default the first 20 of the 400 steps (~2 min); with ``TS2_FULL_REBUILD=1`` the whole build (about an hour
    of one core). On any machine: the rebuild's corpus record and manifest say what it read, and its held-out
    perplexity is recomputed from its saved weights. Where the corpus is the build's (Python 3.11.7's stdlib:
    same fingerprint as the committed record), the committed base itself is rebuilt: the tokenizer identical, the
    per-step losses equal to the committed build log within 1e-4 relative (full build: held-out perplexity within
    1%). Elsewhere the rebuild is another base, in a folder of its own (another fingerprint), never taken for the
    committed one. Why tolerances and not bit equality: one thread fixes the reduction order on one machine (the
    resume test shows bit equality), but another CPU's SIMD width (AVX2 vs AVX-512) changes float sums in the
    last bits, and 500 AdamW steps amplify that.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    man, rec = committed()
    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path))
    full = os.environ.get("TS2_FULL_REBUILD") == "1"
    path = tb.build_tiny_base(tb.TinyBaseSpec(), force=True, stop_after=None if full else 20,
                              print_fn=lambda *a, **k: None)  # fmt: skip
    new = json.loads((path / "manifest.json").read_text())
    assert new["corpus_fingerprint"] == corpus_fingerprint(corpus)
    assert json.loads((path / tb.CORPUS_FILE).read_text()) == corpus_record(corpus)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    held = tb.pack(tok, [d for d in corpus if d.heldout], new["spec"]["seq_len"])
    assert math.exp(tb.mean_nll(model, held)) == pytest.approx(new["heldout_perplexity"], rel=1e-4)
    if new["corpus_fingerprint"] != man["corpus_fingerprint"]:  # another stdlib: another base, another folder
        assert new["fingerprint"] != man["fingerprint"] and path.name != f"tiny-base-{man['fingerprint']}"
        return
    assert (path / "tokenizer.json").read_bytes() == (tb.ASSETS_DIR / "tokenizer.json").read_bytes()
    log = json.loads((path / "build_log.json").read_text())
    ref = json.loads((tb.ASSETS_DIR / "build_log.json").read_text())
    n = len(log)
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in ref[:n]], rel=1e-4)
    if full:
        assert new["heldout_perplexity"] == pytest.approx(man["heldout_perplexity"], rel=0.01)
