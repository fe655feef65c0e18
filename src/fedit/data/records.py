"""The one record type every data source is converted into."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    """One chat turn; `role` is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class Record:
    """An instruction example.

    Single-turn data fills `instruction`, optional `context`, `response`. Multi-turn chat data (ShareGPT/messages)
    also keeps the full `messages`; `instruction`/`response` then hold the first user turn and the last assistant turn
    so that single-turn tools (evaluation, partitioning by category) still work.
    """

    instruction: str
    response: str
    context: str = ""
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    messages: tuple[Message, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["messages"] = [asdict(m) for m in self.messages]
        if not d["messages"]:
            del d["messages"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        msgs = tuple(Message(m["role"], m["content"]) for m in d.get("messages", []) or [])
        return cls(
            instruction=d["instruction"],
            response=d["response"],
            context=d.get("context", "") or "",
            category=d.get("category"),
            meta=dict(d.get("meta", {}) or {}),
            messages=msgs,
        )
