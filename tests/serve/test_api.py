"""`fedit serve` on the tiny base, driven by the official openai client and raw HTTP: behaviour, errors, concurrency."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

API_KEY = "test-key-123"  # the `server` fixture's key


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    assert server.api_key == API_KEY
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _post(server: Any, path: str, body: Any, key: str | None = API_KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers={**headers, "Content-Type": "application/json"},
                      timeout=60)


def _chat(client: openai.OpenAI, model: str, text: str, seed: int, stream: bool, max_tokens: int = 12) -> str:
    kw: dict[str, Any] = dict(model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
                              temperature=0.9, top_p=0.95, seed=seed)
    if not stream:
        return client.chat.completions.create(**kw).choices[0].message.content or ""
    parts = []
    for chunk in client.chat.completions.create(stream=True, **kw):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


def test_models_list_names_base_adapter_and_round(client: openai.OpenAI, tiny_run: Any) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"run", "r1"}
    final = models["run"].model_dump()["fedit"]
    assert final["round"] == 2 and final["adapter"].endswith("final") and final["base"].endswith("tiny")
    assert models["r1"].model_dump()["fedit"]["round"] == 1
    assert client.models.retrieve("r1").id == "r1"


def test_chat_plain_and_streaming_agree(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "Name a colour."}],
                                          max_tokens=12, temperature=0, seed=1)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 12
    chunks = list(client.chat.completions.create(
        model="run", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, temperature=0, seed=1,
        stream=True, stream_options={"include_usage": True}))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # really streamed in pieces
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == resp.usage.completion_tokens


def test_adapters_give_different_answers(client: openai.OpenAI) -> None:
    a = _chat(client, "run", "What is the capital of France?", seed=0, stream=False)
    b = _chat(client, "r1", "What is the capital of France?", seed=0, stream=False)
    assert a != b


def test_completions_plain_and_streaming(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="r1", prompt="The capital of Italy is", max_tokens=10, temperature=0)
    assert resp.choices[0].text and resp.usage is not None and resp.usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="r1", prompt="The capital of Italy is", max_tokens=10, temperature=0, stream=True) if c.choices)
    assert streamed == resp.choices[0].text


def test_stop_string_cuts_the_answer(client: openai.OpenAI) -> None:
    full = client.completions.create(model="run", prompt="Once upon a time", max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), text
    cut = client.completions.create(model="run", prompt="Once upon a time", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_match_sequential(client: openai.OpenAI) -> None:
    jobs = [("run", "Tell me about cats.", 1, False), ("r1", "Tell me about cats.", 1, True),
            ("run", "Count to five.", 2, True), ("run", "Tell me about cats.", 4, False),
            ("r1", "What is two plus two?", 5, True)]
    sequential = [_chat(client, *j) for j in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(lambda j: _chat(client, *j), jobs))
    assert concurrent == sequential
    assert len(set(sequential)) > 1  # different seeds/adapters really produce different text


def test_api_key_required(server: Any, client: openai.OpenAI) -> None:
    assert httpx.get(server.url + "/v1/models").status_code == 401
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.url + "/").status_code == 200  # the page itself is public; it asks for the key


GOOD = {"model": "run", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.mark.parametrize("body, status, param", [
    ({k: v for k, v in GOOD.items() if k != "messages"}, 400, "messages"),
    ({**GOOD, "messages": "hi"}, 400, "messages"),
    ({**GOOD, "messages": []}, 400, "messages"),
    ({**GOOD, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({**GOOD, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({**GOOD, "temperature": "hot"}, 400, "temperature"),
    ({**GOOD, "temperature": 7}, 400, "temperature"),
    ({**GOOD, "max_tokens": 10_000}, 400, "max_tokens"),
    ({**GOOD, "max_tokens": 2.5}, 400, "max_tokens"),
    ({**GOOD, "stream": "yes"}, 400, "stream"),
    ({**GOOD, "stop": 3}, 400, "stop"),
    ({**GOOD, "n": 2}, 400, "n"),
    ({k: v for k, v in GOOD.items() if k != "model"}, 400, "model"),
    ({**GOOD, "model": "nope"}, 404, "model"),
    ({**GOOD, "messages": [{"role": "user", "content": "word " * 400}]}, 400, "messages"),
    (["not", "an", "object"], 400, None),
])
def test_bad_chat_requests(server: Any, body: Any, status: int, param: str | None) -> None:
    r = _post(server, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"


def test_bad_requests_raw(server: Any, client: openai.OpenAI) -> None:
    r = _post(server, "/v1/chat/completions", None, raw=b'{"model": "run", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = _post(server, "/v1/chat/completions", {**GOOD, "messages": [{"role": "user", "content": "x" * 30_000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = _post(server, "/v1/completions", {"model": "run", "prompt": "word " * 400})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = _post(server, "/v1/completions", {"model": "run", "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="run", messages=[{"role": "user", "content": "hi"}], max_tokens=999)
    # the server is still healthy after all that
    assert client.chat.completions.create(**GOOD).choices[0].message.content is not None
