"""FedProx (Li et al., 2020): FedAvg on the server, a proximal term on the clients.

    client:  min_w  L_k(w) + (mu / 2) * ||w - w_t||^2
    server:  w_{t+1} = sum_k (n_k / n) * w_k
"""

from __future__ import annotations

from dataclasses import dataclass

from fedit.client.objectives import ClientObjective, ProximalTerm
from fedit.strategies.fedavg import FedAvg


@dataclass
class FedProx(FedAvg):
    name: str = "fedprox"
    mu: float = 0.01

    def client_objective(self) -> ClientObjective | None:
        return ProximalTerm(self.mu)
