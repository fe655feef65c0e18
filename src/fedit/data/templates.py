"""The one prompt-template registry used by training, evaluation and serving.

A template turns a conversation into text segments, each marked trainable (assistant output) or not (prompt), and
renders the prompt that generation continues from. Training, `fedit eval`, `fedit chat` and `fedit serve` all go
through `get_template(...)`, so a model is always queried in the format it was tuned on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fedit.data.records import Message, Record
from fedit.errors import ConfigError
from fedit.registry import Registry

Segment = tuple[str, bool]  # (text, trainable)


def record_messages(record: Record) -> list[Message]:
    """A record as chat turns: its own messages, or one user turn (instruction + context) and the response."""
    if record.messages:
        return list(record.messages)
    user = record.instruction if not record.context else f"{record.instruction}\n\n{record.context}"
    return [Message("user", user), Message("assistant", record.response)]


class Template(Protocol):
    name: str
    eos_in_text: bool  # False: tokenization appends the EOS id after each trainable segment

    def segments(self, record: Record) -> list[Segment]:
        """The full training text for a record, split into (text, trainable) pieces."""

    def prompt(self, record: Record) -> str:
        """The text generation continues from for a single-turn record (no response)."""

    def chat_prompt(self, messages: Sequence[Message]) -> str:
        """The text generation continues from after a conversation whose last turn is the user's."""


TEMPLATES: Registry[Any] = Registry("template")

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
)


@dataclass
class AlpacaTemplate:
    """Alpaca-style text: `### Instruction:` / `### Input:` (only with context) / `### Response:`.

    `preamble=True` is the Alpaca/FedIT original; `alpaca-short` drops the preamble, which costs ~30 tokens per
    example and matters on small models and CPUs.
    """

    name: str
    preamble: bool
    eos: str  # joins earlier turns in a multi-turn prompt; in training the EOS *id* is appended by tokenization
    eos_in_text = False

    def _head(self, instruction: str, context: str) -> str:
        text = ""
        if self.preamble:
            text = ALPACA_PREAMBLE.format(ctx=", paired with an input that provides further context" if context else "")
        text += f"### Instruction:\n{instruction}\n\n"
        if context:
            text += f"### Input:\n{context}\n\n"
        return text + "### Response:\n"

    def prompt(self, record: Record) -> str:
        if record.messages:
            return self.chat_prompt([m for m in record.messages][:-1] if record.messages[-1].role == "assistant"
                                    else record.messages)
        return self._head(record.instruction, record.context)

    def segments(self, record: Record) -> list[Segment]:
        if not record.messages:
            return [(self._head(record.instruction, record.context), False), (record.response, True)]
        segs: list[Segment] = []
        system = ""
        first = True
        for m in record.messages:
            if m.role == "system":
                system = m.content
            elif m.role == "user":
                head = self._head(m.content, system if first else "")
                segs.append((head if first else "\n\n" + head, False))
                first = False
            else:
                segs.append((m.content, True))
        return segs

    def chat_prompt(self, messages: Sequence[Message]) -> str:
        text, system, first = "", "", True
        for m in messages:
            if m.role == "system":
                system = m.content
            elif m.role == "user":
                text += ("" if first else "\n\n") + self._head(m.content, system if first else "")
                first = False
            else:
                text += m.content + self.eos
        return text


@dataclass
class ChatTemplate:
    """The tokenizer's own chat template (`tokenizer.apply_chat_template`); assistant turns are trainable.

    Segments are found by rendering growing prefixes of the conversation, so any Jinja template works as long as
    rendering is prefix-stable (true for the templates of common chat models).
    """

    name: str
    tokenizer: Any
    eos_in_text = True  # the chat template writes its own end-of-turn tokens

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def segments(self, record: Record) -> list[Segment]:
        msgs = record_messages(record)
        segs: list[Segment] = []
        done = ""
        for i, m in enumerate(msgs):
            if m.role != "assistant":
                continue
            before = self._render(msgs[:i], add_generation_prompt=True)
            after = self._render(msgs[: i + 1], add_generation_prompt=False)
            if not before.startswith(done) or not after.startswith(before):
                raise ConfigError(f"chat template of {self.tokenizer.name_or_path!r} is not prefix-stable; "
                                  "use --template alpaca")
            segs.append((before[len(done):], False))
            segs.append((after[len(before):], True))
            done = after
        full = self._render(msgs, add_generation_prompt=False)
        if len(full) > len(done):
            segs.append((full[len(done):], False))
        return segs

    def prompt(self, record: Record) -> str:
        msgs = record_messages(record)
        if msgs and msgs[-1].role == "assistant":
            msgs = msgs[:-1]
        return self._render(msgs, add_generation_prompt=True)

    def chat_prompt(self, messages: Sequence[Message]) -> str:
        return self._render(messages, add_generation_prompt=True)


TEMPLATES.add("alpaca", lambda tok: AlpacaTemplate("alpaca", True, tok.eos_token or ""))
TEMPLATES.add("alpaca-short", lambda tok: AlpacaTemplate("alpaca-short", False, tok.eos_token or ""))
TEMPLATES.add("chat", lambda tok: _chat(tok))


def _chat(tokenizer: Any) -> ChatTemplate:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"template 'chat': tokenizer {tokenizer.name_or_path!r} has no chat template; "
                          "use --template alpaca")
    return ChatTemplate("chat", tokenizer)


def get_template(name: str, tokenizer: Any) -> Template:
    """Resolve a template by name; "auto" = the tokenizer's chat template if it has one, else Alpaca."""
    if name == "auto":
        name = "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    return TEMPLATES.get(name)(tokenizer)
