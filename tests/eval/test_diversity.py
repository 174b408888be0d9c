"""Diversity metrics (PAPER.md §4) against independent references: hand counts, sacrebleu, nltk, numpy."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import nltk
import numpy as np
import punkt
import pytest
import sacrebleu
from nltk.tokenize.punkt import load_punkt_params

from ts2.eval import diversity as D
from ts2.eval import tokenize as T

TEXTS = [
    "Dr. Smith went to Washington. He arrived at 5 p.m. and left early! Did he? Yes.",
    'She said, "It costs $3.50 in the U.S." Then she left. The end.',
    "Mr. Jones, e.g. the rep., said no. It was Jan. 5. Nobody (not even Ms. Lee) agreed.",
    "First line.\nSecond line... and a third one? Sure: yes.",
]

# Groups for the self-BLEU references: mixed sizes, a duplicate pair (ties in the n-gram counts) and
# repeated words inside one sample (clipping counts above 1).
BLEU_GROUPS = [
    ["the cat sat on the mat today", "the cat sat on a mat today", "a dog ran in the park all day"],
    ["the the the the cat sat down", "the the cat sat down now", "the the cat sat down now", "one two"],
    [
        "I think the answer is forty two because it always is.",
        "The answer is forty two, I think, because it always is.",
        "Honestly, nobody knows the answer to that question.",
        "It is forty two.",
        "",
    ],
    ["alpha beta gamma delta", "alpha beta gamma delta epsilon"],
]


@pytest.fixture(scope="module")
def minilm():
    return D.load_sentence_model()


# ----------------------------------------------------------------------------------------- tokenisation
def test_word_tokenize_pinned_tokens() -> None:
    """Punkt sentence split (abbreviations kept whole) then the Treebank word split, read off by hand."""
    want = [
        "Dr. Smith went to Washington . He arrived at 5 p.m. and left early ! Did he ? Yes .",
        "She said , `` It costs $ 3.50 in the U.S. '' Then she left . The end .",
        "Mr. Jones , e.g . the rep. , said no . It was Jan. 5 . Nobody ( not even Ms. Lee ) agreed .",
        "First line . Second line ... and a third one ? Sure : yes .",
    ]
    for text, tokens in zip(TEXTS, want, strict=True):
        assert T.word_tokenize(text) == tokens.split(" ")


def test_word_tokenize_splits_sentence_final_periods() -> None:
    # Punkt splits "world." from the next sentence; the Treebank tokenizer then splits off the period.
    # preserve_line=True (no Punkt) would keep "world." as one token.
    assert T.word_tokenize("Hello world. Bye.") == ["Hello", "world", ".", "Bye", "."]
    assert nltk.word_tokenize("Hello world. Bye.", preserve_line=True) != T.word_tokenize("Hello world. Bye.")


def test_materialised_punkt_tab_matches_the_punkt_package() -> None:
    folder = T.ensure_punkt_tab("english")
    params = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    model = punkt.load_model("english")
    assert Path(nltk.data.find("tokenizers/punkt_tab/english/").path) == folder
    assert params.abbrev_types == model.abbrev_types
    assert params.collocations == model.collocations
    assert params.sent_starters == model.sent_starters
    assert dict(params.ortho_context) == dict(model.ortho_context)
    # nltk's Punkt on the written files agrees with the punkt package's own, independent implementation.
    for text in TEXTS:
        assert nltk.sent_tokenize(text) == punkt.sent_tokenize(text)


def _materialise_in_child(cache: str, barrier) -> list[str]:  # runs in a forked process
    os.environ["TS2_CACHE_DIR"] = cache
    T._ready.clear()  # forget the parent's data dir, as a fresh process would
    barrier.wait()  # both children write at the same moment
    T.ensure_punkt_tab("english")
    return T.word_tokenize("Hi there. Bye.")


def test_ensure_punkt_tab_idempotent_and_race_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = multiprocessing.get_context("fork")  # no re-import of nltk: the children start at once
    barrier = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        outs = pool.starmap(_materialise_in_child, [(str(tmp_path), barrier)] * 2)
    assert outs == [["Hi", "there", ".", "Bye", "."]] * 2
    parent = tmp_path / "nltk_data" / "tokenizers" / "punkt_tab"
    assert [p.name for p in parent.iterdir()] == ["english"]  # the loser's temporary folder is gone
    mtimes = {f.name: f.stat().st_mtime_ns for f in (parent / "english").iterdir()}
    assert set(mtimes) == set(T.PUNKT_TAB_FILES)
    # A later call (fresh process state) finds the files and does not rewrite them.
    monkeypatch.setenv("TS2_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(T, "_ready", set())
    monkeypatch.setattr(nltk.data, "path", [])  # only the folder ensure_punkt_tab registers
    assert T.ensure_punkt_tab("english") == parent / "english"
    assert {f.name: f.stat().st_mtime_ns for f in (parent / "english").iterdir()} == mtimes
    found = nltk.data.find("tokenizers/punkt_tab/english/")
    assert Path(found.path) == parent / "english"
    assert load_punkt_params(found).abbrev_types == punkt.load_model("english").abbrev_types


# ------------------------------------------------------------------------------------------------ n-gram
def test_ngram_hand_computed() -> None:
    groups = [["the cat sat", "the cat ran"], ["Hi. Hi."]]
    # prompt 0 tokens: [the cat sat] [the cat ran]
    #   1-grams: 6 total, unique {the, cat, sat, ran} = 4           -> 4/6
    #   2-grams: (the cat) (cat sat) (the cat) (cat ran): 4, 3 uniq -> 3/4
    #   3-grams: (the cat sat) (the cat ran): 2, 2 unique          -> 2/2
    # prompt 1 tokens (Punkt splits the two sentences): [Hi . Hi .]
    #   1-grams: 4 total, unique {Hi, .} = 2                         -> 2/4
    #   2-grams: (Hi .) (. Hi) (Hi .): 3, 2 unique                   -> 2/3
    #   3-grams: (Hi . Hi) (. Hi .): 2, 2 unique                     -> 2/2
    p0 = (4 / 6 + 3 / 4 + 2 / 2) / 3
    p1 = (2 / 4 + 2 / 3 + 2 / 2) / 3
    assert D.ngram_diversity(groups) == pytest.approx(100 * (p0 + p1) / 2, abs=1e-12)
    assert D.distinct_n(groups[0], 2) == pytest.approx(3 / 4)
    # Only unigrams: prompt 0 4/6, prompt 1 2/4.
    assert D.ngram_diversity(groups, 1, 1) == pytest.approx(100 * (4 / 6 + 2 / 4) / 2, abs=1e-12)


def test_ngram_missing_order_scores_zero_with_warning() -> None:
    # one token each: 1-grams 2/2 = 1; no 2- or 3-grams -> 0 each (official GEM behaviour)
    with pytest.warns(UserWarning, match="prompt 0"):
        assert D.ngram_diversity([["hi", "yo"]]) == pytest.approx(100 / 3)


def test_ngram_parallel_equals_serial() -> None:
    groups = [[t, TEXTS[(i + 1) % len(TEXTS)]] for i, t in enumerate(TEXTS)]
    assert D.ngram_diversity(groups, num_workers=2) == D.ngram_diversity(groups)


# --------------------------------------------------------------------------------------------- self-BLEU
def _direct_self_bleu(groups: list[list[str]], paper: bool) -> float:
    per_prompt = []
    for g in groups:
        scores = []
        for i, h in enumerate(g):
            refs = g[:i] + g[i + 1 :]
            streams = [refs] if paper else [[r] for r in refs]
            scores.append(sacrebleu.corpus_bleu([h], streams).score)
        per_prompt.append(sum(scores) / len(scores))
    return 100 - sum(per_prompt) / len(per_prompt)


@pytest.mark.parametrize(("mode", "paper"), [("paper", True), ("all_refs", False)])
def test_self_bleu_equals_direct_sacrebleu(mode: str, paper: bool) -> None:
    got = D.self_bleu_diversity(BLEU_GROUPS, mode)  # type: ignore[arg-type]
    assert got == pytest.approx(_direct_self_bleu(BLEU_GROUPS, paper), abs=1e-9)
    assert D.self_bleu_diversity(BLEU_GROUPS, mode, num_workers=2) == pytest.approx(got, abs=1e-12)  # type: ignore[arg-type]


def test_self_bleu_modes_differ_when_first_other_sample_is_unrelated() -> None:
    # Sample 0 shares nothing with the rest, samples 1-3 are near copies: in paper mode samples 1-3 are
    # scored against sample 0 only (BLEU ~ 0), in all_refs mode against their near copies (BLEU high).
    group = [
        "zebras quietly graze under purple skies near distant volcanoes",
        "the quick brown fox jumps over the lazy dog again today",
        "the quick brown fox jumps over the lazy dog once more today",
        "the quick brown fox jumps over a lazy dog again today",
    ]
    paper, all_refs = D.self_bleu_diversity([group], "paper"), D.self_bleu_diversity([group], "all_refs")
    assert paper == pytest.approx(_direct_self_bleu([group], True), abs=1e-9)
    assert all_refs == pytest.approx(_direct_self_bleu([group], False), abs=1e-9)
    assert paper - all_refs > 30


def test_identical_samples_have_no_diversity(minilm) -> None:
    sentence = "one two three four five six seven eight nine ten"
    groups = [[sentence] * 4, [TEXTS[0]] * 3]
    # prompt 0: 4 copies of 10 distinct words -> every n-gram appears 4 times: distinct-n = 1/4 for n = 1..3
    assert D.distinct_n(groups[0], 1) == D.distinct_n(groups[0], 3) == pytest.approx(0.25)
    assert D.ngram_diversity(groups[:1]) == pytest.approx(25.0)
    for mode in D.SELF_BLEU_MODES:
        assert D.self_bleu_diversity(groups, mode) == pytest.approx(0.0, abs=1e-9)  # type: ignore[arg-type]
    assert D.sent_bert_diversity(groups, minilm) == pytest.approx(0.0, abs=1e-3)


# --------------------------------------------------------------------------------------------- Sent-BERT
def test_sent_bert_equals_numpy_pairwise_cosine(minilm) -> None:
    from sentence_transformers import util

    groups = [TEXTS, BLEU_GROUPS[0], ["a short one", "a completely different sentence about cooking"]]
    per_prompt = []
    for g in groups:
        emb = minilm.encode(g, convert_to_numpy=True)  # not normalised: cos_sim divides by the norms
        sims = util.cos_sim(emb, emb).numpy()
        pairs = [sims[i, j] for i in range(len(g)) for j in range(i + 1, len(g))]
        per_prompt.append(1 - float(np.mean(pairs)))
    expected = 100 * float(np.mean(per_prompt))
    assert D.sent_bert_diversity(groups, minilm, batch_size=4) == pytest.approx(expected, abs=1e-4)
    assert 0 < expected < 100


def test_report_keys_and_values(minilm) -> None:
    report = D.diversity_report(BLEU_GROUPS[:2], D.DiversityConfig(model=minilm))
    assert set(report) == {"ngram", "self_bleu", "sent_bert"}
    assert report["ngram"] == D.ngram_diversity(BLEU_GROUPS[:2])
    assert report["self_bleu"] == D.self_bleu_diversity(BLEU_GROUPS[:2], "paper")
    assert report["sent_bert"] == pytest.approx(D.sent_bert_diversity(BLEU_GROUPS[:2], minilm), abs=1e-6)


def test_embedding_cache_resumes_and_matches_uncached(minilm, tmp_path: Path, monkeypatch) -> None:
    texts = ([t for g in BLEU_GROUPS for t in g] + TEXTS)[:14]  # chunks of 4: 4, 4, 4, 2
    plain = D.sentence_embeddings(texts, minilm, chunk_size=4)
    assert plain.shape == (14, 384) and np.allclose(np.linalg.norm(plain, axis=1), 1, atol=1e-5)

    calls: list[int] = []
    real_encode = minilm.encode

    def counting_encode(chunk, **kw):
        calls.append(len(chunk))
        if len(calls) == 3:  # "killed" while encoding the third chunk
            raise KeyboardInterrupt
        return real_encode(chunk, **kw)

    monkeypatch.setattr(minilm, "encode", counting_encode)
    with pytest.raises(KeyboardInterrupt):
        D.sentence_embeddings(texts, minilm, chunk_size=4, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2 and not list(tmp_path.glob(".*"))  # no torn file left

    calls.clear()
    monkeypatch.setattr(
        minilm, "encode", lambda chunk, **kw: calls.append(len(chunk)) or real_encode(chunk, **kw)
    )
    resumed = D.sentence_embeddings(texts, minilm, chunk_size=4, cache_dir=tmp_path)
    assert calls == [4, 2]  # only the two unfinished chunks are encoded again
    np.testing.assert_allclose(resumed, plain, atol=1e-6)
    again = D.sent_bert_diversity([texts[:7], texts[7:]], minilm, cache_dir=tmp_path, batch_size=4)
    # Another encode batch size pads differently, so fp32 sums run in another order: the score (x100) agrees to
    # ~1e-6 of a cosine, i.e. 1e-4 here (2.3e-6 seen on a fresh CI clone).
    assert again == pytest.approx(D.sent_bert_diversity([texts[:7], texts[7:]], minilm), abs=1e-4)


def test_embedding_cache_is_keyed_by_model_and_rejects_bad_files(minilm, tmp_path: Path) -> None:
    fp = D.model_fingerprint(minilm)
    old = minilm.max_seq_length
    try:
        minilm.max_seq_length = 16  # truncation changes the embeddings, so it must change the key
        assert D.model_fingerprint(minilm) != fp
    finally:
        minilm.max_seq_length = old
    assert D.model_fingerprint(minilm) == fp
    D.sentence_embeddings(TEXTS, minilm, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.npy")
    np.save(cached, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=f"{cached.name} holds \\(2, 3\\)"):
        D.sentence_embeddings(TEXTS, minilm, cache_dir=tmp_path)


def test_max_seq_length_override_truncates_and_restores(minilm, tmp_path: Path) -> None:
    from sentence_transformers import util

    long_texts = [TEXTS[0] * 4, TEXTS[1] * 4, TEXTS[2] * 4]  # well past 16 word pieces each
    default = minilm.max_seq_length
    got = D.sentence_embeddings(long_texts, minilm, max_seq_length=16, cache_dir=tmp_path)
    assert minilm.max_seq_length == default  # the shared model is left as it was
    # reference: the model itself truncated at 16 (sentence-transformers' own truncation)
    minilm.max_seq_length = 16
    try:
        ref = minilm.encode(long_texts, convert_to_numpy=True)
    finally:
        minilm.max_seq_length = default
    np.testing.assert_allclose(util.cos_sim(got, ref).numpy().diagonal(), 1.0, atol=1e-5)
    full = D.sentence_embeddings(long_texts, minilm, cache_dir=tmp_path)  # not served from the 16-token cache
    assert float(util.cos_sim(full, got).numpy().diagonal().max()) < 0.999
    assert len(list(tmp_path.glob("*.npy"))) == 2
    with pytest.raises(ValueError, match="max_seq_length must be"):
        D.sentence_embeddings(long_texts, minilm, max_seq_length=1)


def test_per_prompt_values_are_the_single_prompt_scores(minilm) -> None:
    """Each per-prompt value equals the metric of that prompt alone; the headline is their mean."""
    config = D.DiversityConfig(model=minilm, self_bleu_mode="all_refs")
    scores = D.diversity_scores(BLEU_GROUPS, config)
    assert scores.metrics == D.diversity_report(BLEU_GROUPS, config)
    for p, group in enumerate(BLEU_GROUPS):
        assert scores.per_prompt["ngram"][p] == pytest.approx(D.ngram_diversity([group]), abs=1e-12)
        assert scores.per_prompt["self_bleu"][p] == pytest.approx(
            D.self_bleu_diversity([group], "all_refs"), abs=1e-9
        )
        assert scores.per_prompt["sent_bert"][p] == pytest.approx(
            D.sent_bert_diversity([group], minilm),
            abs=1e-3,  # float32 encodes of other batch mates
        )
    for k, v in scores.metrics.items():
        assert np.mean(scores.per_prompt[k]) == pytest.approx(v, abs=1e-9)


def test_diversity_config_from_the_evaluate_block(tmp_path) -> None:
    node = {
        "self_bleu_mode": "all_refs",
        "text": "response",
        "model": None,
        "max_seq_length": 128,
        "batch_size": 8,
        "num_workers": 2,
        "embedding_cache": True,
    }
    c = D.DiversityConfig.from_config(node, cache_dir=tmp_path)
    assert (c.self_bleu_mode, c.text, c.max_seq_length, c.batch_size, c.num_workers) == (
        "all_refs",
        "response",
        128,
        8,
        2,
    )
    assert c.cache_dir == tmp_path
    assert (
        D.DiversityConfig.from_config({**node, "embedding_cache": False}, cache_dir=tmp_path).cache_dir
        is None
    )
    with pytest.raises(ValueError, match="Unknown diversity setting"):
        D.DiversityConfig.from_config({**node, "self_bleu": "paper"})
    with pytest.raises(ValueError, match="diversity.text must be"):
        D.DiversityConfig(text="bare")
    with pytest.raises(ValueError, match="self_bleu_mode"):
        D.DiversityConfig(self_bleu_mode="quirk")


def test_sample_groups_builds_texts_in_prompt_and_sample_order() -> None:
    from ts2.sampling.store import Sample

    rows = [(4, 1, "y"), (1, 0, "a b"), (4, 0, "x"), (1, 2, "e"), (1, 1, "c d"), (4, 2, "z"), (4, 3, "w")]
    samples = [Sample(pid, j, f"P{pid}|", c, "stop", 1) for pid, j, c in rows]
    ids, groups = D.sample_groups(samples, text="templated", n=3)
    assert ids == [4, 1] and groups == [["P4|x", "P4|y", "P4|z"], ["P1|a b", "P1|c d", "P1|e"]]
    ids, groups = D.sample_groups(samples, text="response", n=2, prompt_ids=[1, 4])
    assert ids == [1, 4] and groups == [["a b", "c d"], ["x", "y"]]
    with pytest.raises(ValueError, match="unequal sample counts"):
        D.sample_groups(samples, text="response")
    with pytest.raises(ValueError, match="prompt 1 has 3 samples"):
        D.sample_groups(samples, text="response", n=4)
    with pytest.raises(ValueError, match="text must be"):
        D.sample_groups(samples, text="bare")
    gap = [Sample(0, j, "p", "t", None, None) for j in (0, 2)]
    with pytest.raises(ValueError, match="has 1 samples"):
        D.sample_groups(gap, text="response", n=2)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("fn", [D.self_bleu_diversity, D.sent_bert_diversity, D.diversity_report])
def test_group_of_one_names_prompt(fn) -> None:
    with pytest.raises(ValueError, match="prompt 1 has 1 sample"):
        fn([["a b", "c d"], ["only one"]])


@pytest.mark.parametrize("fn", [D.ngram_diversity, D.self_bleu_diversity, D.sent_bert_diversity])
def test_bad_input_names_prompt(fn) -> None:
    with pytest.raises(TypeError, match="prompt 1, sample 0 is int"):
        fn([["a b", "c d"], [3, "x"]])
    with pytest.raises(TypeError, match="prompt 0: expected a list"):
        fn(["not a group"])
    with pytest.raises(ValueError, match="no prompts"):
        fn([])
    with pytest.raises(ValueError, match="prompt 0 has 0 sample"):
        fn([[]])


def test_unknown_mode_and_missing_model() -> None:
    with pytest.raises(ValueError, match="all_refs"):
        D.self_bleu_diversity([["a", "b"]], "bogus")  # type: ignore[arg-type]
    with pytest.raises(OSError, match="huggingface-cli download"):
        D.load_sentence_model("sentence-transformers/ts2-no-such-model")


# ------------------------------------------------------------------------------ paper-compatible text mode
SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
# SYSTEM detokenised
LEFTOVER = "system\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


def _prompt(tok, instruction: str) -> str:
    """The sampling stage's prompt: the policy's template with the generation header (ts2.sample.render)."""
    return tok.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )


def test_paper_text_is_the_official_retemplated_string_by_hand(tiny_tokenizer) -> None:
    """GEM's evaluation_diversity.py with --detokenizer_path: system block twice, trailing <|eot_id|> kept;
    "user\\n\\n" removed even inside the instruction; <|eot_id|> removed from the completion."""
    tok = tiny_tokenizer
    prompt = _prompt(tok, "Write a haiku about user\n\nrain.")
    assert prompt == (
        "<|begin_of_text|>" + SYSTEM + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Write a haiku about user\n\nrain.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    text = D.paper_text(tok, prompt, "Drops fall<|eot_id|> softly.")
    assert text == (
        "<|begin_of_text|>"
        + SYSTEM
        + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        + LEFTOVER
        + "Write a haiku about rain.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nDrops fall softly.<|eot_id|>"
    )
    assert text.count("Cutting Knowledge Date") == 2 and text.endswith("<|eot_id|>")


def test_sample_groups_paper_mode_loads_the_tokenizer_only_after_the_checks(tiny_tokenizer) -> None:
    from ts2.sampling.store import Sample

    tok = tiny_tokenizer
    samples = [
        Sample(p, j, _prompt(tok, f"Poem {p}."), f"line {p}.{j}", "stop", 2) for p in (3, 1) for j in range(2)
    ]
    ids, groups = D.sample_groups(samples, tokenizer=tok)  # text="paper" is the default
    assert ids == [3, 1]
    assert groups == [
        [D.paper_text(tok, _prompt(tok, f"Poem {p}."), f"line {p}.{j}") for j in range(2)] for p in ids
    ]
    calls = []
    with pytest.raises(ValueError, match="unequal sample counts"):
        D.sample_groups(samples[:-1], tokenizer=lambda: calls.append(1))
    assert calls == []  # a bad file is reported as such, not as a missing tokenizer
    assert D.sample_groups(samples, tokenizer=lambda: tok) == (ids, groups)
    with pytest.raises(ValueError, match="needs the policy model's tokenizer"):
        D.sample_groups(samples)
    with pytest.raises(ValueError, match="diversity.text='paper' needs the 'prompt' field"):
        D.sample_groups([Sample(0, j, None, "x") for j in range(2)], tokenizer=tok)


def _cfg(samples_dir, **extra):
    from omegaconf import OmegaConf

    return OmegaConf.create({"samples_dir": str(samples_dir), "eval": {"id": "creative_poem"}, **extra})


def test_policy_tokenizer_comes_from_the_samples_meta_or_the_setting(
    tmp_path, monkeypatch, tiny_tokenizer
) -> None:
    import json

    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    with pytest.raises(ValueError, match=r"creative_poem.meta.json does not exist: set policy_tokenizer="):
        D.policy_tokenizer(_cfg(tmp_path))
    meta = tmp_path / "creative_poem.meta.json"
    meta.write_text(json.dumps({"complete": True}))
    with pytest.raises(ValueError, match="names no model.model_path"):
        D.policy_tokenizer(_cfg(tmp_path), "rm.user_text=paper_detok")
    meta.write_text(json.dumps({"model": {"model_path": str(tok_dir), "model": "tiny"}}))
    tok = D.policy_tokenizer(_cfg(tmp_path))
    assert tok.chat_template == tiny_tokenizer.chat_template and "creative_poem.meta.json" in tok.ts2_source
    assert (
        D.policy_tokenizer(_cfg(tmp_path / "nowhere", policy_tokenizer=str(tok_dir))).get_vocab()
        == tok.get_vocab()
    )
    # a tokenizer without a chat template (a base model) takes its model config's chat_template_from
    bare_dir = tmp_path / "bare"
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(tok_dir)
    bare.chat_template = None
    bare.save_pretrained(bare_dir)
    meta.write_text(json.dumps({"model": {"model_path": str(bare_dir), "model": "tiny"}}))
    with pytest.raises(ValueError, match="has no chat template; set policy_tokenizer="):
        D.policy_tokenizer(_cfg(tmp_path))  # conf/model/tiny.yaml has no chat_template_from
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "base.yaml").write_text(f"chat_template_from: {tok_dir}\n")
    monkeypatch.setattr(D, "CONF_DIR", str(conf))
    meta.write_text(json.dumps({"model": {"model_path": str(bare_dir), "model": "base"}}))
    tok = D.policy_tokenizer(_cfg(tmp_path))
    assert (
        tok.chat_template == tiny_tokenizer.chat_template and f"chat template of {tok_dir}" in tok.ts2_source
    )


def test_sent_bert_encoder_is_recorded_with_a_note_unless_it_is_the_papers(compose) -> None:
    cfg = compose(["eval=creative_poem"], config_name="evaluate")
    c = D.DiversityConfig.from_config(cfg.diversity)
    assert (cfg.diversity.id, c.model, c.allow_download, c.text, c.self_bleu_mode) == (
        "minilm",
        None,
        False,
        "paper",
        "paper",
    )
    info = D.diversity_details(c)
    assert info["sent_bert_model"] == D.OFFLINE_SENT_BERT
    assert info["sent_bert_note"].startswith("offline default, not the paper's model")
    paper = D.DiversityConfig.from_config(compose(["diversity=paper"], config_name="evaluate").diversity)
    assert (paper.model, paper.allow_download) == (D.PAPER_SENT_BERT_MODEL, True)
    assert D.diversity_details(paper)["sent_bert_note"] == "the paper's encoder"
    assert D.is_paper_sent_bert("/models/bert-large-nli-stsb-mean-tokens/") and not D.is_paper_sent_bert(
        "x/bert-base"
    )
    assert "not the paper's model" in D.sent_bert_info("some/other-model")["sent_bert_note"]


def test_paper_encoder_offline_says_how_to_get_it(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="diversity=paper on a machine with hub access"):
        D.load_sentence_model(D.PAPER_SENT_BERT_MODEL + "-not-cached", allow_download=True)


def test_paper_text_uses_the_policys_own_chatml_template(smollm2_tokenizer) -> None:
    """SmolLM2 (ChatML): the same official procedure with its own headers ("user\\n", "assistant\\n") and its
    end-of-turn token <|im_end|> removed; its default system line appears twice, as Llama's system block does."""
    tok = smollm2_tokenizer
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    prompt = _prompt(tok, "Write a haiku about user\nrain.")
    assert prompt == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWrite a haiku about user\nrain.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    text = D.paper_text(tok, prompt, "Drops fall<|im_end|> softly.")
    assert text == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nsystem\n{system}\nWrite a haiku about rain.\n"
        "<|im_end|>\n<|im_start|>assistant\nDrops fall softly.<|im_end|>\n"
    )
    assert text.count(system) == 2 and "<|eot_id|>" not in text


