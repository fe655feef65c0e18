"""The engine contract: train a set of clients for one round and return their updates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fedit.client.objectives import ClientObjective
from fedit.types import ClientUpdate, Params

# (client_id, step, total_steps, loss) for progress display
ClientProgress = Callable[[int, int, int, float], None]


@dataclass
class RoundOutcome:
    updates: list[ClientUpdate]
    failures: dict[int, str] = field(default_factory=dict)  # client id -> reason


class Engine(Protocol):
    num_clients: int

    def train_round(self, round_idx: int, client_ids: list[int], global_params: Params,
                    objective: ClientObjective | None, progress: ClientProgress | None = None) -> RoundOutcome:
        """Train `client_ids` from `global_params`; failed clients go to `failures`, never raise for one client."""

    def close(self) -> None: ...
