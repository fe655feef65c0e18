"""Request validation and incremental text (stop strings, partial characters) without a server."""

from __future__ import annotations

import pytest

from fedit.serve.generation import TextEmitter, _stop_holdback
from fedit.serve.protocol import APIError, Limits, parse_chat, parse_completion, parse_json

MODELS = ["m"]


def test_parse_chat_settings_and_defaults() -> None:
    req = parse_chat({"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                                                 {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                      "temperature": 0.5, "top_p": 0.8, "top_k": 20, "seed": -1, "repetition_penalty": 1.2,
                      "max_completion_tokens": 7, "stop": "\n", "stream": True,
                      "stream_options": {"include_usage": True}}, MODELS, Limits())
    assert req.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    s = req.settings
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.max_new_tokens) == (0.5, 0.8, 20, 1.2, 7)
    assert 0 <= s.seed < 2**31 and req.stops == ["\n"] and req.stream and req.include_usage and req.max_tokens_given
    d = parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}, MODELS, Limits(default_max_tokens=9))
    assert d.settings.max_new_tokens == 9 and not d.max_tokens_given and d.settings.temperature == 1.0


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}] * 3}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": "1"}, "seed"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": float("nan")}, "top_p"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
    ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model"),
])
def test_parse_chat_rejects(body: dict, param: str) -> None:
    with pytest.raises(APIError) as e:
        parse_chat(body, MODELS, Limits(max_messages=2))
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_parse_completion_and_json() -> None:
    assert parse_completion({"model": "m", "prompt": ["only one"]}, MODELS, Limits()).prompt == "only one"
    with pytest.raises(APIError, match="echo"):
        parse_completion({"model": "m", "prompt": "x", "echo": True}, MODELS, Limits())
    with pytest.raises(APIError) as e:
        parse_completion({"model": "zz", "prompt": "x"}, MODELS, Limits())
    assert e.value.status == 404 and e.value.code == "model_not_found"
    for raw in (b"{", b"\xff", b"[1]"):
        with pytest.raises(APIError):
            parse_json(raw)


class CharTokenizer:
    """Decodes ids as characters; id 0 is half of a two-byte character (shown as U+FFFD until completed)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text, i = "", 0
        while i < len(ids):
            if ids[i] == 0:
                text += "é" if i + 1 < len(ids) and ids[i + 1] == 0 else "\ufffd"
                i += 2
            else:
                text += chr(ids[i])
                i += 1
        return text


def _run(text_ids: list[list[int]], stops: list[str]) -> tuple[list[str], bool]:
    out: list[str] = []
    em = TextEmitter(CharTokenizer(), stops, out.append)
    for ids in text_ids:
        em.add(ids)
    em.finish()
    return out, em.hit_stop


def test_emitter_cuts_at_stop_spanning_tokens() -> None:
    out, hit = _run([[ord(c)] for c in "hello END world"], ["END"])
    assert "".join(out) == "hello " and hit
    assert all("E" not in piece for piece in out)  # the stop's prefix is never emitted


def test_emitter_waits_for_whole_characters_and_flushes() -> None:
    out, hit = _run([[ord("a")], [0], [0], [ord("b")]], [])
    assert out == ["a", "é", "b"] and not hit
    out, _ = _run([[ord("E"), ord("N")]], ["END"])
    assert "".join(out) == "EN"  # a stop prefix at the very end is real text


def test_stop_holdback() -> None:
    assert _stop_holdback("abc", ["cde"]) == 1 and _stop_holdback("abcd", ["cde", "bcdx"]) == 3
    assert _stop_holdback("abc", []) == 0
