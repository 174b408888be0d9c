"""Where ts2 finds data it does not ship, and where it caches what it builds.

Data no package ships (UltraFeedback subset, AlpacaEval references, MT-Bench-101, creative-writing prompts,
...) is read from a *data directory* laid out like ``../shared/data``:

1. ``$TS2_DATA_DIR`` when set;
2. otherwise the first ``shared/data`` found beside the repository (``<repo>/../shared/data``, CI's layout),
   searched upward from the current directory and from this file.

Caches (tiny models, tokenizers, reference-reward caches) go to ``$TS2_CACHE_DIR`` or ``~/.cache/ts2``.

:func:`read_text` reads a data file, refusing a byte that is not UTF-8 with ``file:line:column`` (never the raw
bytes), and :func:`check_output_dir` refuses an output folder that cannot be created or written, naming the
setting, before a stage writes anything.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HERE = Path(__file__).resolve()


def _candidates() -> list[Path]:
    starts = [Path.cwd().resolve(), _HERE.parent]
    seen: list[Path] = []
    for start in starts:
        for d in [start, *start.parents]:
            for c in (d / "shared" / "data", d.parent / "shared" / "data"):
                if c not in seen:
                    seen.append(c)
    return seen


def data_dir(required: bool = True) -> Path | None:
    """Return the local data directory (see module docstring); raise a helpful error if none is found."""
    env = os.environ.get("TS2_DATA_DIR")
    if env:
        p = Path(env).expanduser().resolve()
        if not p.is_dir():
            raise FileNotFoundError(f"TS2_DATA_DIR={env!r} is not a directory.")
        return p
    for c in _candidates():
        if (c / "SOURCES.md").is_file() or (c / "ultrafeedback").is_dir():
            return c
    if required:
        raise FileNotFoundError(
            "No ts2 data directory found. Set TS2_DATA_DIR (or paths.data_dir=...) to a folder laid out like "
            "shared/data (ultrafeedback/, alpaca_eval/, mt_bench_101/, gem_creative_writing/, openllm/), "
            "or clone the repo with shared/ beside it."
        )
    return None


def data_file(*parts: str) -> Path:
    """A file inside the data directory, with an error naming the missing path."""
    p = data_dir().joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"Expected data file {p} (inside the ts2 data directory) does not exist.")
    return p


def cache_dir() -> Path:
    """Cache root for built artefacts (tiny models, RM reference rewards): $TS2_CACHE_DIR or ~/.cache/ts2."""
    p = Path(os.environ.get("TS2_CACHE_DIR", Path.home() / ".cache" / "ts2")).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it to ``target`` only if the block succeeds.

    An interrupted build never leaves a half-written folder that a later run would trust.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (gzip when it ends in ``.gz``), or a ``ValueError`` naming the first byte that is
    not UTF-8 by file, line and column, without quoting the bytes."""
    p = Path(path)
    data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{p}:{line}:{column}: byte 0x{data[err.start]:02x} is not valid UTF-8 ({err.reason}): re-save the "
            "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or fix that line."
        ) from None


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read 1 MiB at a time (checks cached and installed weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_dir(path: str | Path, key: str) -> None:
    """Refuse, naming the setting ``key``, an output folder that cannot be made or written: a path through an
    existing file, or a nearest existing folder this process may not write. Reads only."""
    p = Path(path).expanduser().absolute()
    for q in [p, *p.parents]:
        if not q.exists():
            continue
        if not q.is_dir():
            raise NotADirectoryError(
                f"{key}={str(path)!r}: {q} is a file, not a folder: point {key} at a folder (it is created if missing)."
            )
        if not os.access(q, os.W_OK | os.X_OK):
            raise PermissionError(
                f"{key}={str(path)!r}: cannot write in {q} (permission denied): point {key} at a folder you can write."
            )
        return


def check_name(name: str, key: str) -> None:
    """Refuse, naming the setting ``key``, a name that is not a plain file stem: ``ts2.report`` writes
    ``<out_dir>/<name>.csv`` and ``<out_dir>/figures/<name>/``, so a ``/``, a ``..`` or an empty name would write
    outside ``out_dir`` or into it unnamed."""
    name = str(name)
    if not name or name in {".", ".."} or "/" in name or "\\" in name:
        raise ValueError(
            f"{key}={name!r} is not a plain name (no '/', not '.' or '..', not empty): it names the files "
            f"<out_dir>/{{name}}.csv and the folder <out_dir>/figures/{{name}}/; e.g. {key}=table1_tiny."
        )
