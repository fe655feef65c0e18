"""The HTTP server under adversity, in process (real uvicorn on loopback, real httpx, the micro model).

Prompt building off the event loop, cancellation when a client hangs up, the prompt-token cap, JSON-only POSTs,
stop-string limits, and errors that are always one line.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import free_port  # tests/ is on sys.path (tests/serve/conftest.py)

from fedit.serve import protocol as P
from fedit.serve.api import create_app
from fedit.serve.generation import TextEmitter, _stop_holdback
from fedit.serve.session import ModelSession, parse_adapter_args


@dataclass
class Live:
    url: str
    app: Any
    session: ModelSession

    @property
    def worker(self) -> Any:
        return self.app.state.worker


@pytest.fixture(scope="module")
def live(micro_run: Path) -> Iterator[Live]:
    """`create_app` on a real uvicorn server in a thread of this process (so tests can hold the model lock)."""
    import uvicorn

    session = ModelSession.load(parse_adapter_args([str(micro_run)]))
    app = create_app(session, P.Limits(max_queue=4, body_timeout_s=2.0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield Live(f"http://127.0.0.1:{port}", app, session)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _chat(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "run", "messages": [{"role": "user", "content": text}], **kw}


def _wait(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _idle(live: Live) -> bool:
    return live.worker.current is None and live.worker.jobs.qsize() == 0


def test_non_streaming_request_is_cancelled_when_the_client_hangs_up(live: Live) -> None:
    before = dict(live.worker.stats)
    with live.session.lock:  # the model is busy: the request waits inside the worker
        with httpx.Client() as client, pytest.raises(httpx.ReadTimeout):
            client.post(live.url + "/v1/chat/completions", json=_chat("hello", max_tokens=200), timeout=1.0)
        # the client is gone; the server must notice while the request still waits
        noticed = _wait(lambda: live.worker.current is not None and live.worker.current.cancel.is_set())
    assert _wait(lambda: _idle(live))
    assert noticed, "the job of a disconnected non-streaming request was not cancelled"
    assert live.worker.stats["cancelled"] == before["cancelled"] + 1
    assert live.worker.stats["done"] == before["done"]


def test_streaming_request_is_cancelled_when_the_client_hangs_up(live: Live) -> None:
    before = dict(live.worker.stats)
    with live.session.lock, httpx.Client() as client:
        with client.stream("POST", live.url + "/v1/chat/completions", timeout=10,
                           json=_chat("hello", max_tokens=200, stream=True)) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the role chunk; then hang up
        noticed = _wait(lambda: live.worker.current is not None and live.worker.current.cancel.is_set())
    assert noticed and _wait(lambda: _idle(live))
    assert live.worker.stats["cancelled"] == before["cancelled"] + 1


def test_prompt_building_does_not_block_the_event_loop(live: Live) -> None:
    """A ~1 MB prompt takes seconds to tokenize; meanwhile /health must still answer promptly."""
    text = "word and more " * 70_000
    t0 = time.perf_counter()
    live.session.chat_ids("run", [{"role": "user", "content": text}])
    tokenize_s = time.perf_counter() - t0
    assert tokenize_s > 0.5, "the big prompt is too quick to tokenize to show anything on this machine"
    body = json.dumps(_chat(text)).encode()
    assert len(body) < P.Limits().max_body_bytes

    def big() -> httpx.Response:
        return httpx.post(live.url + "/v1/chat/completions", content=body, timeout=120,
                          headers={"Content-Type": "application/json"})

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(big)
        gaps = []
        while not fut.done():
            a = time.perf_counter()
            assert httpx.get(live.url + "/health", timeout=60).status_code == 200
            gaps.append(time.perf_counter() - a)
            time.sleep(0.02)
        r = fut.result()
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert len(gaps) >= 3 and max(gaps) < tokenize_s / 3, (max(gaps), tokenize_s)


def test_default_prompt_cap() -> None:
    limits = P.Limits()
    assert limits.max_prompt_tokens == P.DEFAULT_MAX_PROMPT_TOKENS == 8192
    assert P.prompt_token_limit(limits, 131_072) == 8192  # a long-context model is capped by default
    assert P.prompt_token_limit(limits, 512) == 511  # never above the context minus one
    assert P.prompt_token_limit(P.Limits(max_prompt_tokens=None), 131_072) == 131_071
    assert P.prompt_token_limit(P.Limits(max_prompt_tokens=100_000), 4096) == 4095


def test_serve_help_documents_the_prompt_cap() -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--max-prompt-tokens" in out and "8192" in out and "context - 1" in out


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                   "application/jsonx"])
def test_posts_must_be_json(live: Live, ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = httpx.post(live.url + "/v1/chat/completions", content=json.dumps(_chat("hi", max_tokens=2)),
                   headers=headers, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    ok = httpx.post(live.url + "/v1/chat/completions", content=json.dumps(_chat("hi", max_tokens=2)),
                    headers={"Content-Type": "application/json; charset=utf-8"}, timeout=30)
    assert ok.status_code == 200, ok.text


def test_stalled_body_gets_408(live: Live) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(live.url.rsplit(":", 1)[1]), timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "1000")
    conn.endheaders(b'{"model": "run"')  # 15 of the 1000 bytes promised, then silence
    r = conn.getresponse()
    assert r.status == 408 and json.loads(r.read())["error"]["code"] == "request_timeout"
    conn.close()


def test_stop_strings_are_capped() -> None:
    limits = P.Limits()
    ok = P.parse_chat(_chat("x", stop=["a" * limits.max_stop_chars]), ["run"], limits)
    assert ok.stops == ["a" * limits.max_stop_chars]
    with pytest.raises(P.APIError) as e:
        P.parse_chat(_chat("x", stop=["ok", "a" * (limits.max_stop_chars + 1)]), ["run"], limits)
    assert e.value.status == 400 and e.value.param == "stop" and "stop[1]" in e.value.message


def test_stop_holdback_is_linear() -> None:
    """Text that ends in nothing a stop begins with was the naive check's worst case: O(len(stop)^2) per token."""
    def cost(n: int) -> float:
        stop, text = "a" * n, "b" * n
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            assert _stop_holdback(text, [stop]) == 0
            best = min(best, time.perf_counter() - t0)
        return best

    assert _stop_holdback("xxaab", ["aabaa"]) == 3 and _stop_holdback("xaaba", ["aabaa"]) == 4
    assert _stop_holdback("abab", ["abac"]) == 2 and _stop_holdback("q", ["q"]) == 0
    small, large = cost(4_000), cost(64_000)
    assert large / small < 40, (small, large)  # linear: ~16x; quadratic: ~256x


