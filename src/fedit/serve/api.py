"""OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/chat/completions, /v1/completions, plus the chat page.

Requests are validated before they are queued (OpenAI-style 4xx bodies, one-line messages), then run one at a time
by a `GenerationWorker`; streaming answers are server-sent events in OpenAI's chunk format. Under load the event
loop only moves bytes: prompts are rendered and tokenized on a small thread pool, generation runs on the worker
thread, a full queue answers 503 at once, and a request whose client goes away (streaming or not) is cancelled.
POSTs must say `Content-Type: application/json`, so a web page on another origin cannot send one as a "simple"
cross-site request (which needs no CORS preflight) and burn the server's compute.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from fedit.serve import protocol as P
from fedit.serve.generation import Event, GenerationWorker, Job, QueueFull
from fedit.serve.session import ModelSession

PROMPT_THREADS = 2  # chat-template rendering + tokenization run here, never on the event loop


class _Channel:
    """Events from the worker thread delivered into the request's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, ev: Event) -> None:
        if not self.loop.is_closed():  # at shutdown the loop may be gone before the worker finishes
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            ev = await self.queue.get()
            yield ev
            if ev[0] != "delta":
                return


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _error_response(e: P.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class ApiKeyMiddleware:
    """Pure ASGI check of `Authorization: Bearer KEY` on /v1/ (no request wrapping, so disconnects still reach
    the routes; Starlette's BaseHTTPMiddleware would wrap `receive`)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            auth = Headers(scope=scope).get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode("utf-8", "replace"), self.key):
                err = P.APIError(401, "missing or incorrect API key (send Authorization: Bearer KEY)",
                                 code="invalid_api_key")
                await _error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def model_card(session: ModelSession, name: str) -> dict[str, Any]:
    src = session.source(name)
    created = int(src.path.stat().st_mtime) if src.path is not None else 0
    info = {**src.info(), "template": session.templates[name].name}  # "auto" shown as what it resolved to
    return {"id": name, "object": "model", "created": created, "owned_by": "fedit", "fedit": info}


def _require_json(request: Request) -> None:
    """415 unless the body is declared as JSON (charset and other parameters are allowed)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise P.APIError(415, f"Content-Type must be application/json, got {P.show(ctype or None)}",
                         code="unsupported_media_type")


async def read_json(request: Request, limits: P.Limits) -> dict[str, Any]:
    """The JSON object in the body: 415 if not declared JSON, 413 past the size limit (declared or streamed),
    408 if the body does not arrive in time, 400 if it is not a JSON object."""
    _require_json(request)
    too_big = P.APIError(413, f"request body is larger than {limits.max_body_bytes} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_big

    async def body() -> bytes:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limits.max_body_bytes:
                raise too_big
        return bytes(data)

    try:
        raw = await asyncio.wait_for(body(), timeout=limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise P.APIError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s",
                         code="request_timeout") from None
    except ClientDisconnect:
        raise P.bad("the client disconnected before the body was complete", code="incomplete_body") from None
    return P.parse_json(raw)


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Wait for the client to hang up, then cancel its job (the body is read, so `receive` brings only that)."""
    while not job.cancel.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel.set()
            return
        await asyncio.sleep(0.05)  # not expected after the body; never spin on it


def create_app(session: ModelSession, limits: P.Limits | None = None, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving `session`; its worker thread starts with the app and stops at shutdown."""
    from fedit.serve.ui import add_ui

    limits = limits or P.Limits()
    prompt_limit = P.prompt_token_limit(limits, session.context_len)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["worker"] = app.state.worker = GenerationWorker(session, max_queue=limits.max_queue)
        state["prompts"] = ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="fedit-prompt")
        yield
        state.pop("worker").close()
        state.pop("prompts").shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="fedit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _error_handlers(app)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    async def off_loop(fn: Callable[[], list[int]]) -> list[int]:
        """Run prompt building on the prompt threads; a template that rejects the conversation is a 400."""
        from jinja2 import TemplateError

        try:
            return await asyncio.get_running_loop().run_in_executor(state["prompts"], fn)
        except (TemplateError, ValueError) as e:
            raise P.bad(f"cannot build the prompt: {e}", code="invalid_prompt") from None

    async def prompt_ids(req: P.GenRequest) -> list[int]:
        if req.messages is not None:
            return await off_loop(partial(session.chat_ids, req.model, req.messages))
        return await off_loop(partial(session.text_ids, req.model, req.prompt or ""))

    def check_length(ids: list[int], req: P.GenRequest) -> None:
        ctx = session.context_len
        param = "messages" if req.messages is not None else "prompt"
        if not ids:
            raise P.bad("the prompt is empty (0 tokens)", param=param)
        if len(ids) > prompt_limit:
            raise P.bad(f"the prompt is {len(ids)} tokens; this server accepts at most {prompt_limit}",
                        param=param, code="context_length_exceeded")
        room = ctx - len(ids)
        if req.settings.max_new_tokens > room:
            if req.max_tokens_given:
                raise P.bad(f"prompt ({len(ids)} tokens) + max_tokens ({req.settings.max_new_tokens}) exceeds the "
                            f"model's context length {ctx}", param="max_tokens", code="context_length_exceeded")
            req.settings.max_new_tokens = room

    def busy() -> P.APIError:
        return P.APIError(503, f"server busy: {limits.max_queue} requests already waiting; retry later",
                          code="overloaded")

    def submit(req: P.GenRequest, ids: list[int], channel: _Channel) -> Job:
        job = Job(req.model, ids, req.settings, channel.emit, req.stops, lstrip=req.messages is not None)
        try:
            state["worker"].submit(job)
        except QueueFull:
            raise busy() from None
        return job

    async def collect(request: Request, channel: _Channel, job: Job) -> tuple[str, str, dict[str, int]]:
        parts: list[str] = []
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            async for ev in channel.events():
                if ev[0] == "delta":
                    parts.append(ev[1])
                elif ev[0] == "done":
                    return "".join(parts), ev[1], ev[2]
                else:
                    raise P.APIError(500, f"generation failed: {ev[1]}")
        finally:
            watcher.cancel()
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
        worker = state.get("worker")
        jobs = {"waiting": worker.jobs.qsize(), "max_waiting": limits.max_queue, **worker.stats} if worker else {}
        return {"status": "ok", "models": session.names, "jobs": jobs}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(session, n) for n in session.names]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in session.names:
            raise P.APIError(404, f"the model {P.show(model_id)} does not exist", param="model",
                             code="model_not_found")
        return model_card(session, model_id)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        req = P.parse_chat(await read_json(request, limits), session.names, limits)
        return await run(request, req, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Any:
        req = P.parse_completion(await read_json(request, limits), session.names, limits)
        return await run(request, req, chat=False)

    async def run(request: Request, req: P.GenRequest, chat: bool) -> Any:
        if state["worker"].full():  # refuse before spending a thread on the prompt
            raise busy()
        ids = await prompt_ids(req)
        check_length(ids, req)
        channel = _Channel()
        job = submit(req, ids, channel)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            # the background task runs after the stream ends *or* the client disconnects (Starlette cancels it)
            return StreamingResponse(stream(channel, job, req, rid, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(job.cancel.set))
        text, reason, usage = await collect(request, channel, job)
        if chat:
            return P.chat_response(rid, req.model, text, reason, usage)
        return P.completion_response(rid, req.model, text, reason, usage)

    add_ui(app, session)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every failure answers in OpenAI's shape with a one-line message, never a traceback."""

    @app.exception_handler(P.APIError)
    async def _api_error(_: Request, e: P.APIError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _error_response(P.APIError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return _error_response(P.bad(str(e.errors())))

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, e: Exception) -> JSONResponse:  # a bug; uvicorn logs the traceback
        return _error_response(P.APIError(500, f"internal error ({type(e).__name__})"))


def run_server(session: ModelSession, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               limits: P.Limits | None = None, log_level: str = "warning") -> None:
    """Serve until interrupted (uvicorn, one process: the model is loaded once)."""
    import uvicorn

    uvicorn.run(create_app(session, limits, api_key), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=3)
