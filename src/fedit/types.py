"""Plain data types exchanged between client, strategy, engine and round loop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

# Adapter payload: the adapter-only state dict (peft's get_peft_model_state_dict keys), tensors on CPU.
Params = dict[str, torch.Tensor]


@dataclass
class ClientTask:
    """What the server sends one client for one round: the tensors it loads (the shared subset of the global
    adapter), extra tensors for that client (e.g. SCAFFOLD's server control variate) and scalar settings."""

    params: Params
    extras: Params = field(default_factory=dict)
    config: dict[str, float | int | str] = field(default_factory=dict)


@dataclass
class ClientUpdate:
    """What one client returns after local training in one round: its shared tensors, extra tensors (e.g.
    SCAFFOLD's control-variate change), how many examples it trained on, and its metrics."""

    client_id: int
    params: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extras: Params = field(default_factory=dict)


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


def _nonfinite(t: torch.Tensor) -> int:
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    return int((~torch.isfinite(t)).sum())


def payload_problem(params: Any, expected: Params) -> str | None:
    """Why `params` cannot stand for a payload shaped like `expected` (None if it can)."""
    if not isinstance(params, Mapping):
        return f"params must be a mapping of tensors, got {type(params).__name__}"
    missing = sorted(expected.keys() - params.keys())
    extra = sorted(params.keys() - expected.keys())
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
        return "adapter keys differ from the global adapter: " + "; ".join(parts)
    for k, ref in expected.items():
        v = params[k]
        if not isinstance(v, torch.Tensor):
            return f"{k} is a {type(v).__name__}, expected a tensor"
        if v.shape != ref.shape:
            return f"{k} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}"
        if v.dtype != ref.dtype:
            return f"{k} has dtype {v.dtype}, expected {ref.dtype}"
    for k, v in params.items():
        bad = _nonfinite(v)
        if bad:
            return f"{k} has {bad} non-finite value(s) (NaN or Inf)"
    return None
