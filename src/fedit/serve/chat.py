"""Terminal chat with a tuned model: streamed tokens, one-shot prompts, a few slash commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from fedit.generation import GenerationSettings
from fedit.serve.generation import iter_generate
from fedit.serve.session import ModelSession

HELP = """commands: /reset (new conversation)  /model NAME (switch adapter)  /models  /set KEY=VALUE
          (temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed)  /settings  /quit"""


def answer(session: ModelSession, name: str, messages: list[dict[str, str]], settings: GenerationSettings,
           write: Callable[[str], Any]) -> str:
    """Generate the assistant's reply to `messages`, writing pieces as they come; returns the full reply."""
    ids = session.chat_ids(name, messages)
    room = session.context_len - len(ids)
    if room < 1:
        raise ValueError(f"the conversation is {len(ids)} tokens, the model's context is {session.context_len}; "
                         "use /reset")
    settings = replace(settings, max_new_tokens=min(settings.max_new_tokens, room))
    parts = []
    for piece in iter_generate(session, name, ids, settings):
        parts.append(piece)
        write(piece)
    return "".join(parts)


def _set(settings: GenerationSettings, arg: str) -> GenerationSettings:
    key, _, value = arg.partition("=")
    key = key.strip().replace("-", "_")
    types = {"temperature": float, "top_p": float, "top_k": int, "max_new_tokens": int, "repetition_penalty": float,
             "seed": int}
    if key not in types:
        raise ValueError(f"unknown setting {key!r}; one of {', '.join(types)}")
    v = value.strip()
    return replace(settings, **{key: None if key == "seed" and v.lower() in ("", "none") else types[key](v)})


def interactive(session: ModelSession, name: str, settings: GenerationSettings, system: str | None = None,
                read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> None:
    """A read-answer loop until EOF or /quit; each answer streams to `out`."""
    def write(s: str) -> None:
        out.write(s)
        out.flush()

    src = session.source(name)
    write(f"fedit chat — model {name} (base {src.base}, round {src.round if src.round is not None else '?'}, "
          f"template {src.template}). /help for commands, Ctrl-D to quit.\n")
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = read("\nyou> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            try:
                if cmd in ("/quit", "/exit"):
                    return
                if cmd == "/reset":
                    history = history[:1] if system else []
                    write("(new conversation)\n")
                elif cmd == "/models":
                    write("  ".join(session.names) + "\n")
                elif cmd == "/model":
                    if arg not in session.names:
                        raise ValueError(f"unknown model {arg!r}; one of {', '.join(session.names)}")
                    name = arg
                    write(f"(now {name})\n")
                elif cmd == "/set":
                    settings = _set(settings, arg)
                    write(f"{settings}\n")
                elif cmd == "/settings":
                    write(f"{settings}\n")
                else:
                    write(HELP + "\n")
            except ValueError as e:
                write(f"error: {e}\n")
            continue
        history.append({"role": "user", "content": text})
        write(f"{name}> ")
        try:
            reply = answer(session, name, history, settings, write)
        except KeyboardInterrupt:  # Ctrl-C stops this answer; the conversation goes on without the turn
            history.pop()
            write("\n(interrupted)\n")
            continue
        except ValueError as e:
            history.pop()
            write(f"error: {e}\n")
            continue
        history.append({"role": "assistant", "content": reply})
        write("\n")
