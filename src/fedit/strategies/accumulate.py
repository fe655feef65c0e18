"""Streaming aggregation: accumulators that fold client updates in as they arrive, in memory O(1) in the clients.

The contract (strategy contract v2, streaming): `Strategy.accumulator(ctx, global, state)` returns an object with
`add(update)` and `result() -> Aggregate`. The round loop validates each update the moment an engine delivers it,
adds it, and drops it. The default `BufferingAccumulator` keeps the updates and calls the strategy's `aggregate`
on them sorted by client id when the round ends, so a rule that needs all updates at once (a robust aggregator, a
median, FedEx-LoRA's residual) works unchanged; a mean-based rule streams by returning a `StreamingAccumulator`.

Order independence. An engine hands updates over in arrival order, which differs between engines and runs. A
weighted mean sum_k p_k w_k summed in float64 in arrival order would differ in its last bits from one order to the
next, and the simulator and Flower would no longer agree bit for bit. `ExactSum` therefore keeps, per tensor, the
sum S = sum_k n_k * w_k as an unevaluated pair (hi, lo) of float64 tensors, folding each term in with Knuth's
error-free TwoSum (hi + x = s + e exactly, e added to lo), and divides by N = sum_k n_k only at the end:

- each term n_k * w_k is exact in float64 (24 significant bits of a float32 w times an integer n_k < 2^29);
- every term, partial sum and TwoSum error is an integer multiple of g, the ulp of the smallest-exponent term's
  float32 value, and |lo| stays below K 2^-53 T (T = sum_k |n_k w_k|, K updates), so lo's own additions are exact
  while T / g < 2^106 / K: with K = 1,000 clients and n_k < 2^20 examples, the clients' values at one element may
  span 2^42 (a factor of 4e12) before this fails. Within that, hi + lo = S exactly after every add;
- at the end the pair is renormalised by TwoSum into (round64(S), S - round64(S)), a function of S alone, and the
  mean hi / N + lo / N is computed from it; S is a sum of the same reals in any order, so the float64 mean and the
  float32 result cast from it are the same bits in any order.

Outside that range (values spanning more than ~2^42 across clients at one element, float64 parameters) the pair
is still accurate to ~K 2^-106 T, and the result differs between orders only if S lies that close to a float64
rounding boundary. Memory: two float64 tensors per shared tensor (4x the float32 adapter), whatever K is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from fedit.errors import AggregationError
from fedit.types import ClientUpdate, Params

if TYPE_CHECKING:
    from fedit.strategies.base import Aggregate


class Accumulator(Protocol):
    """One round's aggregation in progress: `add` each validated update, then `result` once."""

    def add(self, update: ClientUpdate) -> None: ...

    def result(self) -> Aggregate: ...


def _two_sum_into(hi: torch.Tensor, lo: torch.Tensor, x: torch.Tensor) -> None:
    """hi, lo <- TwoSum(hi, x): hi + x = s + e exactly (Knuth), hi = s, lo += e; `x` is used as scratch."""
    s = hi + x
    bp = s - hi  # the part of x that reached s
    ap = s - bp  # the part of hi that reached s
    ap.neg_().add_(hi)  # hi - ap
    x.sub_(bp)  # x - bp
    lo.add_(ap.add_(x))  # e = (hi - ap) + (x - bp)
    hi.copy_(s)


class ExactSum:
    """sum_k n_k * t_k per tensor key, kept as an error-free float64 pair (hi, lo), and its mean over sum_k n_k.

    `add(tensors, n)` folds one contribution in (n an integer weight, 1 for a plain sum); `mean()` and `total()`
    are the same bits for the same contributions in any order (the module docstring argues when and why)."""

    def __init__(self) -> None:
        self._hi: dict[str, torch.Tensor] = {}
        self._lo: dict[str, torch.Tensor] = {}
        self.weight = 0
        self.count = 0

    def add(self, tensors: Mapping[str, torch.Tensor], n: int = 1) -> None:
        for k, t in tensors.items():
            x = t.detach().to(torch.float64, copy=True)
            if n != 1:
                x.mul_(n)
            if k not in self._hi:
                self._hi[k] = x
                self._lo[k] = torch.zeros_like(x)
            else:
                _two_sum_into(self._hi[k], self._lo[k], x)
        self.weight += n
        self.count += 1

    def _normalised(self, k: str) -> tuple[torch.Tensor, torch.Tensor]:
        hi, lo = self._hi[k], self._lo[k]
        s = hi + lo
        bp = s - hi
        e = (hi - (s - bp)) + (lo - bp)
        return s, e

    def total(self) -> dict[str, torch.Tensor]:
        """round64(sum_k n_k t_k) per key (float64)."""
        return {k: self._normalised(k)[0] for k in self._hi}

    def mean(self) -> dict[str, torch.Tensor]:
        """sum_k n_k t_k / sum_k n_k per key (float64), from the renormalised pair."""
        if self.weight <= 0:
            raise AggregationError("no client updates to aggregate")
        out = {}
        for k in self._hi:
            s, e = self._normalised(k)
            out[k] = s.div_(self.weight).add_(e.div_(self.weight))
        return out


class BufferingAccumulator:
    """The default: keeps every update and hands them, sorted by client id, to `aggregate` at the end (memory
    O(K); for rules that need all updates at once: robust aggregators, FedEx-LoRA)."""

    streaming = False

    def __init__(self, aggregate: Callable[[list[ClientUpdate]], Aggregate]) -> None:
        self._aggregate = aggregate
        self.updates: list[ClientUpdate] = []

    def add(self, update: ClientUpdate) -> None:
        self.updates.append(update)

    def result(self) -> Aggregate:
        return self._aggregate(sorted(self.updates, key=lambda u: u.client_id))


class StreamingAccumulator:
    """Base of the streaming accumulators: checks each update as `check_updates` does (so a direct caller never
    averages a NaN or a misshapen tensor), folds it into `fold`, keeps nothing of it; subclasses implement
    `fold(update)` and `finish() -> Aggregate`."""

    streaming = True

    def __init__(self, expected: Params, expected_extras: Params | None = None) -> None:
        self.expected, self.expected_extras = expected, expected_extras
        self.count = 0

    def add(self, update: ClientUpdate) -> None:
        from fedit.server.validate import update_problem

        problem = update_problem(update, self.expected, check_metrics=False, expected_extras=self.expected_extras)
        if problem is not None:
            raise AggregationError(f"client {update.client_id}: {problem}")
        self.fold(update)
        self.count += 1

    def result(self) -> Aggregate:
        if self.count == 0:
            raise AggregationError("no client updates to aggregate")
        return self.finish()

    def fold(self, update: ClientUpdate) -> None:
        raise NotImplementedError

    def finish(self) -> Aggregate:
        raise NotImplementedError


class MeanAccumulator(StreamingAccumulator):
    """Folds each update's params into an `ExactSum` weighted by its examples; `finish(mean)` makes the Aggregate
    from the float64 weighted mean of the params."""

    def __init__(self, expected: Params, expected_extras: Params | None,
                 finish: Callable[[dict[str, torch.Tensor]], Aggregate]) -> None:
        super().__init__(expected, expected_extras)
        self.params = ExactSum()
        self._finish = finish

    def fold(self, update: ClientUpdate) -> None:
        self.params.add(update.params, update.num_examples)

    def finish(self) -> Aggregate:
        return self._finish(self.params.mean())


def fold(acc: Accumulator, updates: Sequence[ClientUpdate]) -> Aggregate:
    """`aggregate` for direct callers of a streaming strategy: add each update, then the result."""
    for u in updates:
        acc.add(u)
    return acc.result()
