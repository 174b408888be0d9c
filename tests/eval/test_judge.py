"""The judge client against a real chat-completions server on 127.0.0.1 (no mocks).

:class:`JudgeServer` is an ``http.server`` in a thread on an ephemeral loopback port. What it answers is
scripted by a marker in the reply under evaluation ("score=7", "malformed", "429-once", ...): ratings,
malformed judgments, HTTP 429 / 500 and a reply slower than the client's timeout. It counts every request
(per marker too), refuses to serve more than ``max_requests`` and shuts itself down after ``max_seconds``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ts2.eval.judge import (
    Judge,
    JudgeConfigError,
    JudgeSettings,
    JudgmentCache,
    cache_key,
    parse_rating,
)

_MARK = re.compile(r"MARK\{([^}]*)\}")


class JudgeServer:
    """A scripted OpenAI-compatible ``POST /v1/chat/completions`` on 127.0.0.1:<free port>.

    Markers (``MARK{...}`` anywhere in the last message): ``score=N`` -> "Rating: [[N]]"; ``malformed`` ->
    a judgment without [[N]], always; ``malformed-once`` -> malformed the first time, then [[6]];
    ``429-once`` / ``500-twice`` -> that HTTP error the first 1 / 2 times, then [[8]]; ``always-500``;
    ``slow-once`` -> the first reply sleeps ``slow_s`` (past the client timeout), then [[4]];
    ``ref`` -> [[9]] if the prompt shows a reference solution, else [[2]]; ``401`` -> HTTP 401; no marker ->
    ``[[1 + len(reply) % 10]]`` (:func:`length_rating`).
    """

    def __init__(self, *, max_requests: int = 500, max_seconds: float = 60.0, slow_s: float = 3.0) -> None:
        self.hits: Counter[str] = Counter()
        self.total = 0
        self.bodies: list[dict] = []
        self.max_requests = max_requests
        self.slow_s = slow_s
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                status, payload, delay = server._reply(self.path, self.headers, body)
                if delay:
                    time.sleep(delay)
                try:
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._timer = threading.Timer(max_seconds, self.stop)
        self._timer.daemon = True

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _reply(self, path, headers, body):
        with self._lock:
            self.total += 1
            self.bodies.append(body)
            if self.total > self.max_requests:
                return 503, {"error": "request budget of the test server exhausted"}, 0
            text = body["messages"][-1]["content"]
            found = _MARK.findall(text)
            mark = found[-1] if found else "none"
            self.hits[mark] += 1
            n = self.hits[mark]
        if path != "/v1/chat/completions" or headers.get("Authorization") != "Bearer test-key":
            return 404, {"error": "unknown route or key"}, 0

        def ok(content: str):
            return (
                200,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                },
                0,
            )

        if mark.startswith("score="):
            return ok(f"The reply is fine.\nRating: [[{mark[6:]}]]")
        if mark == "malformed":
            return ok("I would give this reply seven out of ten.")
        if mark == "malformed-once":
            return ok("Rating: 6/10") if n == 1 else ok("Rating: [[6]]")
        if mark == "429-once" and n == 1:
            return 429, {"error": "rate limited"}, 0
        if mark == "500-twice" and n <= 2:
            return 500, {"error": "server error"}, 0
        if mark in ("429-once", "500-twice"):
            return ok("Rating: [[8]]")
        if mark == "always-500":
            return 500, {"error": "server error"}, 0
        if mark == "slow-once":
            status, payload, _ = ok("Rating: [[4]]")
            return status, payload, (self.slow_s if n == 1 else 0)
        if mark == "ref":
            return ok("Rating: [[9]]" if "<reference solution" in text else "Rating: [[2]]")
        if mark == "401":
            return 401, {"error": "bad key"}, 0
        # no marker (a real model's answer): a rating derived from the reply's length, 1..10
        reply = re.search(r"<assistant reply to evaluate>\n(.*)\n</assistant reply", text, re.S)
        return ok(f"Rating: [[{length_rating(reply.group(1) if reply else text)}]]")


def length_rating(reply: str) -> int:
    """The loopback judge's rating of an unmarked reply: 1 + len(reply) % 10."""
    return 1 + len(reply) % 10


