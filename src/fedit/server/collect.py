"""Collecting one round's updates as they arrive: validate each at once, note what metrics.jsonl needs, fold it.

`RoundCollector` is the sink an engine calls with each update (`collector(update) -> accepted`). It applies the
round loop's checks the moment the update arrives (the client was sampled this round, has not sent one before,
passes `update_problem`), records the client's metrics, example count and bytes, adds an accepted update to every
accumulator (the strategy's, the aggregation-error metric's) and keeps nothing else of it: with a streaming
strategy the round's memory does not grow with the number of clients. Only a client's first update of a round is
considered; a later one is dropped and reported (it cannot be taken back out of an accumulator).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from fedit.server.validate import update_problem
from fedit.types import ClientUpdate, Params
from fedit.wire import EXACT, wire_bytes


class Sink(Protocol):
    def add(self, update: ClientUpdate) -> None: ...


class RoundCollector:
    """One round's sink: validation, bookkeeping and folding of each update as an engine delivers it.
    `update_bytes(update)` is what an update cost on the wire (default: its tensors' bytes as held)."""

    def __init__(self, round_idx: int, sampled: Sequence[int], expected: Params, expected_extras: Params | None,
                 bounds: Mapping[int, int], max_examples: int | None, sinks: Sequence[Sink],
                 update_bytes: Callable[[ClientUpdate], int] | None = None) -> None:
        self.round_idx, self.wanted = round_idx, set(sampled)
        self.expected, self.expected_extras = expected, expected_extras
        self.bounds, self.max_examples, self.sinks = bounds, max_examples, list(sinks)
        self.update_bytes = update_bytes or (lambda u: wire_bytes(u.params, EXACT) + wire_bytes(u.extras, EXACT))
        self.accepted: dict[int, dict[str, Any]] = {}  # client id -> its metrics and examples
        self.rejected: dict[int, str] = {}  # client id -> why its update was dropped
        self.seen: dict[int, int] = {}  # client id -> updates received
        self.bytes_up = 0  # tensor bytes received, rejected updates included
        self.fold_seconds = 0.0  # time spent folding accepted updates into the accumulators

    def problem(self, update: ClientUpdate) -> str | None:
        cid = update.client_id
        if cid not in self.wanted:
            return f"client {cid} was not sampled in round {self.round_idx}"
        if self.seen.get(cid, 0) > 1:
            return f"sent {self.seen[cid]} updates in one round"
        caps = [b for b in (self.bounds.get(cid), self.max_examples) if b is not None]
        return update_problem(update, self.expected, min(caps) if caps else None,
                              expected_extras=self.expected_extras)

    def __call__(self, update: ClientUpdate) -> bool:
        """Take one update: True if it was accepted and folded in."""
        self.bytes_up += self.update_bytes(update)
        cid = update.client_id
        self.seen[cid] = self.seen.get(cid, 0) + 1
        problem = self.problem(update)
        if problem is not None:
            if cid not in self.accepted:  # a repeat of an accepted update leaves that one in place
                self.rejected[cid] = f"update rejected: {problem}"
            return False
        t0 = time.perf_counter()
        for s in self.sinks:
            s.add(update)
        self.fold_seconds += time.perf_counter() - t0
        self.accepted[cid] = dict(update.metrics) | {"examples": update.num_examples}
        return True

    def add_all(self, updates: Sequence[ClientUpdate]) -> None:
        """For an engine that returned its updates instead of handing them over: take them in id order."""
        for u in sorted(updates, key=lambda u: u.client_id):
            self(u)

    def repeats(self) -> dict[int, int]:
        """Accepted clients that sent more than one update (the first counted)."""
        return {c: n for c, n in self.seen.items() if n > 1 and c in self.accepted}

    def failures(self, engine_failures: Mapping[int, str]) -> dict[int, str]:
        """Every dropped client with its reason: the engine's failures and the rejected updates, less the
        clients whose update was accepted."""
        out = {c: r for c, r in engine_failures.items() if c not in self.accepted}
        out.update(self.rejected)
        return dict(sorted(out.items()))

    def replied(self) -> list[int]:
        return sorted(self.accepted)

    def summary(self) -> dict[str, Any]:
        """metrics.jsonl's per-round client figures, summed in client-id order (the same in any arrival order)."""
        ids = self.replied()
        n_total = sum(self.accepted[c]["examples"] for c in ids)
        return {
            "train_loss": sum(self.accepted[c]["loss"] * self.accepted[c]["examples"] for c in ids) / n_total,
            "examples": n_total,
            "tokens": int(sum(self.accepted[c].get("tokens", 0) for c in ids)),
            "client_train_seconds": sum(self.accepted[c].get("seconds", 0.0) for c in ids),
            "clients": {str(c): self.accepted[c] for c in ids},
        }
