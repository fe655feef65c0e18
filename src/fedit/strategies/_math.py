"""Shared maths for strategies: checks, weighted averaging of payloads, and how inexact LoRA averaging is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
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


DENSE_BUDGET_BYTES = 256 * 2**20  # accumulator state for the exact path: 16 bytes per d_out x d_in element
SKETCH_COLUMNS = (32, 128)  # the sketch's columns s: as many as the budget allows, within these bounds
BUFFER_BYTES = 32 * 2**20  # LoRA factors of a round kept for the cheap exact r x r path


class AggregationErrorAccumulator:
    """The round metric ||M - B_bar A_bar||_F / ||M||_F, M = sum_k p_k B_k A_k, over all LoRA modules, folded in one
    update at a time in memory O(1) in the number of clients (0 if the products are 0).

    While the round's LoRA factors fit `buffer_bytes` (a few clients of a small adapter: the embedded default's
    round holds 3 x 1.2 MB) it keeps them and computes the metric exactly at the end from r x r products only,
    clients in id order: ||sum_k p_k B_k A_k||^2 = sum_{k,l} p_k p_l tr((B_k^T B_l)(A_l A_k^T)), and likewise for the
    cross term (cheap: no d_out x d_in matrix). Past that it folds them, and every later update, into the streaming
    form: per module sum_k n_k A_k and sum_k n_k B_k and, when every module's dense d_out x d_in accumulator fits
    `budget_bytes` (16 bytes per element), sum_k n_k B_k A_k itself: the metric is then exact too. Otherwise it is
    an estimate from a Gaussian sketch: with Omega (d_in x s, N(0, 1) entries, one per input width, drawn from
    `rng`), it keeps sum_k n_k B_k (A_k Omega) (d_out x s) and uses E ||X Omega||_F^2 = s ||X||_F^2 for numerator
    and denominator alike (relative error of each squared norm about sqrt(2 / (s * stable rank)); s is as large as
    the budget allows within SKETCH_COLUMNS). Sums are order-independent (`ExactSum`), so every engine reports the
    same value. A tensor the updates do not carry (FFA-LoRA's frozen A) is the global one; then M = B_bar A exactly
    and the numerator is 0 without any dense work.
    """

    def __init__(self, global_params: Params, rng: np.random.Generator | None = None,
                 budget_bytes: int = DENSE_BUDGET_BYTES, buffer_bytes: int = BUFFER_BYTES) -> None:
        from fedit.strategies.accumulate import ExactSum

        self.g = global_params
        self.pairs = lora_pairs(global_params)
        factor_bytes = sum(global_params[k].numel() * 4 for pair in self.pairs for k in pair)
        self.buffer_clients = buffer_bytes // max(1, factor_bytes)  # updates kept for the r x r path
        self.buffered: list[ClientUpdate] | None = []  # None once the round has outgrown the buffer
        dense = sum(16 * global_params[kb].shape[0] * global_params[ka].shape[1] for ka, kb in self.pairs)
        self.exact = dense <= budget_bytes
        self.columns = 0
        self.omega: dict[int, torch.Tensor] = {}
        if not self.exact:
            rows = sum(global_params[kb].shape[0] for _, kb in self.pairs)
            lo, hi = SKETCH_COLUMNS
            self.columns = int(min(hi, max(lo, budget_bytes // max(1, 16 * rows))))
            gen = rng if rng is not None else np.random.default_rng(0)
            for d_in in sorted({global_params[ka].shape[1] for ka, _ in self.pairs}):
                self.omega[d_in] = torch.from_numpy(gen.standard_normal((d_in, self.columns)))
        self.sums = ExactSum()  # n_k A_k and n_k B_k for every sent tensor
        self.products = ExactSum()  # n_k B_k A_k (exact) or n_k B_k A_k Omega (sketch), per module
        self.fixed: set[str] | None = None  # tensors the updates do not carry (decided by the first update)

    def add(self, update: ClientUpdate) -> None:
        if self.buffered is not None:
            if len(self.buffered) < self.buffer_clients:
                self.buffered.append(update)
                return
            held, self.buffered = self.buffered, None  # outgrown: fold what was held, stream from here on
            for u in held:
                self._fold(u)
        self._fold(update)

    def _fold(self, update: ClientUpdate) -> None:
        n = update.num_examples
        keys = {k for pair in self.pairs for k in pair if k not in update.params}
        if self.fixed is None:
            self.fixed = keys
        elif keys != self.fixed:
            raise AggregationError(f"client {update.client_id}: carries other LoRA tensors than the round's first "
                                   "update")
        self.sums.add({k: update.params[k] for pair in self.pairs for k in pair if k not in self.fixed}, n)
        prods = {}
        for ka, kb in self.pairs:
            if ka in self.fixed or kb in self.fixed:
                continue
            a = update.params[ka].to(torch.float64)
            nb = update.params[kb].to(torch.float64) * n
            prods[kb] = nb @ a if self.exact else nb @ (a @ self.omega[a.shape[1]])
        self.products.add(prods)

    def result(self) -> float:
        if self.buffered is not None:
            if not self.buffered:
                raise AggregationError("no client updates to aggregate")
            return _gram_error(self.g, sorted(self.buffered, key=lambda u: u.client_id))
        if not self.sums.count:
            raise AggregationError("no client updates to aggregate")
        n = self.sums.weight
        means = self.sums.mean()
        prods = self.products.total()
        num = den = 0.0
        for ka, kb in self.pairs:
            a = means.get(ka, self.g[ka].to(torch.float64))
            b = means.get(kb, self.g[kb].to(torch.float64))
            if kb not in prods:  # one factor is the same for every client: M = B_bar A_bar exactly
                den += float(torch.trace((b.T @ b) @ (a @ a.T)))
                continue
            m = prods[kb] / n
            fedavg = b @ a if self.exact else b @ (a @ self.omega[a.shape[1]])
            num += float(((m - fedavg) ** 2).sum())
            den += float((m * m).sum())
        return (max(num, 0.0) ** 0.5) / (den ** 0.5) if den > 0 else 0.0


def _gram_error(global_params: Params, updates: Sequence[ClientUpdate]) -> float:
    """The metric from r x r products of the updates' factors (the class docstring's formula), in the given order."""
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


def aggregation_error(global_params: Params, updates: Sequence[ClientUpdate],
                      budget_bytes: int = DENSE_BUDGET_BYTES, rng: np.random.Generator | None = None,
                      buffer_bytes: int = BUFFER_BYTES) -> float:
    """||sum_k p_k B_k A_k - B_bar A_bar||_F / ||sum_k p_k B_k A_k||_F over all LoRA modules (0 if the products are 0).

    The numerator is the weighted cross-covariance of the clients' deviations that averaging A and B separately
    (FedIT) leaves out. Computed by `AggregationErrorAccumulator`: exact from r x r products while the factors fit
    `buffer_bytes`, exact from dense products while those fit `budget_bytes`, a seeded sketch estimate beyond. A
    tensor a client did not send (FFA-LoRA's frozen A) is the global one.
    """
    acc = AggregationErrorAccumulator(global_params, rng, budget_bytes, buffer_bytes)
    for u in updates:
        acc.add(u)
    return acc.result()
