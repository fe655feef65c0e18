"""`flower-supernode` with a shorter idle poll: the loopback launcher's SuperNodes.

Flower 1.42's SuperNode pulls the SuperLink for a message, and when there is none sleeps a fixed 3 s
(flwr/supernode/start_client_internal.py, `start_client_internal`: `time.sleep(3)`); while its ClientApp runs it
checks for the reply every 0.5 s (`_push_messages`: `time.sleep(0.5)`). No option or environment variable sets
either (`--max-wait-time` and `--max-retries` only bound reconnection after a connection error), so a round's
message waits 1.5 s on average (3 s at worst) before the node even sees it, plus 0.25 s on average before the reply
leaves. This entry point runs Flower's own `flower_supernode()` with those sleeps in that one module capped at
`FEDIT_SUPERNODE_POLL` seconds (default 0.1): the same code path, protocol and messages, only a faster idle poll
(one cheap Fleet API pull per node per 0.1 s while idle). Every other module keeps the real `time`.

Usage: `python -m fedit.engines.flower.fastnode <flower-supernode arguments>`.
"""

from __future__ import annotations

import os
import sys
import time
from types import ModuleType
from typing import Any

ENV = "FEDIT_SUPERNODE_POLL"
DEFAULT_POLL = 0.1


class CappedTime(ModuleType):
    """The `time` module as one module sees it: `sleep(s)` sleeps min(s, cap); everything else is `time`'s."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def poll_cap(env: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """The cap from FEDIT_SUPERNODE_POLL (seconds, > 0), else DEFAULT_POLL; ValueError naming it if malformed."""
    raw = env.get(ENV)
    if raw is None or raw == "":
        return DEFAULT_POLL
    try:
        cap = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}: got {raw!r}, expected seconds > 0") from None
    if not cap > 0:
        raise ValueError(f"{ENV}: got {raw!r}, expected seconds > 0")
    return cap


def patch(cap: float) -> None:
    """Cap the SuperNode loop's sleeps (its module's `time.sleep` only) at `cap` seconds."""
    import flwr.supernode.start_client_internal as sci

    sci.time = CappedTime(cap)  # type: ignore[assignment]


def main() -> None:
    patch(poll_cap())
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