@pytest.fixture
def server(monkeypatch):
    with JudgeServer() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield srv


def fast(**kw) -> JudgeSettings:
    """Settings with short timeouts and backoff (the test's wall time stays small)."""
    base = dict(
        model="judge-test",
        concurrency=4,
        max_retries=3,
        timeout_s=1.5,  # generous for a loaded CI machine; the slow reply takes 3 s
        backoff_s=0.01,
        backoff_max_s=0.05,
        parse_retries=2,
        max_consecutive_failures=50,
    )
    base.update(kw)
    return JudgeSettings(**base)


def chat(mark: str, extra: str = "") -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "rate it"},
        {"role": "user", "content": f"reply: MARK{{{mark}}} {extra}"},
    ]


# ----------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Good answer. Rating: [[7]]", 7),
        ("Rating: [[ 10 ]]", 10),
        ("Rating: [[1]]", 1),
        ("[[7]] ... so again [[7]]", 7),  # repeated, consistent
        ("[[7]] or maybe [[8]]", None),  # ambiguous
        ("Rating: [[7.5]]", None),
        ("Rating: [[0]]", None),
        ("Rating: [[11]]", None),
        ("Rating: [[seven]]", None),
        ("Rating: 7/10", None),
        ("Rating: [7]", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_rating_is_strict(text, expected):
    assert parse_rating(text) == expected


# ----------------------------------------------------------------------------------------------- client
def test_ratings_retries_and_cache_with_a_real_server(server, tmp_path):
    prompts = [chat("score=3"), chat("score=10"), chat("429-once"), chat("500-twice"), chat("slow-once")]
    cache_file = tmp_path / "judge.jsonl"
    cache = JudgmentCache(cache_file)
    judge = Judge(fast(), cache)
    out = judge.judge_many(prompts)
    cache.close()
    assert [j.rating for j in out] == [3, 10, 8, 8, 4]
    # per prompt: 1 call each for the plain ratings; 429 once + success; 500 twice + success; a timed-out
    # call + success
    assert server.hits == Counter(
        {"score=3": 1, "score=10": 1, "429-once": 2, "500-twice": 3, "slow-once": 2}
    )
    assert [j.calls for j in out] == [1, 1, 2, 3, 2]
    assert judge.stats.http_calls == 9 and judge.stats.retries == 4
    assert judge.stats.errors == {"HTTP 429": 1, "HTTP 500": 2, "timeout": 1}
    assert judge.stats.failed == 0 and judge.stats.unparsed == 0
    assert judge.stats.prompt_tokens == 500  # usage summed over the 5 successful answers
    assert len(cache_file.read_text().splitlines()) == 5

    # a second run replays the cache: zero requests reach the server, same ratings
    before = server.total
    cache2 = JudgmentCache(cache_file)
    judge2 = Judge(fast(), cache2)
    again = judge2.judge_many(prompts)
    cache2.close()
    assert server.total == before
    assert [j.rating for j in again] == [3, 10, 8, 8, 4]
    assert judge2.stats.http_calls == 0 and judge2.stats.cache_hits == 5 and all(j.calls == 0 for j in again)

    # a different judge setting is a different cache key: it calls again
    cache3 = JudgmentCache(cache_file)
    assert Judge(fast(temperature=0.7), cache3).judge_many([chat("score=3")])[0].rating == 3
    cache3.close()
    assert server.hits["score=3"] == 2


def test_request_carries_model_and_settings(server):
    Judge(fast(model="my-judge", temperature=0.25, max_tokens=77)).judge_many([chat("score=5")])
    body = server.bodies[-1]
    assert body["model"] == "my-judge" and body["temperature"] == 0.25 and body["max_tokens"] == 77
    assert body["messages"] == chat("score=5")


def test_unparseable_judgments_are_reasked_then_counted(server, tmp_path):
    cache = JudgmentCache(tmp_path / "c.jsonl")
    judge = Judge(fast(parse_retries=2), cache)
    out = judge.judge_many([chat("malformed"), chat("malformed-once"), chat("score=2")])
    cache.close()
    assert [j.rating for j in out] == [None, 6, 2]
    assert (
        out[0].unparsed and not out[0].failed and out[0].text == "I would give this reply seven out of ten."
    )
    assert server.hits["malformed"] == 3 and server.hits["malformed-once"] == 2  # 1 + parse_retries re-asks
    assert judge.stats.unparsed == 1 and judge.stats.failed == 0
    # the re-asks are cached too: a rerun reproduces the same outcome without calls
    before = server.total
    cache = JudgmentCache(tmp_path / "c.jsonl")
    assert [
        j.rating
        for j in Judge(fast(parse_retries=2), cache).judge_many([chat("malformed"), chat("malformed-once")])
    ] == [None, 6]
    cache.close()
    assert server.total == before


def test_a_judge_that_keeps_failing_gives_failed_items_and_trips_the_breaker(server, tmp_path):
    cache = JudgmentCache(tmp_path / "c.jsonl")
    judge = Judge(fast(max_retries=2, concurrency=1, max_consecutive_failures=2), cache)
    out = judge.judge_many([chat("always-500", str(i)) for i in range(5)] + [chat("score=9")])
    cache.close()
    assert all(j.failed and j.rating is None for j in out)  # the breaker stops the last one too
    assert "gave up after 3 attempts" in out[0].error and "HTTP 500" in out[0].error
    assert "not sent" in out[2].error
    assert server.hits["always-500"] == 6 and server.hits["score=9"] == 0  # 2 items x (1 + 2 retries)
    assert judge.stats.failed == 6
    assert not (tmp_path / "c.jsonl").exists()  # failures are never cached (no file): a rerun retries them


def test_missing_endpoint_or_key_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeConfigError, match="set OPENAI_BASE_URL and OPENAI_API_KEY"):
        Judge(fast()).judge_many([chat("score=1")])
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(JudgeConfigError, match="set OPENAI_API_KEY"):
        Judge(fast()).judge_many([chat("score=1")])
    # fully cached prompts need no endpoint at all
    monkeypatch.delenv("OPENAI_BASE_URL")
    cache = JudgmentCache(tmp_path / "c.jsonl")
    s = fast()
    cache.put(cache_key(s.model, chat("score=1"), s.sampling(), 0), "Rating: [[1]]", model=s.model, attempt=0)
    assert Judge(s, cache).judge_many([chat("score=1")])[0].rating == 1
    cache.close()


