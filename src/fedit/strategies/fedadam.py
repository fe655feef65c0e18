"""FedAdam (Reddi et al., 2021, "Adaptive Federated Optimization", Algorithm 2), a server-side Adam step.

    delta_t = sum_k (n_k / n) * w_k - w_t              (pseudo-gradient, the weighted mean client change)
    m_t     = beta1 * m_{t-1} + (1 - beta1) * delta_t
    v_t     = beta2 * v_{t-1} + (1 - beta2) * delta_t^2
    w_{t+1} = w_t + eta * m_t / (sqrt(v_t) + tau)

m and v start at zero and live in the strategy state (checkpointed every round); no bias correction, as in the
paper. Each LoRA tensor is updated element-wise and independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedit.client.objectives import ClientObjective
from fedit.strategies._math import check_updates, weighted_average
from fedit.strategies.base import State
from fedit.types import ClientUpdate, Params


@dataclass
class FedAdam:
    name: str = "fedadam"
    eta: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def init_state(self, params: Params) -> State:
        state: State = {}
        for k, v in params.items():
            state[f"m.{k}"] = torch.zeros_like(v, dtype=torch.float32)
            state[f"v.{k}"] = torch.zeros_like(v, dtype=torch.float32)
        return state

    def aggregate(self, global_params: Params, updates: Sequence[ClientUpdate], state: State) -> tuple[Params, State]:
        check_updates(global_params, updates)
        avg = weighted_average(updates)
        new_params: Params = {}
        new_state: State = {}
        for k, w in global_params.items():
            delta = (avg[k] - w.to(torch.float64)).to(torch.float32)
            m = self.beta1 * state[f"m.{k}"] + (1 - self.beta1) * delta
            v = self.beta2 * state[f"v.{k}"] + (1 - self.beta2) * delta * delta
            new_params[k] = (w.to(torch.float32) + self.eta * m / (v.sqrt() + self.tau)).to(w.dtype)
            new_state[f"m.{k}"], new_state[f"v.{k}"] = m, v
        return new_params, new_state

    def client_objective(self) -> ClientObjective | None:
        return None
