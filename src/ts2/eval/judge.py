"""An LLM judge behind an OpenAI-compatible chat-completions endpoint (MT-Bench-101, PAPER.md §4).

The paper's judge is GPT-4; any server that speaks ``POST {base_url}/chat/completions`` works (OpenAI, a
local vLLM server, ...). The endpoint and key come from the environment, never from config files:
``OPENAI_BASE_URL`` (e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``) and
``OPENAI_API_KEY``. The judge model, temperature, token limit, concurrency, retries and timeout are
:class:`JudgeSettings` (``eval.metrics.judge`` in ``conf/eval/mt_bench_101.yaml``).

Robustness, so that a judged run is cheap to resume and never silently wrong:

- **Retries** with exponential backoff (``backoff_s * 2**k``, capped at ``backoff_max_s``, +-25% jitter; a
  ``Retry-After`` header is honoured up to the cap) on connection errors, timeouts, HTTP 429 and 5xx, each
  logged at INFO with its attempt number and wait. HTTP 401/403/404 stop the whole run at once (a wrong key,
  URL or model name cannot be fixed by retrying), and so does an endpoint that cannot be reached before it
  has answered once (a host name that does not resolve, a refused connection: a wrong ``OPENAI_BASE_URL`` or
  a server that is not running); other 4xx fail that one request.
- **Never silent**: while calls are in flight, :meth:`Judge.judge_many` logs its progress at least every
  ``heartbeat_s`` (15 s); with the default backoff (at most 20 s +-25%) no wait between two log lines is
  longer than 30 s.
- **Strict parsing**: a rating is ``[[N]]`` with N an integer in 1..10 (:func:`parse_rating`). An
  unparseable judgment is asked again (``parse_retries`` more calls); if it stays unparseable it is returned
  with ``rating=None`` and counted by the caller, never dropped.
- **Cache**: every answered call is appended to a JSONL file (:class:`JudgmentCache`), keyed by the sha256 of
  (judge model, the full messages, the sampling settings, the attempt number). A rerun replays the same
  answers without a single call; a killed run loses at most the calls in flight (a torn last line is
  repaired on open). Calls that failed are not cached, so a rerun retries them.
- **Circuit breaker**: after ``max_consecutive_failures`` requests in a row fail, the remaining requests are
  not sent and come back failed; the scorer then marks its result incomplete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("ts2.judge")

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
_RATING = re.compile(r"\[\[\s*([^\[\]]*?)\s*\]\]")


class JudgeConfigError(RuntimeError):
    """The judge cannot be used at all (no endpoint or key, wrong key, URL or model): fix the setup."""


class JudgeCallError(RuntimeError):
    """One judge call failed after all its retries (or was not sent after the circuit breaker opened)."""


@dataclass(frozen=True)
class JudgeSettings:
    """How the judge is called (``eval.metrics.judge``). ``temperature``/``max_tokens``/``model`` are part
    of every cache key; the robustness knobs (concurrency, retries, timeouts) are not."""

    model: str = "gpt-4"
    temperature: float = 0.0
    max_tokens: int = 1024
    concurrency: int = 8
    max_retries: int = 6  # extra attempts per call after a transport error / 429 / 5xx
    timeout_s: float = 120.0  # per HTTP request
    backoff_s: float = 2.0  # first retry waits backoff_s, then 2x, 4x, ... (with +-25% jitter)
    backoff_max_s: float = 20.0  # with the jitter, no retry waits more than 25 s
    parse_retries: int = 2  # extra calls when a judgment has no valid [[N]]
    max_consecutive_failures: int = 20  # circuit breaker
    base_url: str | None = None  # None: $OPENAI_BASE_URL
    heartbeat_s: float = 15.0  # a progress line at least this often while calls are in flight

    @classmethod
    def from_config(cls, cfg: Any) -> JudgeSettings:
        """From a mapping (an OmegaConf node or dict); unknown keys are an error naming them."""
        data = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known - {"cache"})
        if unknown:
            raise ValueError(f"eval.metrics.judge: unknown setting(s) {unknown}; known: {sorted(known)}.")
        data.pop("cache", None)
        s = cls(**data)
        if not s.model:
            raise ValueError("eval.metrics.judge.model is empty: name the judge model (e.g. gpt-4).")
        if (
            s.concurrency < 1
            or s.max_retries < 0
            or s.parse_retries < 0
            or s.timeout_s <= 0
            or s.backoff_s < 0
            or s.backoff_max_s < 0
            or s.heartbeat_s <= 0
        ):
            raise ValueError(
                "eval.metrics.judge: concurrency must be >= 1, max_retries and parse_retries >= 0, timeout_s and "
                "heartbeat_s > 0, backoff_s and backoff_max_s >= 0."
            )
        return s

    def sampling(self) -> dict[str, Any]:
        """The request settings that change the judge's answer (and so belong in the cache key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


