"""The strategy contract: pure aggregation with explicit, checkpointable state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from fedit.client.objectives import ClientObjective
from fedit.types import ClientUpdate, Params

# Strategy state is a flat dict of tensors, so it saves to safetensors as is (scalars are 0-d tensors).
State = dict[str, torch.Tensor]


class Strategy(Protocol):
    name: str

    def init_state(self, params: Params) -> State:
        """State before the first round."""

    def aggregate(self, global_params: Params, updates: Sequence[ClientUpdate], state: State) -> tuple[Params, State]:
        """New global adapter and state from this round's client updates; must not mutate its inputs."""

    def client_objective(self) -> ClientObjective | None:
        """A term the clients add to their local loss, or None."""
