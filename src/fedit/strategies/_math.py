"""Shared maths for strategies: weighted averaging of adapter payloads."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedit.errors import AggregationError
from fedit.types import ClientUpdate, Params


def check_updates(global_params: Params, updates: Sequence[ClientUpdate]) -> None:
    """The round loop validates every update before a strategy sees it (server/validate.py); strategies called
    directly check again with the same rules, so they never average a NaN or a misshapen tensor."""
    from fedit.server.validate import update_problem

    if not updates:
        raise AggregationError("no client updates to aggregate")
    for u in updates:
        problem = update_problem(u, global_params, check_metrics=False)
        if problem is not None:
            raise AggregationError(f"client {u.client_id}: {problem}")


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
