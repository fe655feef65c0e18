"""FedProx (Li et al., MLSys 2020, "Federated Optimization in Heterogeneous Networks"): FedAvg on the server, a
proximal term on the clients.

    client:  min_w  L_k(w) + (mu / 2) * ||w - w_t||^2        (over every trained LoRA tensor, A and B)
    server:  w_{t+1} = sum_k (n_k / n) * w_k

The term's gradient passes through gradient clipping and AdamW's normalisation, so mu is not on the scale of
SGD-FedProx and the paper's values of mu do not transfer as they are. Settings: `mu` (default 0.01).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedit.strategies.base import ClientPlan, ClientSession, register
from fedit.strategies.fedavg import FedAvg
from fedit.types import ClientTask, Params

if TYPE_CHECKING:
    from fedit.model.lora import AdapterSlots


@dataclass
class FedProxConfig:
    mu: float = 0.01  # proximal weight

    def checks(self):
        return [(self.mu >= 0, "mu", self.mu, "a number >= 0")]


class ProximalSession(ClientSession):
    """Adds (mu / 2) * ||w - w_global||^2 over the adapter tensors the client trains."""

    def __init__(self, mu: float, anchor: Params) -> None:
        self.mu = mu
        self.anchor = anchor
        self._live: dict[str, torch.Tensor] = {}

    def start(self, slots: AdapterSlots) -> None:
        self._live = {k: self.anchor[k].to(p.device, p.dtype) for k, p in slots.params.items() if k in self.anchor}

    def penalty(self, slots: AdapterSlots) -> torch.Tensor | None:
        total = sum(((slots.params[k] - a) ** 2).sum() for k, a in self._live.items())
        return 0.5 * self.mu * total  # type: ignore[return-value]


class ProximalPlan(ClientPlan):
    def __init__(self, mu: float) -> None:
        self.mu = mu

    def session(self, task: ClientTask, local: Params) -> ClientSession:
        return ProximalSession(self.mu, task.params)


@register("fedprox", FedProxConfig)
class FedProx(FedAvg):
    def client_plan(self) -> ClientPlan:
        return ProximalPlan(self.cfg.mu)
