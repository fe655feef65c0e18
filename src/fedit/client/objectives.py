"""Client-side terms added to the local loss by some strategies (FedProx's proximal term)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from fedit.types import Params

if TYPE_CHECKING:
    from fedit.model.lora import AdapterSlots


class ClientObjective(Protocol):
    def start(self, global_params: Params, slots: AdapterSlots) -> None:
        """Called once per client per round, before training, with the round's global adapter."""

    def penalty(self, slots: AdapterSlots) -> torch.Tensor:
        """A differentiable term added to the loss of every optimizer step."""


class ProximalTerm:
    """FedProx (Li et al., 2020): adds (mu / 2) * ||w - w_global||^2 over the adapter parameters."""

    def __init__(self, mu: float) -> None:
        self.mu = mu
        self._anchor: dict[str, torch.Tensor] = {}

    def start(self, global_params: Params, slots: AdapterSlots) -> None:
        self._anchor = {k: global_params[k].to(p.device, p.dtype) for k, p in slots.params.items()}

    def penalty(self, slots: AdapterSlots) -> torch.Tensor:
        total = sum(((p - self._anchor[k]) ** 2).sum() for k, p in slots.params.items())
        return 0.5 * self.mu * total  # type: ignore[return-value]
