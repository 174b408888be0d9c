"""Append-only sample files that survive a kill at any moment (project issue #4, ``evaluation/README.md``).

``<out_dir>/<bench>.jsonl`` holds one JSON object per line, one line per (prompt, sample). Lines are
written a whole batch at a time: one ``write`` of complete lines on an ``O_APPEND`` descriptor, then
``fsync``. A kill can therefore leave, at worst, a prefix of the batch in flight whose last line is torn
(no trailing newline). :meth:`SampleStore.open` detects such a torn tail, truncates it away and never
counts it; every complete line is a finished pair. A rerun skips finished pairs, so no pair is ever
written twice. An exclusive ``flock`` on ``<bench>.jsonl.lock`` stops two processes from appending to the
same file (the kernel drops the lock when its holder dies, even on SIGKILL).

``<bench>.meta.json`` records how the file was made; it is replaced atomically (write + rename).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("ts2.sampling")

REQUIRED_FIELDS = ("prompt_id", "sample_idx", "prompt", "completion", "finish_reason", "num_tokens")


class SampleFileError(ValueError):
    """A samples file that is not what this stage writes; the message names file, line and field."""


def _key(prompt_id: Any, sample_idx: Any) -> tuple[Hashable, int]:
    return (prompt_id, int(sample_idx))


def read_samples(path: str | Path, *, allow_torn_tail: bool = True) -> list[dict[str, Any]]:
    """All complete sample lines of ``path``, checked: valid JSON objects, required fields, no duplicate pair.

    A last line without its newline (a write cut by a kill) is ignored when ``allow_torn_tail``.
    """
    path = Path(path)
    data = path.read_bytes()
    complete, _, tail = data.rpartition(b"\n")
    if tail and not allow_torn_tail:
        raise SampleFileError(f"{path}: the last line has no newline (a torn write).")
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Hashable, int], int] = {}
    for lineno, raw in enumerate(complete.split(b"\n") if complete else [], 1):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SampleFileError(f"{path}:{lineno}: not a valid JSON line ({err}).") from err
        if not isinstance(obj, dict):
            raise SampleFileError(f"{path}:{lineno}: expected a JSON object.")
        for f in REQUIRED_FIELDS:
            if f not in obj:
                raise SampleFileError(f"{path}:{lineno}: missing field {f!r}.")
        if not isinstance(obj["sample_idx"], int) or not isinstance(obj["prompt_id"], (int, str)):
            raise SampleFileError(f"{path}:{lineno}: prompt_id must be int or str and sample_idx an int.")
        key = _key(obj["prompt_id"], obj["sample_idx"])
        if key in seen:
            raise SampleFileError(
                f"{path}:{lineno}: duplicate (prompt_id, sample_idx)={key} (first on line {seen[key]})."
            )
        seen[key] = lineno
        rows.append(obj)
    return rows


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
                self._truncate_torn_tail()
                self.done = {_key(r["prompt_id"], r["sample_idx"]) for r in read_samples(self.path)}
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

    def _truncate_torn_tail(self) -> None:
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb+") as fh:
            # Find the last newline, reading backwards in blocks: lines can be long (prompts of MT-Bench-101).
            pos, block, keep = size, 1 << 16, 0
            while pos > 0:
                start = max(0, pos - block)
                fh.seek(start)
                chunk = fh.read(pos - start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                pos = start
            if keep < size:
                log.warning(
                    "%s: dropping a torn last line (%d bytes) left by an interrupted write.",
                    self.path,
                    size - keep,
                )
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
                self.truncated_bytes = size - keep

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
