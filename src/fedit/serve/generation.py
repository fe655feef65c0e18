"""Streamed generation for serving: incremental text with stop strings, cancellation, and one FIFO worker thread.

Requests run one at a time on a single worker (the model is shared and adapters are switched per request), each
with its own seed set right before it runs, so concurrent requests give exactly the outputs they give alone.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedit.generation import GenerationSettings, cut_at_eos, eos_ids, eos_kwargs
from fedit.serve.session import ModelSession

# Events sent to a request's consumer: ("delta", text) | ("done", finish_reason, usage) | ("error", message)
Event = tuple[Any, ...]


def _failure(stop: str) -> list[int]:
    """KMP prefix function: fail[i] = length of the longest proper prefix of stop[:i+1] that is also its suffix."""
    fail = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k
    return fail


def _overlap(text: str, stop: str, fail: Sequence[int]) -> int:
    """Length of the longest proper prefix of `stop` that `text` ends with, in O(len(stop)) (KMP over the tail)."""
    if len(stop) < 2:
        return 0
    k = 0
    for c in text[-(len(stop) - 1):]:  # a proper prefix is at most len(stop) - 1 long, so k never reaches len(stop)
        while k and stop[k] != c:
            k = fail[k - 1]
        if stop[k] == c:
            k += 1
    return k


def _stop_holdback(text: str, stops: Sequence[str], fails: Sequence[Sequence[int]] | None = None) -> int:
    """How many trailing characters of `text` might be the start of a stop string (not safe to emit yet).

    Linear in the stop strings' length per call (the naive check of every prefix was quadratic).
    """
    fails = fails if fails is not None else [_failure(s) for s in stops]
    return max((_overlap(text, s, f) for s, f in zip(stops, fails, strict=True)), default=0)


class TextEmitter:
    """Turns generated token ids into text deltas: waits for complete UTF-8 characters, cuts at stop strings."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], emit: Callable[[str], None], lstrip: bool = False):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.fails = [_failure(s) for s in self.stops]  # once per request, not per token
        self.emit = emit
        self.lstrip = lstrip
        self.ids: list[int] = []
        self.sent = 0  # characters of the (stripped) decoded text already emitted
        self.hit_stop = False

    def _text(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return text.lstrip() if self.lstrip else text

    def add(self, ids: Sequence[int]) -> None:
        if self.hit_stop:
            return
        self.ids.extend(ids)
        text = self._text()
        cuts = [i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stops) if i >= 0]
        if cuts:
            self.hit_stop = True
            self._flush(text[: min(cuts)])
            return
        safe = len(text) - _stop_holdback(text, self.stops, self.fails)
        # An incomplete UTF-8 character is at most 3 pending bytes, each decoded as U+FFFD: hold back only those,
        # so a stream of invalid bytes is still sent as it comes instead of all at the end.
        held = 0
        while safe > self.sent and text[safe - 1] == "\ufffd" and held < 3:
            safe -= 1
            held += 1
        self._flush(text[:safe])

    def finish(self) -> None:
        if not self.hit_stop:
            self._flush(self._text())

    def _flush(self, text: str) -> None:
        if len(text) > self.sent:
            self.emit(text[self.sent:])
            self.sent = len(text)


class _Streamer:
    """transformers streamer protocol (put/end): forwards new token ids, dropping the prompt and the EOS."""

    def __init__(self, emitter: TextEmitter, eos_ids: set[int], cancel: threading.Event) -> None:
        self.emitter = emitter
        self.eos_ids = eos_ids
        self.cancel = cancel
        self.prompt_seen = False
        self.count = 0
        self.saw_eos = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        if self.cancel.is_set():  # nobody is listening; generate() stops at its next check
            return
        ids = [int(t) for t in value.reshape(-1).tolist()]
        self.count += len(ids)
        kept = cut_at_eos(ids, self.eos_ids)
        self.saw_eos = self.saw_eos or len(kept) < len(ids)
        if kept:
            self.emitter.add(kept)

    def end(self) -> None:
        if not self.cancel.is_set():
            self.emitter.finish()


def _stopper(flag: Callable[[], bool]) -> Any:
    from transformers import StoppingCriteria

    class Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), flag(), dtype=torch.bool, device=input_ids.device)

    return Stop()


