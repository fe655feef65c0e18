"""The Flower ServerApp: fedit's own round loop (sampling, strategies, checkpoints, metrics) over a Flower Grid.

`FlowerEngine` implements fedit's Engine protocol: each round it sends one Message per SuperNode carrying the
global adapter and the ids of the sampled logical clients that node hosts, then polls for the replies until a
deadline. A node that times out, crashes or errors is dropped for the round (its clients go to `failures`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedit.client.objectives import ClientObjective
from fedit.config import Config
from fedit.engines.base import ClientProgress, RoundOutcome
from fedit.engines.flower.protocol import config_from_run_config, run_setting
from fedit.engines.flower.records import get_update, put_params
from fedit.errors import ClientError, ConfigError
from fedit.types import Params


def _log(message: str) -> None:
    print(f"[fedit] {message}", flush=True)


class LogReporter:
    """Round progress as log lines (they land in the SuperLink's log and in `flwr log`)."""

    def round_start(self, round_idx: int, total_rounds: int, sampled: list[int]) -> None:
        _log(f"round {round_idx}/{total_rounds}: clients {sampled}")

    def client_step(self, client_id: int, step: int, total: int, loss: float) -> None:
        pass

    def round_end(self, round_idx: int, metrics: dict[str, Any]) -> None:
        _log(f"round {round_idx} done: train loss {metrics['train_loss']:.4f}, replied {metrics['replied']}, "
             f"{metrics['round_seconds']:.2f}s")

    def log(self, message: str) -> None:
        _log(message)


def exchange(grid: Grid, messages: list[Message], timeout: float, poll: float) -> tuple[dict[int, Message], set[int]]:
    """Push messages and pull replies until all came back or `timeout` passed: (node -> reply, nodes that missed)."""
    ids = list(grid.push_messages(messages))
    node_of = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True)}
    pending = set(ids)
    replies: dict[int, Message] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            mid = reply.metadata.reply_to_message_id
            if mid in pending:
                pending.discard(mid)
                replies[node_of[mid]] = reply
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies, {node_of[mid] for mid in pending}


def discover_nodes(grid: Grid, min_nodes: int, num_clients: int, timeout: float,
                   poll: float) -> dict[int, list[int]]:
    """Ask every connected SuperNode which logical clients it hosts; waits for `min_nodes` and full coverage."""
    deadline = time.monotonic() + timeout
    hosted: dict[int, list[int]] = {}
    while True:
        node_ids = sorted(set(grid.get_node_ids()) - hosted.keys())
        if node_ids:
            msgs = [Message(RecordDict({"ask": ConfigRecord({"what": "clients"})}), dst_node_id=n,
                            message_type="query") for n in node_ids]
            replies, _ = exchange(grid, msgs, max(1.0, deadline - time.monotonic()), poll)
            for node, reply in replies.items():
                if reply.has_error():
                    raise ConfigError(f"SuperNode {node} cannot serve fedit clients: {reply.error.reason}")
                hosted[node] = [int(c) for c in reply.content["node"]["clients"]]  # type: ignore[union-attr]
        covered = {c for cs in hosted.values() for c in cs}
        enough = len(hosted) >= min_nodes and (num_clients == 0 or covered >= set(range(num_clients)))
        if enough or time.monotonic() >= deadline:
            break
        time.sleep(max(poll, 0.5))
    covered = {c for cs in hosted.values() for c in cs}
    expected = num_clients or (max(covered) + 1 if covered else 0)
    if len(hosted) < min_nodes or covered < set(range(expected)) or not covered:
        raise ClientError(f"after {timeout:.0f}s, {len(hosted)} SuperNode(s) connected (min-nodes {min_nodes}) "
                          f"hosting clients {sorted(covered)}; expected clients 0..{expected - 1}: start the "
                          "missing SuperNodes or fix their --node-config data-dir")
    dup = sorted(c for c in covered if sum(c in cs for cs in hosted.values()) > 1)
    if dup:
        raise ConfigError(f"clients {dup} are hosted on more than one SuperNode; each client must live on one node")
    extra = sorted(covered - set(range(expected)))
    if extra:
        raise ConfigError(f"SuperNodes host clients {extra}, beyond the {expected} clients of this run")
    return hosted


