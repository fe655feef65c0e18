"""The round loop: sample -> train (engine; updates folded into the strategy's accumulator as they arrive) ->
aggregate (strategy) -> evaluate -> checkpoint. Engine-agnostic."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from fedit.config import Config
from fedit.engines.base import Engine
from fedit.errors import ClientError
from fedit.model.base_delta import BaseWeights
from fedit.server.checkpoint import RunStore
from fedit.server.collect import RoundCollector
from fedit.server.sampling import sample_clients
from fedit.strategies._math import AggregationErrorAccumulator
from fedit.strategies.base import RoundContext, State, Strategy
from fedit.types import ClientTask, Params, RoundResult
from fedit.wire import EXACT, WireFormat, wire_bytes

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


def _sent_bytes(tasks: Mapping[int, ClientTask], wire: WireFormat = EXACT) -> int:
    """Bytes of tensor data the server sent this round: each client's task, params and extras."""
    return sum(wire_bytes(t.params, wire) + wire_bytes(t.extras, wire) for t in tasks.values())


def last_accepted(history: list[dict[str, Any]]) -> dict[int, int]:
    """Client id -> the last round whose update from it was accepted (whose client state therefore counts)."""
    out: dict[int, int] = {}
    for m in history:
        for cid in m.get("replied", []):
            out[int(cid)] = int(m["round"])
    return out


def with_state_round(tasks: Mapping[int, ClientTask], accepted: Mapping[int, int]) -> dict[int, ClientTask]:
    """Each task tagged with the round of its client's current state (`config["state_round"]`, 0 = none); the
    tensors stay the same objects, so an engine still sends a shared payload once."""
    return {cid: ClientTask(t.params, t.extras, {**t.config, "state_round": accepted.get(cid, 0)})
            for cid, t in tasks.items()}


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
    base_delta: Params | None = None,
    run_id: str = "",
    base: BaseWeights | None = None,
) -> tuple[Params, State, list[RoundResult]]:
    """Run rounds start_round+1 .. cfg.run.rounds; every finished round is checkpointed before the next starts.

    Each round: the strategy configures a task per sampled client, the engine trains them and hands each update
    to a `RoundCollector` as it arrives, which validates it at once (server/collect.py states the rules), notes its
    metrics and folds it into the strategy's accumulator and the aggregation-error metric's (a streaming strategy
    thus holds no update past its arrival); the round is saved with the clients' new state and the cumulative
    base delta. `example_bounds` maps a client id to the number of examples the server assigned
    it, the most that client may claim. `base` is the server's own model's base (evaluation sees the base delta).
    """
    rep = reporter or NullReporter()
    bounds = example_bounds or {}
    delta: Params = dict(base_delta or {})
    accepted = last_accepted(store.history())
    results: list[RoundResult] = []
    for r in range(start_round + 1, cfg.run.rounds + 1):
        t_round = time.perf_counter()
        sampled = sample_clients(cfg.run, engine.num_clients, r)
        ctx = RoundContext(r, cfg.run.seed, engine.num_clients, tuple(sampled), run_id)
        rep.round_start(r, cfg.run.rounds, sampled)
        tasks = with_state_round(strategy.configure(ctx, params, state), accepted)
        expected, expected_extras = strategy.expected_update(params)
        acc = strategy.accumulator(ctx, params, state)
        err = AggregationErrorAccumulator(params, ctx.rng("aggregation_error"))
        wire = WireFormat.of(cfg.run)
        collect = RoundCollector(r, sampled, expected, expected_extras, bounds, cfg.run.max_client_examples,
                                 [acc, err], lambda u, w=wire: wire_bytes(u.params, w) + wire_bytes(u.extras, w))
        outcome = engine.train_round(ctx, tasks, rep.client_step, sink=collect)  # folded as they arrive
        collect.add_all(outcome.updates)  # none from an engine that took the sink
        failures = collect.failures(outcome.failures)
        replied = collect.replied()
        for cid, reason in failures.items():
            rep.log(f"round {r}: client {cid} dropped: {reason}")
        for cid, n in sorted(collect.repeats().items()):
            rep.log(f"round {r}: client {cid} sent {n} updates; the first was aggregated, the others dropped")
        if len(replied) < cfg.run.min_clients:
            raise ClientError(
                f"round {r}: only {len(replied)} of {len(sampled)} sampled clients sent a usable update, "
                f"min_clients is {cfg.run.min_clients}; the run stopped after round {r - 1}, "
                f"which is saved: fix the cause and resume with --resume {store.root}"
            )
        t_train = time.perf_counter() - t_round - collect.fold_seconds

        t0 = time.perf_counter()
        agg_error = err.result()
        agg = acc.result()  # independent of arrival order: the same bits on every engine
        params, state = agg.params, agg.state
        if agg.base_delta:  # cumulative, in float32: every client sets W0 + delta afresh
            for k, v in agg.base_delta.items():
                delta[k] = delta[k] + v.to(torch.float32) if k in delta else v.to(torch.float32)
            if base is not None:
                base.apply(delta)
            engine.set_base_delta(delta)
        t_agg = time.perf_counter() - t0 + collect.fold_seconds

        metrics: dict[str, Any] = {
            "round": r,
            "sampled": sampled,
            "replied": replied,
            "failed": {str(k): v for k, v in failures.items()},
        }
        summary = collect.summary()
        clients = summary.pop("clients")
        metrics |= summary | {
            "train_seconds": t_train,
            "aggregate_seconds": t_agg,
            "aggregation_error": agg_error,
            "bytes_down": _sent_bytes(tasks, wire),
            "bytes_up": collect.bytes_up,
            "clients": clients,
        }
        if not err.exact:
            metrics["aggregation_error_sketch_columns"] = err.columns  # an estimate (strategies/_math.py)
        if agg.metrics:
            metrics["strategy"] = dict(agg.metrics)
        if evaluate is not None and cfg.run.eval_every and r % cfg.run.eval_every == 0 and r != cfg.run.rounds:
            t0 = time.perf_counter()
            metrics["eval"] = evaluate(params)
            metrics["eval_seconds"] = time.perf_counter() - t0
        metrics["round_seconds"] = time.perf_counter() - t_round  # before checkpointing; that is added below
        kept = {c: s for c, s in outcome.client_state.items() if c in metrics["replied"]}  # accepted updates only
        ckpt = store.save_round(r, params, state, metrics, peft_config, kept, delta or None)
        accepted.update(dict.fromkeys(metrics["replied"], r))
        metrics["checkpoint_seconds"] = ckpt
        rep.round_end(r, metrics)
        results.append(RoundResult(r, sampled, metrics["replied"], metrics))
    return params, state, results
