"""OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/chat/completions, /v1/completions, plus the chat page.

Requests are validated before they are queued (OpenAI-style 4xx bodies), then run one at a time by a
`GenerationWorker`; streaming answers are server-sent events in OpenAI's chunk format.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedit.serve import protocol as P
from fedit.serve.generation import Event, GenerationWorker, Job, QueueFull
from fedit.serve.session import ModelSession


class _Channel:
    """Events from the worker thread delivered into the request's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, ev: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            ev = await self.queue.get()
            yield ev
            if ev[0] != "delta":
                return


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def model_card(session: ModelSession, name: str) -> dict[str, Any]:
    src = session.source(name)
    created = int(src.path.stat().st_mtime) if src.path is not None else 0
    info = {**src.info(), "template": session.templates[name].name}  # "auto" shown as what it resolved to
    return {"id": name, "object": "model", "created": created, "owned_by": "fedit", "fedit": info}


def create_app(session: ModelSession, limits: P.Limits | None = None, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving `session`; its worker thread starts with the app and stops at shutdown."""
    from fedit.serve.ui import add_ui

    limits = limits or P.Limits()
    prompt_limit = min(limits.max_prompt_tokens or session.context_len - 1, session.context_len - 1)
    state: dict[str, GenerationWorker] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["worker"] = GenerationWorker(session, max_queue=limits.max_queue)
        yield
        state.pop("worker").close()

    app = FastAPI(title="fedit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    # ---- errors: every failure answers in OpenAI's shape --------------------------------------------------------
    @app.exception_handler(P.APIError)
    async def _api_error(_: Request, e: P.APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(P.APIError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(P.bad(str(e.errors())[:500]).body(), status_code=400)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1/"):
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                err = P.APIError(401, "missing or incorrect API key (send Authorization: Bearer KEY)",
                                 code="invalid_api_key")
                return JSONResponse(err.body(), status_code=401)
        return await call_next(request)

    async def read_json(request: Request) -> dict[str, Any]:
        too_big = P.APIError(413, f"request body is larger than {limits.max_body_bytes} bytes",
                             code="request_too_large")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise too_big
        return P.parse_json(bytes(body))

    def check_length(ids: list[int], req: P.GenRequest) -> None:
        ctx = session.context_len
        if len(ids) > prompt_limit:
            raise P.bad(f"the prompt is {len(ids)} tokens; this server accepts at most {prompt_limit}",
                        param="messages" if req.messages is not None else "prompt", code="context_length_exceeded")
        room = ctx - len(ids)
        if req.settings.max_new_tokens > room:
            if req.max_tokens_given:
                raise P.bad(f"prompt ({len(ids)} tokens) + max_tokens ({req.settings.max_new_tokens}) exceeds the "
                            f"model's context length {ctx}", param="max_tokens", code="context_length_exceeded")
            req.settings.max_new_tokens = room

    def submit(req: P.GenRequest, ids: list[int], channel: _Channel) -> Job:
        job = Job(req.model, ids, req.settings, channel.emit, req.stops, lstrip=req.messages is not None)
        try:
            state["worker"].submit(job)
        except QueueFull:
            raise P.APIError(503, f"server busy: {limits.max_queue} requests already waiting; retry later",
                             code="overloaded") from None
        return job

    async def collect(channel: _Channel, job: Job) -> tuple[str, str, dict[str, int]]:
        parts: list[str] = []
        try:
            async for ev in channel.events():
                if ev[0] == "delta":
                    parts.append(ev[1])
                elif ev[0] == "done":
                    return "".join(parts), ev[1], ev[2]
                else:
                    raise P.APIError(500, f"generation failed: {ev[1]}")
        finally:
            job.cancel.set()  # a no-op after completion; stops the worker if the client went away
        raise P.APIError(500, "generation ended without a result")

    async def stream(channel: _Channel, job: Job, req: P.GenRequest, rid: str, chat: bool) -> AsyncIterator[str]:
        model = req.model
        try:
            if chat:
                yield _sse(P.chat_chunk(rid, model, {"role": "assistant", "content": ""}))
            async for ev in channel.events():
                if ev[0] == "delta":
                    yield _sse(P.chat_chunk(rid, model, {"content": ev[1]}) if chat
                               else P.completion_response(rid, model, ev[1], None, None, chunk=True))
                elif ev[0] == "done":
                    yield _sse(P.chat_chunk(rid, model, {}, ev[1]) if chat
                               else P.completion_response(rid, model, "", ev[1], None, chunk=True))
                    if req.include_usage:
                        yield _sse(P.chat_chunk(rid, model, {}, usage=ev[2], choices=False) if chat
                                   else {**P.completion_response(rid, model, "", None, ev[2]), "choices": []})
                else:
                    yield _sse(P.APIError(500, f"generation failed: {ev[1]}").body())
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()

    # ---- routes -------------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": session.names}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(session, n) for n in session.names]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in session.names:
            raise P.APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return model_card(session, model_id)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        req = P.parse_chat(await read_json(request), session.names, limits)
        ids = session.chat_ids(req.model, req.messages or [])
        return await run(req, ids, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Any:
        req = P.parse_completion(await read_json(request), session.names, limits)
        ids = session.text_ids(req.model, req.prompt or "")
        return await run(req, ids, chat=False)

    async def run(req: P.GenRequest, ids: list[int], chat: bool) -> Any:
        check_length(ids, req)
        channel = _Channel()
        job = submit(req, ids, channel)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            return StreamingResponse(stream(channel, job, req, rid, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, reason, usage = await collect(channel, job)
        if chat:
            return P.chat_response(rid, req.model, text, reason, usage)
        return P.completion_response(rid, req.model, text, reason, usage)

    add_ui(app, session)
    return app


def run_server(session: ModelSession, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               limits: P.Limits | None = None, log_level: str = "warning") -> None:
    """Serve until interrupted (uvicorn, one process: the model is loaded once)."""
    import uvicorn

    uvicorn.run(create_app(session, limits, api_key), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=3)
