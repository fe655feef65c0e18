"""FFA-LoRA (Sun, Li, Li, Ding, ICLR 2024, "Improving LoRA in Privacy-preserving Federated Learning"): A frozen at
its initialization, only B trained, shared and averaged.

    A_t     = A_0                                  (peft's seeded kaiming-uniform init, never trained or sent)
    B_{t+1} = sum_k (n_k / n) * B_k                (n = sum_k n_k over this round's clients)

Exact: s (sum_k p_k B_k) A_0 = sum_k p_k s B_k A_0, so the global update is the weighted mean of the clients'
products (the round's `aggregation_error` is 0). A_0 is never sent: every process builds the same init from the run
seed (`LocalTrainer.init`), and a client loads `init | task` with the task holding only the B tensors. Tasks and
updates are B only, half of LoRA's bytes when d_in = d_out. Weighted by examples like FedAvg (the paper's code
averages uniformly). No settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedit.strategies.base import ClientPlan, register
from fedit.strategies.fedavg import FedAvg


def is_lora_b(key: str) -> bool:
    return ".lora_B." in key


@dataclass
class FFAConfig:
    pass


class FrozenAPlan(ClientPlan):
    """Clients train and exchange the LoRA B tensors only; A stays at the shared seeded init."""

    def trainable(self, key: str) -> bool:
        return is_lora_b(key)

    def shared(self, key: str) -> bool:
        return is_lora_b(key)


@register("ffa", FFAConfig)
class FFALoRA(FedAvg):
    """FedAvg over the shared tensors (B only: `shared_keys`); the global A is returned untouched."""

    def client_plan(self) -> ClientPlan:
        return FrozenAPlan()