def test_wrong_key_stops_the_run_with_a_clear_error(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    with pytest.raises(JudgeConfigError, match="HTTP 404.*OPENAI_API_KEY"):
        Judge(fast()).judge_many([chat("score=1")])
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with pytest.raises(JudgeConfigError, match="HTTP 401"):
        Judge(fast()).judge_many([chat("401")])


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = JudgmentCache(path)
    cache.put("k1", "Rating: [[3]]", model="m", attempt=0)
    cache.put("k2", "Rating: [[4]]", model="m", attempt=0)
    cache.close()
    with open(path, "ab") as fh:  # a kill in the middle of the third write
        fh.write(b'{"key": "k3", "model": "m", "text": "Rat')
    cache = JudgmentCache(path)
    assert len(cache) == 2 and cache.get("k2") == "Rating: [[4]]" and cache.get("k3") is None
    cache.put("k3", "Rating: [[5]]", model="m", attempt=0)
    cache.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["key"] for x in lines] == ["k1", "k2", "k3"]


def test_settings_from_config_reject_unknown_keys():
    assert JudgeSettings.from_config({"model": "gpt-4", "temperature": 0.0, "cache": None}).model == "gpt-4"
    with pytest.raises(ValueError, match="unknown setting.*tempreature"):
        JudgeSettings.from_config({"model": "gpt-4", "tempreature": 0.0})
    with pytest.raises(ValueError, match="model is empty"):
        JudgeSettings.from_config({"model": ""})
