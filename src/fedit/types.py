"""Plain data types exchanged between client, strategy, engine and round loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# Adapter payload: the adapter-only state dict (peft's get_peft_model_state_dict keys), tensors on CPU.
Params = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """What one client returns after local training in one round."""

    client_id: int
    params: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundResult:
    """One round's outcome, as written to metrics.jsonl."""

    round: int
    sampled: list[int]
    replied: list[int]
    metrics: dict[str, Any]


@dataclass
class RunResult:
    """A finished (or resumed and finished) run."""

    run_dir: str
    rounds: list[RoundResult]
    final_params: Params
    eval: dict[str, Any] | None = None


def payload_bytes(params: Params) -> int:
    """Bytes of tensor data in an adapter payload (what crosses the wire, excluding framing)."""
    return sum(t.numel() * t.element_size() for t in params.values())
