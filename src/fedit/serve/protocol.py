"""OpenAI-style request validation and response shapes for the HTTP API (pure functions, no web framework)."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fedit.generation import GenerationSettings


@dataclass
class Limits:
    """What one request may ask for; enforced before it is queued."""

    max_body_bytes: int = 1 << 20  # 1 MiB of JSON
    max_tokens: int = 512  # per request (max_tokens / max_completion_tokens)
    default_max_tokens: int = 128
    max_prompt_tokens: int | None = None  # None = the model's context length minus 1
    max_messages: int = 256
    max_stop: int = 4
    max_queue: int = 32  # waiting requests; more get 503


class APIError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None) -> None:
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


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _number(data: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = data.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"{key} must be a number, got {json.dumps(v)}", param=key)
    if not lo <= v <= hi:
        raise bad(f"{key} must be between {lo:g} and {hi:g}, got {v}", param=key)
    return float(v)


def _int(data: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = data.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{key} must be an integer, got {json.dumps(v)}", param=key)
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
        raise bad(f"model must be a string, got {json.dumps(m)}", param="model")
    if m not in models:
        raise APIError(404, f"the model {m!r} does not exist; available: {', '.join(models)}", param="model",
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
        raise bad(f"stream must be a boolean, got {json.dumps(stream)}", param="stream")
    stop = data.get("stop")
    stops: list[str]
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= limits.max_stop:
        stops = list(stop)
    else:
        raise bad(f"stop must be a string or a list of at most {limits.max_stop} strings", param="stop")
    opts = data.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad("stream_options must be an object", param="stream_options")
    include_usage = bool((opts or {}).get("include_usage", False))
    return GenRequest(model, settings, stream, [s for s in stops if s], include_usage, max_tokens_given=given)


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
            raise bad(f"{where} must be an object, got {json.dumps(m)[:80]}", param=where)
        role = m.get("role")
        if role == "developer":  # newer OpenAI clients send the system prompt under this role
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad(f"{where}.role must be one of system, user, assistant, got {json.dumps(role)}",
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
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return "".join(p["text"] for p in c)
    raise bad(f"{where} must be a string or a list of text parts, got {json.dumps(c)[:80]}", param=where)


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
    req.prompt = prompt
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
