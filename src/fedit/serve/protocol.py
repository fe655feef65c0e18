"""OpenAI-style request validation and response shapes for the HTTP API (pure functions, no web framework)."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fedit.generation import GenerationSettings

DEFAULT_MAX_PROMPT_TOKENS = 8192
MAX_JSON_DEPTH = 32  # OpenAI requests nest 4 deep (body > messages > message > content part); 32 is generous
MAX_MESSAGE_CHARS = 300  # error messages echo at most this much (one line, never the whole bad value)


@dataclass
class Limits:
    """What one request may ask for; enforced before it is queued."""

    max_body_bytes: int = 1 << 20  # 1 MiB of JSON
    body_timeout_s: float = 30.0  # the whole body must arrive within this (a client that stalls gets 408)
    max_tokens: int = 512  # per request (max_tokens / max_completion_tokens)
    default_max_tokens: int = 128
    max_prompt_tokens: int | None = DEFAULT_MAX_PROMPT_TOKENS  # None = the model's context length minus 1
    max_messages: int = 256
    max_stop: int = 4
    max_stop_chars: int = 256  # per stop string
    max_queue: int = 32  # waiting requests; more get 503


def prompt_token_limit(limits: Limits, context_len: int) -> int:
    """The longest prompt accepted: the configured cap (8192 by default), never above the context minus 1."""
    room = max(1, context_len - 1)
    return room if limits.max_prompt_tokens is None else min(limits.max_prompt_tokens, room)


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line (whitespace runs become one space), cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def show(value: Any, limit: int = 80) -> str:
    """A short JSON rendering of a client's value for an error message (never the whole of a huge value)."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class APIError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None) -> None:
        message = one_line(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, counted without recursion and given up on past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if not isinstance(v, (dict, list)):
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; anything else (bad UTF-8, bad JSON, too deep, not an object) is a 400."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"request body is not valid UTF-8 (byte {e.start}: {e.reason})", code="invalid_json") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"request body is not valid JSON ({e})", code="invalid_json") from None
    except RecursionError:
        raise bad(f"request body is nested too deeply (more than {MAX_JSON_DEPTH} levels)",
                  code="invalid_json") from None
    except ValueError as e:  # e.g. an integer literal longer than Python converts (4300 digits)
        raise bad(f"request body is not acceptable JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad(f"request body must be a JSON object, got {type(data).__name__}")
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise bad(f"request body is nested too deeply (more than {MAX_JSON_DEPTH} levels)", code="invalid_json")
    return data


def text_value(value: str, where: str) -> str:
    """`value` if it is valid Unicode: JSON escapes can smuggle in unpaired surrogates, which no tokenizer encodes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad(f"{where} contains an unpaired surrogate (U+{ord(value[e.start]):04X}); send valid Unicode",
                  param=where) from None
    return value


def _number(data: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = data.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"{key} must be a number, got {show(v)}", param=key)
    if not lo <= v <= hi:
        raise bad(f"{key} must be between {lo:g} and {hi:g}, got {v}", param=key)
    return float(v)


def _int(data: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = data.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{key} must be an integer, got {show(v)}", param=key)
    if not lo <= v <= hi:
        raise bad(f"{key} must be between {lo} and {hi}, got {v}", param=key)
    return v


@dataclass
class GenRequest:
    """A validated completion request."""

    model: str
    settings: GenerationSettings
    stream: bool
    stops: list[str] = field(default_factory=list)
    include_usage: bool = False
    messages: list[dict[str, str]] | None = None  # chat
    prompt: str | None = None  # completions
    max_tokens_given: bool = False


def _model(data: dict[str, Any], models: list[str]) -> str:
    m = data.get("model")
    if m is None:
        raise bad("missing required parameter: model", param="model")
    if not isinstance(m, str):
        raise bad(f"model must be a string, got {show(m)}", param="model")
    if m not in models:
        raise APIError(404, f"the model {show(m)} does not exist; available: {', '.join(models)}", param="model",
                       code="model_not_found")
    return m


def _common(data: dict[str, Any], models: list[str], limits: Limits) -> GenRequest:
    model = _model(data, models)
    _int(data, "n", 1, 1, 1)  # one choice per request
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    given = data.get(key) is not None
    max_tokens = _int(data, key, limits.default_max_tokens, 1, limits.max_tokens)
    seed = _int(data, "seed", None, -(2**63), 2**63 - 1)
    temperature = _number(data, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(data, "top_p", 1.0, 0.0, 1.0)
    settings = GenerationSettings(
        max_new_tokens=int(max_tokens or limits.default_max_tokens),
        temperature=0.0 if top_p == 0 else temperature,  # top_p 0 keeps only the most likely token
        top_p=top_p or 1.0,
        top_k=max(0, _int(data, "top_k", 0, -1, 100_000) or 0),  # extension (vLLM-style); -1 or 0 = off
        repetition_penalty=_number(data, "repetition_penalty", 1.0, 0.01, 10.0),  # extension
        seed=None if seed is None else seed % (2**31),
    )
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad(f"stream must be a boolean, got {show(stream)}", param="stream")
    stops = _stops(data.get("stop"), limits)
    opts = data.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad("stream_options must be an object", param="stream_options")
    include_usage = (opts or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad(f"stream_options.include_usage must be a boolean, got {show(include_usage)}",
                  param="stream_options.include_usage")
    return GenRequest(model, settings, stream, [s for s in stops if s], include_usage, max_tokens_given=given)


def _stops(stop: Any, limits: Limits) -> list[str]:
    """The stop strings: a string or a list of at most `max_stop`, each at most `max_stop_chars` long."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > limits.max_stop:
        raise bad(f"stop must be a string or a list of at most {limits.max_stop} strings", param="stop")
    for i, s in enumerate(stops):
        if len(s) > limits.max_stop_chars:
            raise bad(f"stop[{i}] is {len(s)} characters long; at most {limits.max_stop_chars} are allowed",
                      param="stop")
        text_value(s, "stop")
    return list(stops)


def parse_chat(data: dict[str, Any], models: list[str], limits: Limits) -> GenRequest:
    msgs = data.get("messages")
    if msgs is None:
        raise bad("missing required parameter: messages", param="messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages must be a non-empty array of {role, content} objects", param="messages")
    if len(msgs) > limits.max_messages:
        raise bad(f"too many messages: {len(msgs)} > {limits.max_messages}", param="messages")
    out: list[dict[str, str]] = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object, got {show(m)}", param=where)
        role = m.get("role")
        if role == "developer":  # newer OpenAI clients send the system prompt under this role
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad(f"{where}.role must be one of system, user, assistant, got {show(role)}",
                      param=f"{where}.role")
        out.append({"role": role, "content": _content(m.get("content"), f"{where}.content")})
    if out[-1]["role"] != "user":
        raise bad("the last message must be the user's (the model answers it)", param="messages")
    req = _common(data, models, limits)
    req.messages = out
    return req


def _content(c: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(c, str):
        return text_value(c, where)
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return text_value("".join(p["text"] for p in c), where)
    raise bad(f"{where} must be a string or a list of text parts, got {show(c)}", param=where)


def parse_completion(data: dict[str, Any], models: list[str], limits: Limits) -> GenRequest:
    prompt = data.get("prompt")
    if prompt is None:
        raise bad("missing required parameter: prompt", param="prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("prompt must be a string (batches of prompts are not supported)", param="prompt")
    if data.get("echo"):
        raise bad("echo is not supported", param="echo")
    req = _common(data, models, limits)
    req.prompt = text_value(prompt, "prompt")
    return req


# ---- responses ----------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_response(rid: str, model: str, text: str, reason: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason}],
            "usage": usage}


def chat_chunk(rid: str, model: str, delta: dict[str, Any], reason: str | None = None,
               usage: dict[str, int] | None = None, choices: bool = True) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                             "model": model,
                             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]
                             if choices else []}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def completion_response(rid: str, model: str, text: str, reason: str | None, usage: dict[str, int] | None,
                        chunk: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}
    if usage is not None or not chunk:
        out["usage"] = usage
    return out