# ------------------------------------------------------------------------------ answers (issue #19 item 1)
@pytest.mark.parametrize(
    ("text", "k", "cut"),
    [
        ("Hello, world! This is a test.", 3, "Hello, world"),  # Hello , world | ! This ...
        ("Hello, world! This is a test.", 4, "Hello, world!"),
        ('He said "yes" and left.', 3, 'He said "'),  # He said `` yes '' ...: quotes found in the source
        ('He said "yes" and left.', 5, 'He said "yes"'),
        ("I don't know.", 3, "I don't"),  # I do n't know .
        ("  spaced   words here ", 2, "  spaced   words"),
    ],
)
def test_cut_to_words_keeps_the_source_up_to_the_kth_word_token(text, k, cut) -> None:
    assert D.cut_to_words(text, k) == (cut, k)
    assert len(T.word_tokenize(cut)) == k  # the N-gram metric sees exactly k tokens


def test_cut_to_words_keeps_short_answers_whole() -> None:
    assert D.cut_to_words("Only three words", 8) == ("Only three words", 3)
    assert D.cut_to_words("", 8) == ("", 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        D.cut_to_words("a b", 0)


def _samples(table: dict[int, list[str]], reasons=None, tokens=None):
    from ts2.sampling.store import Sample

    return [
        Sample(
            pid,
            j,
            f"<u>{pid}</u>",
            c,
            (reasons or {}).get((pid, j), "stop"),
            (tokens or {}).get((pid, j), 2 * len(c.split())),
        )
        for pid, cs in table.items()
        for j, c in enumerate(cs)
    ]


def test_score_answers_adds_secondary_texts_the_length_cut_and_lengths(minilm) -> None:
    """Primary = response; secondary = templated (prompt + response); the cut at 3 word tokens equals the
    metrics of the answers cut by hand; lengths and the EOS share by hand."""
    table = {
        0: ["a b c d e f", "a b c x y z", "q r"],  # third answer: 2 words < 3, kept whole
        1: ["one two three four", "one two three five", "six seven eight nine"],
    }
    reasons = {(0, 2): "length"}
    samples = _samples(table, reasons)
    cfg = D.DiversityConfig(model=minilm, text="response", secondary=("templated",), length_cut=3)
    res = D.score_answers(samples, cfg)
    assert res.prompt_ids == [0, 1]
    plain = D.diversity_scores([table[0], table[1]], D.DiversityConfig(model=minilm))
    assert {k: res.metrics[k] for k in plain.metrics} == plain.metrics  # the primary is unchanged
    templated = [[f"<u>{p}</u>" + c for c in table[p]] for p in (0, 1)]
    t = D.diversity_scores(templated, D.DiversityConfig(model=minilm))
    assert res.metrics["templated_ngram"] == t.metrics["ngram"]
    assert res.per_prompt["templated_self_bleu"] == t.per_prompt["self_bleu"]
    by_hand = [["a b c", "a b c", "q r"], ["one two three", "one two three", "six seven eight"]]
    cut = D.diversity_scores(by_hand, D.DiversityConfig(model=minilm))
    for k in ("ngram", "self_bleu", "sent_bert"):
        assert res.per_prompt[f"{k}@cut3"] == pytest.approx(cut.per_prompt[k], abs=1e-9)
    # prompt 0 cut: unigrams a,b,c,a,b,c,q,r -> 5/8; bigrams ab,bc,ab,bc,qr -> 3/5; trigrams abc,abc -> 1/2
    assert res.per_prompt["ngram@cut3"][0] == pytest.approx(100 * (5 / 8 + 3 / 5 + 1 / 2) / 3)
    assert res.details["length_cut"] == {
        "words": 3,
        "text": "response",
        "answers": 6,
        "shorter": 1,
        "note": "1 of 6 answers have fewer than 3 word tokens and are scored whole",
    }
    assert res.per_prompt["answer_words"] == pytest.approx([14 / 3, 4.0])
    assert res.per_prompt["answer_tokens"] == pytest.approx([28 / 3, 8.0])  # 2 per word, as written above
    assert res.per_prompt["ended_by_eos"] == pytest.approx([200 / 3, 100.0])
    assert res.metrics["ended_by_eos"] == pytest.approx(250 / 3)
    texts = res.details["texts"]
    assert (texts["ngram"], texts["templated_sent_bert"], texts["ngram@cut3"]) == (
        "response",
        "templated",
        "response cut after its first 3 word tokens",
    )


def test_score_answers_reports_missing_length_fields_instead_of_guessing(minilm) -> None:
    from dataclasses import replace

    samples = _samples({0: ["a b c", "c d e"], 1: ["e f g", "g h i"]})
    samples[1] = replace(samples[1], num_tokens=None, finish_reason=None)
    res = D.score_answers(samples, D.DiversityConfig(model=minilm, text="response"))
    assert "answer_tokens" not in res.metrics and "ended_by_eos" not in res.metrics
    assert res.details["lengths"] == {
        "answers": 4,
        "answer_tokens": "not reported: 1 of 4 samples have no num_tokens",
        "ended_by_eos": "not reported: 1 of 4 samples have no finish_reason",
    }
    assert res.metrics["answer_words"] == 3.0


def test_secondary_and_length_cut_settings_are_checked() -> None:
    c = D.DiversityConfig.from_config({"text": "response", "secondary": ["paper"], "length_cut": 8})
    assert (c.secondary, c.length_cut) == (("paper",), 8)
    with pytest.raises(ValueError, match=r"diversity.secondary=\['response'\].*other than the primary"):
        D.DiversityConfig(text="response", secondary=("response",))
    with pytest.raises(ValueError, match=r"diversity.secondary=\['bare'\]"):
        D.DiversityConfig(secondary=("bare",))
    with pytest.raises(ValueError, match="diversity.length_cut=0 must be null"):
        D.DiversityConfig(length_cut=0)


def test_paper_string_as_secondary_uses_the_policy_tokenizer_once(minilm, tiny_tokenizer) -> None:
    from ts2.sampling.store import Sample

    tok = tiny_tokenizer
    table = {0: ["roses are red", "violets are blue"], 1: ["the sea the sea", "waves on the shore"]}
    prompts = {
        p: tok.apply_chat_template(
            [{"role": "user", "content": f"Poem {p}."}], tokenize=False, add_generation_prompt=True
        )
        for p in table
    }
    samples = [Sample(p, j, prompts[p], c, "stop", 4) for p, cs in table.items() for j, c in enumerate(cs)]
    calls = []

    def loader():
        calls.append(1)
        return tok

    res = D.score_answers(
        samples, D.DiversityConfig(model=minilm, text="response", secondary=("paper",)), tokenizer=loader
    )
    paper = [[D.paper_text(tok, prompts[p], c) for c in table[p]] for p in table]
    want = D.diversity_scores(paper, D.DiversityConfig(model=minilm))
    assert (
        res.metrics["paper_ngram"] == want.metrics["ngram"] and res.metrics["ngram"] != want.metrics["ngram"]
    )
    assert calls == [1] and res.details["tokenizer"] == tok.name_or_path and res.details["text"] == "response"