class FlowerEngine:
    """fedit's Engine over a Flower Grid: one message per node per round, replies polled with a deadline."""

    def __init__(self, grid: Grid, hosted: dict[int, list[int]], *, round_timeout: float, poll: float,
                 retries: int, min_clients: int) -> None:
        self.grid, self.round_timeout, self.poll, self.retries = grid, round_timeout, poll, retries
        self.min_clients = min_clients
        self.node_of = {c: node for node, cs in hosted.items() for c in cs}
        self.num_clients = len(self.node_of)

    def _messages(self, round_idx: int, client_ids: Iterable[int], content: RecordDict) -> list[Message]:
        by_node: dict[int, list[int]] = {}
        for cid in sorted(client_ids):
            by_node.setdefault(self.node_of[cid], []).append(cid)
        msgs = []
        for node, cids in sorted(by_node.items()):
            rd = RecordDict({k: v for k, v in content.items()})
            rd["task"] = ConfigRecord({"round": round_idx, "clients": cids})
            msgs.append(Message(rd, dst_node_id=node, message_type="train", group_id=str(round_idx)))
        return msgs

    def _attempt(self, round_idx: int, client_ids: list[int], content: RecordDict, outcome: RoundOutcome) -> None:
        msgs = self._messages(round_idx, client_ids, content)
        replies, missed = exchange(self.grid, msgs, self.round_timeout, self.poll)
        for msg in msgs:
            node = msg.metadata.dst_node_id
            cids = [int(c) for c in msg.content["task"]["clients"]]  # type: ignore[union-attr]
            if node in missed:
                for c in cids:
                    outcome.failures[c] = f"node {node} did not reply within {self.round_timeout:.0f}s"
                continue
            reply = replies[node]
            if reply.has_error():
                for c in cids:
                    outcome.failures[c] = f"node {node} failed: {reply.error.reason}"
                continue
            status = reply.content["status"]
            failed = dict(zip((int(c) for c in status["failed"]), status["reasons"], strict=True))  # type: ignore
            for c in cids:
                if c in failed:
                    outcome.failures[c] = f"node {node}: {failed[c]}"
                else:
                    outcome.failures.pop(c, None)
                    outcome.updates.append(get_update(reply.content, c))

    def train_round(self, round_idx: int, client_ids: list[int], global_params: Params,
                    objective: ClientObjective | None, progress: ClientProgress | None = None) -> RoundOutcome:
        # the clients rebuild the strategy's objective from the config they share with the server
        content = RecordDict()
        put_params(content, "global", global_params)
        outcome = RoundOutcome(updates=[])
        self._attempt(round_idx, client_ids, content, outcome)
        for attempt in range(self.retries):
            if len(outcome.updates) >= self.min_clients or not outcome.failures:
                break
            _log(f"round {round_idx}: {len(outcome.updates)} replies < min_clients {self.min_clients}; "
                 f"retry {attempt + 1}/{self.retries} for clients {sorted(outcome.failures)}")
            self._attempt(round_idx, sorted(outcome.failures), content, outcome)
        return outcome

    def close(self) -> None:
        pass


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    error_file = run_setting(rc, "error-file")
    try:
        serve(grid, rc)
    except BaseException as e:
        reason = str(e) if isinstance(e, (ClientError, ConfigError)) else traceback.format_exc()
        _log(f"run failed: {reason}")
        if error_file:
            Path(error_file).parent.mkdir(parents=True, exist_ok=True)
            Path(error_file).write_text(f"{type(e).__name__}: {e}" if isinstance(e, Exception) else str(e))
        raise


def serve(grid: Grid, rc: Any) -> None:
    from fedit import pipeline

    cfg: Config = config_from_run_config(rc)
    out = run_setting(rc, "out")
    if out:
        cfg.run.out = out
    poll = run_setting(rc, "poll-interval")
    hosted = discover_nodes(grid, run_setting(rc, "min-nodes"), run_setting(rc, "num-clients"),
                            run_setting(rc, "discovery-timeout"), poll)
    _log(f"nodes and their clients: {hosted}")
    engine = FlowerEngine(grid, hosted, round_timeout=run_setting(rc, "round-timeout"), poll=poll,
                          retries=run_setting(rc, "round-retries"), min_clients=cfg.run.min_clients)
    resume = cfg.run.out if run_setting(rc, "resume") else None
    # data.source = "nodes": the server never reads training data, it only learns which clients the nodes host.
    data = (pipeline.data_on_nodes(cfg, sorted(c for cs in hosted.values() for c in cs))
            if cfg.data.source == "nodes" else None)
    result = pipeline.run(cfg, resume=resume, overwrite=run_setting(rc, "overwrite"), engine=engine,
                          reporter=LogReporter(), data=data)
    _log(f"run finished: {result.run_dir}")
