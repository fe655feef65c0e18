"""FedAvg, the FedIT aggregation rule.

    w_{t+1} = sum_k (n_k / n) * w_k        with n = sum_k n_k over this round's clients

applied to each LoRA tensor separately (A and B averaged independently, as in FedIT/Shepherd; the average of the
products B_k A_k is not exactly the product of the averages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedit.client.objectives import ClientObjective
from fedit.strategies._math import check_updates, weighted_average
from fedit.strategies.base import State
from fedit.types import ClientUpdate, Params


@dataclass
class FedAvg:
    name: str = "fedavg"

    def init_state(self, params: Params) -> State:
        return {}

    def aggregate(self, global_params: Params, updates: Sequence[ClientUpdate], state: State) -> tuple[Params, State]:
        check_updates(global_params, updates)
        avg = weighted_average(updates)
        return {k: v.to(global_params[k].dtype) for k, v in avg.items()}, dict(state)

    def client_objective(self) -> ClientObjective | None:
        return None
