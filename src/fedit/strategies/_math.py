"""Shared maths for strategies: weighted averaging of adapter payloads."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedit.errors import AggregationError
from fedit.types import ClientUpdate, Params


def check_updates(global_params: Params, updates: Sequence[ClientUpdate]) -> None:
    if not updates:
        raise AggregationError("no client updates to aggregate")
    for u in updates:
        if u.params.keys() != global_params.keys():
            raise AggregationError(f"client {u.client_id}: adapter keys differ from the global adapter")
        for k, v in u.params.items():
            if v.shape != global_params[k].shape:
                raise AggregationError(f"client {u.client_id}: {k} has shape {tuple(v.shape)}, "
                                       f"expected {tuple(global_params[k].shape)}")
        if u.num_examples <= 0:
            raise AggregationError(f"client {u.client_id}: num_examples must be > 0, got {u.num_examples}")


def weighted_average(updates: Sequence[ClientUpdate]) -> dict[str, torch.Tensor]:
    """sum_k n_k * w_k / sum_k n_k per tensor, accumulated in float64 (independent of update order up to rounding)."""
    total = float(sum(u.num_examples for u in updates))
    out: dict[str, torch.Tensor] = {}
    for k in updates[0].params:
        acc = torch.zeros_like(updates[0].params[k], dtype=torch.float64)
        for u in updates:
            acc.add_(u.params[k].to(torch.float64), alpha=u.num_examples / total)
        out[k] = acc
    return out
