"""Shared maths for strategies: checks, weighted averaging of payloads, and how inexact LoRA averaging is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedit.errors import AggregationError
from fedit.types import ClientUpdate, Params


def check_updates(expected: Params, updates: Sequence[ClientUpdate], expected_extras: Params | None = None) -> None:
    """The round loop validates every update before a strategy sees it (server/validate.py); strategies called
    directly check again with the same rules, so they never average a NaN or a misshapen tensor."""
    from fedit.server.validate import update_problem

    if not updates:
        raise AggregationError("no client updates to aggregate")
    for u in updates:
        problem = update_problem(u, expected, check_metrics=False, expected_extras=expected_extras)
        if problem is not None:
            raise AggregationError(f"client {u.client_id}: {problem}")


def weights(updates: Sequence[ClientUpdate]) -> list[float]:
    """p_k = n_k / sum_j n_j over this round's updates (FedAvg's weights)."""
    total = float(sum(u.num_examples for u in updates))
    return [u.num_examples / total for u in updates]


def weighted_average(updates: Sequence[ClientUpdate], field: str = "params") -> dict[str, torch.Tensor]:
    """sum_k p_k * w_k per tensor of each update's `field` ("params" or "extras"), accumulated in float64 in the
    given (client-id) order, so every engine gets the same bits."""
    p = weights(updates)
    first: Mapping[str, torch.Tensor] = getattr(updates[0], field)
    out: dict[str, torch.Tensor] = {}
    for k in first:
        acc = torch.zeros_like(first[k], dtype=torch.float64)
        for u, w in zip(updates, p, strict=True):
            acc.add_(getattr(u, field)[k].to(torch.float64), alpha=w)
        out[k] = acc
    return out


def lora_pairs(keys: Sequence[str] | Mapping[str, object]) -> list[tuple[str, str]]:
    """(A key, B key) for every LoRA module in a payload."""
    out = []
    for k in keys:
        if ".lora_A." in k:
            b = k.replace(".lora_A.", ".lora_B.")
            if b in keys:
                out.append((k, b))
    return out


def aggregation_error(global_params: Params, updates: Sequence[ClientUpdate]) -> float:
    """||sum_k p_k B_k A_k - B_bar A_bar||_F / ||sum_k p_k B_k A_k||_F over all LoRA modules (0 if the products are 0).

    The numerator is the weighted cross-covariance of the clients' deviations that averaging A and B separately
    (FedIT) leaves out. It is computed from r x r products only, never a d_out x d_in matrix:
    ||sum_k p_k B_k A_k||^2 = sum_{k,l} p_k p_l tr((B_k^T B_l)(A_l A_k^T)), and likewise for the cross term. A tensor a
    client did not send (FFA-LoRA's frozen A) is the global one.
    """
    p = weights(updates)
    num = den = 0.0
    for ka, kb in lora_pairs(global_params):
        a = [u.params.get(ka, global_params[ka]).to(torch.float64) for u in updates]
        b = [u.params.get(kb, global_params[kb]).to(torch.float64) for u in updates]
        a_bar = sum(w * x for w, x in zip(p, a, strict=True))
        b_bar = sum(w * x for w, x in zip(p, b, strict=True))
        bb = torch.stack([torch.stack([bk.T @ bl for bl in b]) for bk in b])  # [k, l] = B_k^T B_l   (r x r)
        aa = torch.stack([torch.stack([al @ ak.T for al in a]) for ak in a])  # [k, l] = A_l A_k^T
        pp = torch.tensor(p, dtype=torch.float64)
        mm = float(torch.einsum("k,l,klij,klji->", pp, pp, bb, aa))  # ||M||^2, M = sum p_k B_k A_k
        cross = float(sum(w * torch.trace((bk.T @ b_bar) @ (a_bar @ ak.T)) for w, ak, bk in zip(p, a, b, strict=True)))
        ff = float(torch.trace((b_bar.T @ b_bar) @ (a_bar @ a_bar.T)))  # ||B_bar A_bar||^2
        num += max(0.0, mm - 2.0 * cross + ff)
        den += mm
    return (num ** 0.5) / (den ** 0.5) if den > 0 else 0.0
