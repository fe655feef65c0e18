"""The round loop: sample -> train (engine) -> aggregate (strategy) -> evaluate -> checkpoint. Engine-agnostic."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from fedit.config import Config
from fedit.engines.base import Engine, RoundOutcome
from fedit.errors import ClientError
from fedit.server.checkpoint import RunStore
from fedit.server.sampling import sample_clients
from fedit.server.validate import update_problem
from fedit.strategies.base import State, Strategy
from fedit.types import ClientUpdate, Params, RoundResult, payload_bytes

Evaluate = Callable[[Params], dict[str, Any]]


class Reporter(Protocol):
    def round_start(self, round_idx: int, total_rounds: int, sampled: list[int]) -> None: ...
    def client_step(self, client_id: int, step: int, total: int, loss: float) -> None: ...
    def round_end(self, round_idx: int, metrics: dict[str, Any]) -> None: ...
    def log(self, message: str) -> None: ...


class NullReporter:
    def round_start(self, round_idx: int, total_rounds: int, sampled: list[int]) -> None:
        pass

    def client_step(self, client_id: int, step: int, total: int, loss: float) -> None:
        pass

    def round_end(self, round_idx: int, metrics: dict[str, Any]) -> None:
        pass

    def log(self, message: str) -> None:
        pass


def screen_updates(round_idx: int, sampled: list[int], outcome: RoundOutcome, expected: Params,
                   bounds: Mapping[int, int], max_examples: int | None) -> tuple[list[ClientUpdate], dict[int, str]]:
    """The updates a strategy may see, sorted by client id, and every dropped client with its reason.

    An update is rejected when it fails `update_problem` (keys, shapes, dtypes, finite values, `num_examples` within
    what the client was assigned or `max_examples`, finite metrics), comes from a client not sampled this round, or
    repeats a client that already sent one.
    """
    failures = dict(outcome.failures)
    accepted: dict[int, ClientUpdate] = {}
    wanted = set(sampled)
    count = Counter(u.client_id for u in outcome.updates)
    for u in outcome.updates:
        cid = u.client_id
        caps = [b for b in (bounds.get(cid), max_examples) if b is not None]
        if cid not in wanted:
            problem: str | None = f"client {cid} was not sampled in round {round_idx}"
        elif count[cid] > 1:
            problem = f"sent {count[cid]} updates in one round"
        else:
            problem = update_problem(u, expected, min(caps) if caps else None)
        if problem is None:
            failures.pop(cid, None)
            accepted[cid] = u
        else:
            failures[cid] = f"update rejected: {problem}"
    return [accepted[c] for c in sorted(accepted)], failures


def _received_bytes(outcome: RoundOutcome) -> int:
    """Bytes of tensor data the server received this round, rejected updates included."""
    total = 0
    for u in outcome.updates:
        if isinstance(u.params, Mapping):
            total += payload_bytes({k: v for k, v in u.params.items() if isinstance(v, torch.Tensor)})
    return total


def run_rounds(
    cfg: Config,
    engine: Engine,
    strategy: Strategy,
    store: RunStore,
    peft_config: Any,
    params: Params,
    state: State,
    start_round: int,
    evaluate: Evaluate | None = None,
    reporter: Reporter | None = None,
    example_bounds: Mapping[int, int] | None = None,
) -> tuple[Params, State, list[RoundResult]]:
    """Run rounds start_round+1 .. cfg.run.rounds; every finished round is checkpointed before the next starts.

    Each update is validated before the strategy sees it (`screen_updates`); `example_bounds` maps a client id to
    the number of examples the server assigned it, the most that client may claim.
    """
    rep = reporter or NullReporter()
    objective = strategy.client_objective()
    bounds = example_bounds or {}
    results: list[RoundResult] = []
    for r in range(start_round + 1, cfg.run.rounds + 1):
        t_round = time.perf_counter()
        sampled = sample_clients(cfg.run, engine.num_clients, r)
        rep.round_start(r, cfg.run.rounds, sampled)
        outcome = engine.train_round(r, sampled, params, objective, rep.client_step)
        updates, failures = screen_updates(r, sampled, outcome, params, bounds, cfg.run.max_client_examples)
        for cid, reason in sorted(failures.items()):
            rep.log(f"round {r}: client {cid} dropped: {reason}")
        if len(updates) < cfg.run.min_clients:
            raise ClientError(
                f"round {r}: only {len(updates)} of {len(sampled)} sampled clients sent a usable update, "
                f"min_clients is {cfg.run.min_clients}; the run stopped after round {r - 1}, "
                f"which is saved: fix the cause and resume with --resume {store.root}"
            )
        t_train = time.perf_counter() - t_round

        t0 = time.perf_counter()
        params, state = strategy.aggregate(params, updates, state)  # updates sorted by id: same bits everywhere
        t_agg = time.perf_counter() - t0

        n_total = sum(u.num_examples for u in updates)
        metrics: dict[str, Any] = {
            "round": r,
            "sampled": sampled,
            "replied": [u.client_id for u in updates],
            "failed": {str(k): v for k, v in sorted(failures.items())},
            "train_loss": sum(u.metrics["loss"] * u.num_examples for u in updates) / n_total,
            "examples": n_total,
            "tokens": int(sum(u.metrics.get("tokens", 0) for u in updates)),
            "client_train_seconds": sum(u.metrics.get("seconds", 0.0) for u in updates),
            "train_seconds": t_train,
            "aggregate_seconds": t_agg,
            "bytes_down": payload_bytes(params) * len(sampled),
            "bytes_up": _received_bytes(outcome),
            "clients": {str(u.client_id): {k: v for k, v in u.metrics.items()} | {"examples": u.num_examples}
                        for u in updates},
        }
        if evaluate is not None and cfg.run.eval_every and r % cfg.run.eval_every == 0 and r != cfg.run.rounds:
            t0 = time.perf_counter()
            metrics["eval"] = evaluate(params)
            metrics["eval_seconds"] = time.perf_counter() - t0
        metrics["round_seconds"] = time.perf_counter() - t_round  # before checkpointing; that is added below
        ckpt = store.save_round(r, params, state, metrics, peft_config)
        metrics["checkpoint_seconds"] = ckpt
        rep.round_end(r, metrics)
        results.append(RoundResult(r, sampled, metrics["replied"], metrics))
    return params, state, results
