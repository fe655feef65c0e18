"""The engine contract: train the sampled clients on their tasks for one round and return their updates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fedit.strategies.base import RoundContext
from fedit.types import ClientTask, ClientUpdate, Params

# (client_id, step, total_steps, loss) for progress display
ClientProgress = Callable[[int, int, int, float], None]
# takes one client's update the moment it arrives (the round loop's RoundCollector: validates and folds it into
# the strategy's accumulator); returns whether the update was accepted
UpdateSink = Callable[[ClientUpdate], bool]


@dataclass
class RoundOutcome:
    updates: list[ClientUpdate]  # empty when the updates went to a sink
    failures: dict[int, str] = field(default_factory=dict)  # client id -> reason
    # the new local state of clients whose state the engine keeps beside the run (the simulator), to checkpoint
    # with this round; engines whose clients keep their own (Flower nodes) leave it empty
    client_state: dict[int, Params] = field(default_factory=dict)


class Engine(Protocol):
    num_clients: int

    def train_round(self, ctx: RoundContext, tasks: dict[int, ClientTask], progress: ClientProgress | None = None,
                    sink: UpdateSink | None = None) -> RoundOutcome:
        """Train each client of `tasks` on its task (under the strategy's client plan, which the engine built from
        the config); failed clients go to `failures`, never raise for one client. With a `sink`, each update is
        handed to it as soon as it is decoded and not kept (so a round holds no more than the updates in flight);
        without one, the updates are returned in `updates`."""

    def set_base_delta(self, delta: Params) -> None:
        """The cumulative change to the frozen base weights every client must train on (FedEx-LoRA)."""

    def close(self) -> None: ...