def parse_rating(text: str | None) -> int | None:
    """The rating of a judgment: the integer N of ``[[N]]``, 1 <= N <= 10, or None.

    Strict: ``[[7]]`` and ``[[ 7 ]]`` give 7; ``[[7.5]]``, ``[[11]]``, ``[[seven]]``, a bare ``7/10`` or no
    brackets give None. Several ``[[..]]`` that disagree (or any invalid one) give None too: an ambiguous
    judgment is not a rating.
    """
    if not text:
        return None
    found = _RATING.findall(text)
    if not found:
        return None
    values = set()
    for raw in found:
        if not re.fullmatch(r"10|[1-9]", raw):
            return None
        values.add(int(raw))
    return values.pop() if len(values) == 1 else None


def cache_key(model: str, messages: Sequence[dict[str, str]], sampling: dict[str, Any], attempt: int) -> str:
    """sha256 of everything that determines a judge answer, plus the attempt number (re-asks differ)."""
    blob = json.dumps(
        {"model": model, "messages": list(messages), "sampling": sampling, "attempt": attempt},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgmentCache:
    """Append-only JSONL of judge answers: ``{"key", "model", "attempt", "text", "created"}`` per line.

    One ``write`` of one whole line per answer (``O_APPEND``, then ``fsync``), so a kill leaves at worst a
    torn last line, which :func:`ts2.sampling.store.repair_torn_tail` removes on open. ``path=None``: in
    memory only.
    """

    def __init__(self, path: str | Path | None) -> None:
        from ts2.sampling.store import iter_json_lines, repair_torn_tail

        self.path = Path(path) if path else None
        self._mem: dict[str, str] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is None:
            return
        if self.path.exists():
            dropped = repair_torn_tail(self.path)
            if dropped:
                log.warning(
                    "%s: dropped a torn last line (%d bytes) left by a killed run.", self.path, dropped
                )
            for lineno, obj in iter_json_lines(self.path):
                if not isinstance(obj.get("key"), str) or not isinstance(obj.get("text"), str):
                    raise ValueError(
                        f"{self.path}:{lineno}: a judge-cache line needs string 'key' and 'text'."
                    )
                self._mem[obj["key"]] = obj["text"]

    def __len__(self) -> int:
        return len(self._mem)

    def get(self, key: str) -> str | None:
        return self._mem.get(key)

    def put(self, key: str, text: str, *, model: str, attempt: int) -> None:
        with self._lock:
            if key in self._mem:
                return
            self._mem[key] = text
            if self.path is not None:
                if (
                    self._fd is None
                ):  # created with the first answer: a judge that never answers leaves no file
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                line = {"key": key, "model": model, "attempt": attempt, "text": text, "created": time.time()}
                os.write(self._fd, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
                os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Judgment:
    """The outcome of judging one item: its rating (None: unparsed or failed), the last judge text, the
    number of HTTP calls made for it (0 when fully cached), and the error of a failed item."""

    rating: int | None
    text: str | None
    attempts: int  # judge answers read (cached or new)
    calls: int  # HTTP requests actually sent, retries included
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def unparsed(self) -> bool:
        return self.error is None and self.rating is None


@dataclass
class JudgeStats:
    """Counters of one :meth:`Judge.judge_many` run (reported in the metrics file)."""

    items: int = 0
    http_calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    unparsed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Transient(Exception):
    """A failure worth retrying; ``wait`` is a server-suggested delay (Retry-After) or None."""

    def __init__(self, msg: str, wait: float | None = None) -> None:
        super().__init__(msg)
        self.wait = wait


def endpoint_from_env(base_url: str | None = None) -> tuple[str, str]:
    """``(base_url, api_key)`` from the settings / environment, or a :class:`JudgeConfigError` saying what to set."""
    url = base_url or os.environ.get(BASE_URL_ENV, "").strip()
    key = os.environ.get(API_KEY_ENV, "").strip()
    missing = [name for name, v in ((BASE_URL_ENV, url), (API_KEY_ENV, key)) if not v]
    if missing:
        raise JudgeConfigError(
            f"The judge needs an OpenAI-compatible endpoint: set {' and '.join(missing)}. "
            f"{BASE_URL_ENV}=https://api.openai.com/v1 for GPT-4 (the paper's judge) or e.g. "
            f"http://localhost:8000/v1 for a local vLLM server (`vllm serve <model>`); {API_KEY_ENV} is your "
            f"API key (any non-empty string for a server without authentication). Cached judgments need neither."
        )
    return url.rstrip("/"), key


class Judge:
    """The chat-completions client: :meth:`judge_many` rates a list of message lists concurrently."""

    def __init__(
        self,
        settings: JudgeSettings,
        cache: JudgmentCache | None = None,
        *,
        sleep: Any = time.sleep,
    ) -> None:
        self.settings = settings
        self.cache = cache if cache is not None else JudgmentCache(None)
        self.stats = JudgeStats()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self._breaker_open = False
        self._fatal: JudgeConfigError | None = None
        self._endpoint: tuple[str, str] | None = None
        self._answered = False  # the endpoint has answered once: a refused connection is then worth a retry

    # ------------------------------------------------------------------ one HTTP call
    def _post(self, messages: Sequence[dict[str, str]]) -> str:
        url, key = self._endpoint  # type: ignore[misc]
        s = self.settings
        body = {"model": s.model, "messages": list(messages), **s.sampling()}
        req = urllib.request.Request(
            f"{url}/chat/completions",
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            method="POST",
        )
        with self._lock:
            self.stats.http_calls += 1
        try:
            with urllib.request.urlopen(req, timeout=s.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            if err.code in (401, 403, 404):
                raise JudgeConfigError(
                    f"Judge endpoint {url}/chat/completions answered HTTP {err.code} ({detail.strip()}): check "
                    f"{API_KEY_ENV}, {BASE_URL_ENV} and eval.metrics.judge.model={s.model!r}."
                ) from err
            if err.code == 429 or err.code >= 500:
                wait = _retry_after(err.headers.get("Retry-After") if err.headers else None)
                raise _Transient(f"HTTP {err.code}", wait) from err
            raise JudgeCallError(f"HTTP {err.code} from the judge: {detail.strip()}") from err
        except TimeoutError as err:
            raise _Transient("timeout") from err
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Transient("timeout") from err
            if isinstance(reason, socket.gaierror | ConnectionRefusedError) and not self._answered:
                cause = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
                raise JudgeConfigError(
                    f"Judge endpoint {url} is unreachable ({cause}): check {BASE_URL_ENV} (or "
                    f"eval.metrics.judge.base_url) and that the server is running."
                ) from err
            raise _Transient(f"connection error ({reason})") from err
        try:
            data = json.loads(payload)
            text = data["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
            raise _Transient("malformed response body") from err
        if not isinstance(text, str):
            raise _Transient("response content is not a string")
        usage = data.get("usage") or {}
        with self._lock:
            self._answered = True
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        return text

    def _call_with_retries(self, messages: Sequence[dict[str, str]]) -> tuple[str, int]:
        """One judge answer; returns (text, HTTP calls made). Raises JudgeCallError when retries run out."""
        s, calls = self.settings, 0
        for k in range(s.max_retries + 1):
            if self._fatal is not None or self._breaker_open:
                raise JudgeCallError("not sent: the judge run was stopped (see the first error)")
            try:
                calls += 1
                return self._post(messages), calls
            except _Transient as err:
                with self._lock:
                    self.stats.errors[str(err)] = self.stats.errors.get(str(err), 0) + 1
                if k == s.max_retries:
                    raise JudgeCallError(f"gave up after {calls} attempts; last error: {err}") from err
                with self._lock:
                    self.stats.retries += 1
                delay = min(s.backoff_max_s, s.backoff_s * 2**k) * random.uniform(0.75, 1.25)
                if err.wait is not None:
                    delay = max(delay, min(err.wait, s.backoff_max_s))
                log.info(
                    "judge call failed (%s): attempt %d of %d in %.1f s", err, k + 2, s.max_retries + 1, delay
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ one item
    def judge_one(self, messages: Sequence[dict[str, str]]) -> Judgment:
        """Rate one judge prompt: cached answers first, new calls as needed, re-asking unparseable ones."""
        s = self.settings
        text, calls, attempts = None, 0, 0
        try:
            for attempt in range(s.parse_retries + 1):
                key = cache_key(s.model, messages, s.sampling(), attempt)
                text = self.cache.get(key)
                attempts += 1
                if text is None:
                    if self._endpoint is None:
                        self._endpoint = endpoint_from_env(s.base_url)
                    text, n = self._call_with_retries(messages)
                    calls += n
                    self.cache.put(key, text, model=s.model, attempt=attempt)
                else:
                    with self._lock:
                        self.stats.cache_hits += 1
                rating = parse_rating(text)
                if rating is not None:
                    self._note_success()
                    return Judgment(rating, text, attempts, calls)
            self._note_success()
            return Judgment(None, text, attempts, calls)
        except JudgeConfigError as err:
            with self._lock:
                self._fatal = self._fatal or err
            return Judgment(None, text, attempts, calls, error=str(err))
        except JudgeCallError as err:
            self._note_failure()
            return Judgment(None, text, attempts, calls, error=str(err))

    def _note_success(self) -> None:
        with self._lock:
            self._consecutive_failures = 0

    def _note_failure(self) -> None:
        with self._lock:
            self._consecutive_failures += 1
            if (
                self._consecutive_failures >= self.settings.max_consecutive_failures
                and not self._breaker_open
            ):
                self._breaker_open = True
                log.error(
                    "The judge failed %d requests in a row: not sending the rest (result will be incomplete).",
                    self._consecutive_failures,
                )

    # ------------------------------------------------------------------ many items
    def judge_many(self, prompts: Sequence[Sequence[dict[str, str]]]) -> list[Judgment]:
        """Rate every prompt (message list), at most ``concurrency`` calls at a time, in input order.

        Raises :class:`JudgeConfigError` when the endpoint cannot be used at all (missing env vars, HTTP
        401/403/404); answers cached so far stay cached. Per-item failures come back as failed judgments.
        """
        s = self.settings
        self.stats.items += len(prompts)
        uncached = [p for p in prompts if self.cache.get(cache_key(s.model, p, s.sampling(), 0)) is None]
        if uncached:
            self._endpoint = endpoint_from_env(s.base_url)
            log.info("judge %s: %d of %d prompts need calls", s.model, len(uncached), len(prompts))
        with ThreadPoolExecutor(max_workers=s.concurrency) as pool:
            futures = [pool.submit(self.judge_one, p) for p in prompts]
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=s.heartbeat_s)
                if pending and uncached:
                    log.info(
                        "judge %s: %d of %d prompts done (%d HTTP calls, %d retries so far)",
                        s.model,
                        len(futures) - len(pending),
                        len(futures),
                        self.stats.http_calls,
                        self.stats.retries,
                    )
            out = [f.result() for f in futures]
        if self._fatal is not None:
            raise self._fatal
        for j in out:
            self.stats.unparsed += j.unparsed
            self.stats.failed += j.failed
        return out


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