@torch.no_grad()
def generate_stream(session: ModelSession, name: str, prompt_ids: list[int], settings: GenerationSettings,
                    emit: Callable[[str], None], stops: Sequence[str] = (), cancel: threading.Event | None = None,
                    lstrip: bool = False) -> tuple[str, dict[str, int]]:
    """Generate with adapter `name`, calling `emit(text)` as text becomes final; returns (finish_reason, usage).

    finish_reason: "stop" (EOS or a stop string), "length" (max_new_tokens reached) or "cancelled".
    Takes the session lock for the whole generation.
    """
    from transformers import StoppingCriteriaList

    emitter = TextEmitter(session.tokenizer, stops, emit, lstrip=lstrip)
    model = session.model
    eos = eos_ids(session.tokenizer, model)
    cancelled = cancel or threading.Event()
    streamer = _Streamer(emitter, eos, cancelled)
    seed = settings.seed if settings.seed is not None else random.randrange(2**31)
    device = next(model.parameters()).device
    with session.lock, session.use(name):
        torch.manual_seed(seed)  # per request, just before it runs: same seed -> same output, whatever ran before
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        stop = StoppingCriteriaList([_stopper(lambda: emitter.hit_stop or cancelled.is_set())])
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, stopping_criteria=stop,
                       **eos_kwargs(session.tokenizer, model), **settings.kwargs())
    if cancelled.is_set():
        reason = "cancelled"
    elif emitter.hit_stop or streamer.saw_eos:
        reason = "stop"
    else:
        reason = "length"
    usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": streamer.count,
             "total_tokens": len(prompt_ids) + streamer.count}
    return reason, usage


@dataclass
class Job:
    """One queued generation; `emit` receives its events (called on the worker thread)."""

    name: str
    prompt_ids: list[int]
    settings: GenerationSettings
    emit: Callable[[Event], None]
    stops: Sequence[str] = ()
    lstrip: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


class GenerationWorker:
    """A single thread that runs queued jobs in arrival order (the model is not safe to share across threads).

    `stats` counts what happened to the jobs (done, cancelled before or during generation, failed); /health shows it.
    """

    def __init__(self, session: ModelSession, max_queue: int = 32) -> None:
        self.session = session
        self.max_queue = max_queue
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.stats = {"done": 0, "cancelled": 0, "failed": 0}
        self.current: Job | None = None  # the job being generated (or waiting for the model lock)
        self.thread = threading.Thread(target=self._loop, name="fedit-generate", daemon=True)
        self.thread.start()

    def full(self) -> bool:
        return self.jobs.full()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancel.is_set():  # its client went away while it waited
                self.stats["cancelled"] += 1
                continue
            self.current = job
            self._run(job)
            self.current = None

    def _run(self, job: Job) -> None:
        try:
            reason, usage = generate_stream(self.session, job.name, job.prompt_ids, job.settings,
                                            lambda text: job.emit(("delta", text)), job.stops, job.cancel,
                                            job.lstrip)
        except Exception as e:  # report to the request; the worker keeps serving others
            self.stats["failed"] += 1
            _emit_quietly(job, ("error", f"{type(e).__name__}: {e}"))
            return
        self.stats["cancelled" if reason == "cancelled" else "done"] += 1
        _emit_quietly(job, ("done", reason, usage))


def _emit_quietly(job: Job, ev: Event) -> None:
    """Deliver a final event; a consumer that is gone (closed event loop) must not stop the worker thread."""
    with contextlib.suppress(Exception):
        job.emit(ev)


def iter_generate(session: ModelSession, name: str, prompt_ids: list[int], settings: GenerationSettings,
                  stops: Sequence[str] = (), lstrip: bool = True) -> Iterator[str]:
    """Text deltas as a plain iterator (generation runs on a helper thread): the terminal chat uses this."""
    q: queue.Queue[Event] = queue.Queue()
    cancel = threading.Event()

    def run() -> None:
        try:
            reason, usage = generate_stream(session, name, prompt_ids, settings, lambda t: q.put(("delta", t)),
                                            stops, cancel, lstrip)
            q.put(("done", reason, usage))
        except Exception as e:
            q.put(("error", f"{type(e).__name__}: {e}"))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        while True:
            ev = q.get()
            if ev[0] == "delta":
                yield ev[1]
            elif ev[0] == "error":
                raise RuntimeError(ev[1])
            else:
                return
    finally:
        cancel.set()  # the consumer stopped early (Ctrl-C): end the generation
        t.join()