def test_emitter_with_long_stop_matches_naive_cut() -> None:
    class Chars:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(map(chr, ids))

    stop = "ab" * 100 + "c"
    text = "ab" * 150 + "c tail"
    out: list[str] = []
    em = TextEmitter(Chars(), [stop], out.append)
    for ch in text:
        em.add([ord(ch)])
    em.finish()
    assert "".join(out) == text[: text.index(stop)] and em.hit_stop


@pytest.mark.parametrize("raw, message", [
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "nested too deeply"),
    (b'{"max_tokens": ' + b"9" * 5000 + b"}", "not acceptable JSON"),
    (b"\xef\xbb\xbf{}", "not valid JSON"),
])
def test_parse_json_rejects_cleanly(raw: bytes, message: str) -> None:
    with pytest.raises(P.APIError) as e:
        P.parse_json(raw)
    assert e.value.status == 400 and message in e.value.message and "\n" not in e.value.message


def test_unpaired_surrogates_are_400() -> None:
    for body in (_chat("\ud800"), {"model": "run", "prompt": "a\udfffb"}, _chat("x", stop=["\udc00"])):
        parse = P.parse_completion if "prompt" in body else P.parse_chat
        with pytest.raises(P.APIError) as e:
            parse(body, ["run"], P.Limits())
        assert e.value.status == 400 and "surrogate" in e.value.message


def test_error_messages_are_one_short_line() -> None:
    e = P.APIError(400, "first line\nsecond\r\nthird " + "x" * 5000)
    assert "\n" not in e.message and "\r" not in e.message and len(e.message) <= P.MAX_MESSAGE_CHARS
    with pytest.raises(P.APIError) as err:
        P.parse_chat(_chat("x", temperature=["y" * 100_000]), ["run"], P.Limits())
    assert len(err.value.message) < 200


def test_health_reports_jobs(live: Live) -> None:
    r = httpx.post(live.url + "/v1/chat/completions", json=_chat("hi", max_tokens=2), timeout=30)
    assert r.status_code == 200
    jobs = httpx.get(live.url + "/health", timeout=10).json()["jobs"]
    assert jobs["max_waiting"] == 4 and jobs["done"] >= 1 and {"waiting", "cancelled", "failed"} <= set(jobs)
