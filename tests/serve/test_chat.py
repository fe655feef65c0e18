"""`fedit chat` (one-shot and interactive) and the generation worker's queue, on the micro model."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedit.cli import app
from fedit.eval.generate import generate_ids
from fedit.generation import GenerationSettings
from fedit.serve.chat import interactive
from fedit.serve.generation import GenerationWorker, Job, QueueFull, generate_stream
from fedit.serve.session import ModelSession, parse_adapter_args


@pytest.fixture(scope="module")
def session(micro_run: Path) -> ModelSession:
    return ModelSession.load(parse_adapter_args([str(micro_run), f"r1={micro_run / 'round_0001'}"]))


def _greedy(session: ModelSession, name: str, messages: list[dict[str, str]], n: int = 10) -> str:
    ids = session.chat_ids(name, messages)
    with session.use(name):
        out = generate_ids(session.model, session.tokenizer, [ids], GenerationSettings(max_new_tokens=n))[0]
    return session.tokenizer.decode(out, skip_special_tokens=True).lstrip()


def test_one_shot_prompt_is_seeded(micro_run: Path, session: ModelSession) -> None:
    args = ["chat", "--adapter", str(micro_run), "--prompt", "What is the capital of France?", "--max-new-tokens",
            "10"]
    a = CliRunner().invoke(app, [*args, "--seed", "7"])
    b = CliRunner().invoke(app, [*args, "--seed", "7"])
    assert a.exit_code == 0, a.output
    assert a.output == b.output and a.output.strip()
    greedy = CliRunner().invoke(app, [*args, "--temperature", "0", "--repetition-penalty", "1.0"])
    expected = _greedy(session, "run", [{"role": "user", "content": "What is the capital of France?"}])
    assert greedy.output.rstrip("\n") == expected.rstrip("\n")
    bad = CliRunner().invoke(app, [*args, "--top-p", "0"])
    assert bad.exit_code == 2 and "top-p" in bad.output


def test_interactive_session(session: ModelSession) -> None:
    lines = iter(["/set temperature=0", "/set max_new_tokens=10", "/set repetition_penalty=1", "hello", "/model r1",
                  "hello", "/model nope", "/reset", "/bogus", "/models"])

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    interactive(session, "run", GenerationSettings(temperature=1.0, top_p=0.9), read=read, out=out)
    text = out.getvalue()
    first = _greedy(session, "run", [{"role": "user", "content": "hello"}])
    assert f"run> {first}\n" in text
    second = _greedy(session, "r1", [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                                     {"role": "user", "content": "hello"}])
    assert f"r1> {second}\n" in text  # the conversation carried over to the new adapter
    assert "unknown model 'nope'" in text and "(new conversation)" in text and "commands:" in text
    assert "run  r1" in text


def test_worker_queue_is_bounded_and_fifo(session: ModelSession) -> None:
    worker = GenerationWorker(session, max_queue=1)
    done: list[str] = []

    def job(tag: str) -> Job:
        ids = session.chat_ids("run", [{"role": "user", "content": tag}])
        return Job("run", ids, GenerationSettings(max_new_tokens=3),
                   lambda ev: done.append(tag) if ev[0] == "done" else None)

    with session.lock:  # hold the model: the first job waits inside the worker, the second in the queue
        worker.submit(job("a"))
        deadline = time.monotonic() + 10
        while worker.jobs.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.submit(job("b"))
        with pytest.raises(QueueFull):
            worker.submit(job("c"))
    deadline = time.monotonic() + 30
    while len(done) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.close()
    assert done == ["a", "b"]


def test_cancel_stops_generation(session: ModelSession) -> None:
    ids = session.chat_ids("run", [{"role": "user", "content": "hello"}])
    cancel = threading.Event()
    pieces: list[str] = []

    def emit(text: str) -> None:  # a client that goes away after the first piece
        pieces.append(text)
        cancel.set()

    reason, usage = generate_stream(session, "run", ids, GenerationSettings(max_new_tokens=50), emit, cancel=cancel)
    assert reason == "cancelled" and len(pieces) == 1 and usage["completion_tokens"] < 50
    assert not session.lock.locked()
