"""The Flower ServerApp: fedit's own round loop (sampling, strategies, checkpoints, metrics) over a Flower Grid.

`FlowerEngine` implements fedit's Engine protocol. Each round it sends one Message per SuperNode carrying the
tasks of the sampled logical clients that node hosts (records.put_tasks: a tensor group shared by several tasks,
such as the global adapter, goes once per node; per-client extras and settings, `state_round` among them, ride
with each task), the run id (the node keys its clients' state by it) and the cumulative base delta, if the
strategy made one; the replies are read as they come.
What a node does wrong costs that node's clients for the round, never the run:

- before the round, clients whose node is no longer in `grid.get_node_ids()` fail at once ("not connected"), and
  node ids that appeared since discovery are asked which clients they host (a restarted SuperNode takes its
  clients back);
- every Message carries `ttl` = the round's remaining time (Flower's 12 h default never applies, so a node that
  reconnects late cannot run a stale round);
- once `min_clients` plausible updates are in, at t_min seconds, the others get max(round-grace, t_min) seconds
  more; the round never lasts longer than round-timeout, retries included;
- an error reply, a malformed reply (replies.py) or a client the node reports as failed goes to the round's
  failures with the reason; only such clients, whose node did answer, are retried.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedit.config import Config
from fedit.engines.base import ClientProgress, RoundOutcome, UpdateSink
from fedit.engines.flower.protocol import config_from_run_config, run_setting
from fedit.engines.flower.records import put_tasks
from fedit.engines.flower.replies import hosted_clients, read_reply, short
from fedit.errors import ClientError, ConfigError, FeditError
from fedit.strategies.base import RoundContext
from fedit.types import ClientTask, ClientUpdate, Params
from fedit.wire import EXACT, WireError, WireFormat, receive_tasks, receive_update, send_tasks

MIN_TTL = 0.1  # a message with less time left is not sent (and Flower would read a ttl of 0 as its 12 h default)
QUERY_WAIT = 10.0  # seconds a round start waits for new SuperNodes to say which clients they host


def _log(message: str) -> None:
    print(f"[fedit] {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {message}", flush=True)


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


# ---- talking to the Grid: push, then pull replies as they come, until a deadline that may move ----------------
def node_ids(grid: Grid) -> set[int] | None:
    """The connected SuperNodes, or None if the SuperLink could not say (the caller then skips the check)."""
    try:
        return {int(n) for n in grid.get_node_ids()}
    except Exception as e:  # noqa: BLE001 - a SuperLink hiccup must not end the run
        _log(f"could not list the connected SuperNodes: {type(e).__name__}: {e}")
        return None


def push(grid: Grid, messages: list[Message]) -> tuple[dict[str, Message], list[tuple[Message, str]]]:
    """(message id -> message) for what the SuperLink took, and (message, reason) for what it did not."""
    if not messages:
        return {}, []
    try:
        ids = list(grid.push_messages(messages))
    except Exception as e:  # noqa: BLE001 - the affected nodes fail for this round, the run goes on
        return {}, [(m, f"could not send to node {m.metadata.dst_node_id}: {type(e).__name__}: {short(e)}")
                    for m in messages]
    ids += [None] * (len(messages) - len(ids))
    pushed = {str(mid): m for mid, m in zip(ids, messages, strict=True) if mid}
    refused = [(m, f"the SuperLink did not accept the message for node {m.metadata.dst_node_id}")
               for mid, m in zip(ids, messages, strict=True) if not mid]
    return pushed, refused


def poll_replies(grid: Grid, pending: dict[str, Message], deadline: Callable[[], float], poll: float,
                 on_reply: Callable[[Message, Message], None]) -> dict[str, Message]:
    """Pull replies to `pending` (message id -> sent message; updated in place, and `on_reply` may add to it),
    calling `on_reply(sent, reply)` for each, until all are in or `time.monotonic()` passes `deadline()` (asked
    again after every pull: the grace period moves it). At least one pull is made. Returns what is unanswered."""
    while pending:
        try:
            replies = list(grid.pull_messages(list(pending)))
        except Exception as e:  # noqa: BLE001 - retried at the next poll
            _log(f"pulling replies failed: {type(e).__name__}: {e}")
            replies = []
        for reply in replies:
            sent = pending.pop(str(reply.metadata.reply_to_message_id), None)
            if sent is not None:
                on_reply(sent, reply)
        left = deadline() - time.monotonic()
        if not pending or left <= 0:
            break
        time.sleep(min(poll, left))
    return pending


def query_message(node: int, ttl: float) -> Message:
    return Message(RecordDict({"ask": ConfigRecord({"what": "clients"})}), dst_node_id=node, message_type="query",
                   ttl=max(MIN_TTL, ttl))


def discover_nodes(grid: Grid, min_nodes: int, num_clients: int, timeout: float,
                   poll: float) -> dict[int, list[int]]:
    """Ask every connected SuperNode which logical clients it hosts; waits for `min_nodes` and full coverage.

    A node whose answer is an error or malformed is left out (and named in the error if coverage then fails)."""
    deadline = time.monotonic() + timeout
    hosted: dict[int, list[int]] = {}
    problems: dict[int, str] = {}
    pending: dict[str, Message] = {}

    def take(sent: Message, reply: Message) -> None:
        node = sent.metadata.dst_node_id
        try:
            hosted[node] = hosted_clients(reply, node)
        except ValueError as e:
            problems[node] = str(e)
            _log(f"discovery: {e}")

    def enough() -> bool:
        covered = {c for cs in hosted.values() for c in cs}
        return len(hosted) >= min_nodes and (num_clients == 0 or covered >= set(range(num_clients)))

    enough_at: float | None = None
    while True:
        asked = hosted.keys() | problems.keys() | {m.metadata.dst_node_id for m in pending.values()}
        new = sorted((node_ids(grid) or set()) - asked)
        if new:
            pushed, _ = push(grid, [query_message(n, deadline - time.monotonic()) for n in new])
            pending.update(pushed)
        pending = poll_replies(grid, pending, lambda: 0.0, poll, take)  # one pull
        now = time.monotonic()
        if enough_at is None and enough():
            enough_at = now
        # enough nodes: still let every node already asked answer, unless one keeps us waiting QUERY_WAIT s
        if (enough_at is not None and (not pending or now - enough_at >= QUERY_WAIT)) or now >= deadline:
            break
        time.sleep(poll)
    return _check_coverage(hosted, problems, min_nodes, num_clients, timeout)


def _check_coverage(hosted: dict[int, list[int]], problems: dict[int, str], min_nodes: int, num_clients: int,
                    timeout: float) -> dict[int, list[int]]:
    covered = {c for cs in hosted.values() for c in cs}
    expected = num_clients or (max(covered) + 1 if covered else 0)
    if len(hosted) < min_nodes or covered < set(range(expected)) or not covered:
        why = "".join(f"; {p}" for _, p in sorted(problems.items()))
        raise ClientError(f"after {timeout:.0f}s, {len(hosted)} SuperNode(s) connected (min-nodes {min_nodes}) "
                          f"hosting clients {sorted(covered)}; expected clients 0..{expected - 1}: start the "
                          f"missing SuperNodes or fix their --node-config data-dir{why}")
    dup = sorted(c for c in covered if sum(c in cs for cs in hosted.values()) > 1)
    if dup:
        raise ConfigError(f"clients {dup} are hosted on more than one SuperNode; each client must live on one node")
    extra = sorted(covered - set(range(expected)))
    if extra:
        raise ConfigError(f"SuperNodes host clients {extra}, beyond the {expected} clients of this run")
    return hosted


# ---- one round ---------------------------------------------------------------------------------------------------
@dataclass
class RoundClock:
    """A round's deadlines on time.monotonic(): the hard one (start + timeout) and, once `min_clients` plausible
    updates are in at t_min, the grace one: t_min + max(grace, t_min - start), never past the hard one."""

    start: float
    timeout: float
    grace: float
    t_min: float | None = None

    @property
    def hard(self) -> float:
        return self.start + self.timeout

    def deadline(self) -> float:
        if self.t_min is None:
            return self.hard
        return min(self.hard, self.t_min + max(self.grace, self.t_min - self.start))

    def remaining(self) -> float:
        """Seconds left before the hard deadline: the TTL of every message the round sends."""
        return self.hard - time.monotonic()

    def min_reached(self) -> None:
        if self.t_min is None:
            self.t_min = time.monotonic()

    def in_grace(self) -> bool:
        return self.t_min is not None and self.deadline() < self.hard


@dataclass
class _Round:
    """What one round has gathered so far, across attempts."""

    idx: int
    tasks: dict[int, ClientTask]
    clock: RoundClock
    run_id: str = ""
    updates: dict[int, ClientUpdate] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    retriable: set[int] = field(default_factory=set)  # failed clients whose node answered: worth a retry
    plausible: set[int] = field(default_factory=set)  # updates that would pass the round loop's checks
    tries: dict[int, int] = field(default_factory=dict)  # retries sent per client
    sink: UpdateSink | None = None  # the round loop's: takes each update as it is read (then not kept here)
    replied: set[int] = field(default_factory=set)  # clients whose update went to the sink
    sent: dict[int, ClientTask] = field(default_factory=dict)  # the tasks as they go on the wire (fedit.wire)
    received: dict[int, ClientTask] = field(default_factory=dict)  # `sent` decoded: what each client trains from

    def fail(self, cid: int, reason: str, retriable: bool = False) -> None:
        self.failures[cid] = reason
        self.updates.pop(cid, None)
        self.plausible.discard(cid)
        (self.retriable.add if retriable else self.retriable.discard)(cid)

    def succeed(self, update: ClientUpdate, plausible: bool) -> None:
        cid = update.client_id
        if self.sink is None:
            self.updates[cid] = update
        else:
            self.replied.add(cid)
        self.failures.pop(cid, None)
        self.retriable.discard(cid)
        (self.plausible.add if plausible else self.plausible.discard)(cid)


def _clients_of(msg: Message) -> list[int]:
    return [int(c) for c in msg.content["task"]["clients"]]  # type: ignore[union-attr]


class FlowerEngine:
    """fedit's Engine over a Flower Grid: one message per node per round, replies read as they come."""

    def __init__(self, grid: Grid, hosted: dict[int, list[int]], *, round_timeout: float, poll: float,
                 retries: int, min_clients: int, round_grace: float = 5.0, query_ttl: float = 300.0,
                 query_wait: float = QUERY_WAIT, max_examples: int | None = None, wire: WireFormat = EXACT) -> None:
        self.grid, self.round_timeout, self.poll, self.retries = grid, round_timeout, poll, retries
        self.min_clients, self.round_grace, self.max_examples = min_clients, round_grace, max_examples
        self.query_ttl, self.query_wait = query_ttl, query_wait
        self.wire = wire  # run.wire_dtype: tasks go encoded, updates are decoded against what was sent
        self.node_of = {c: node for node, cs in hosted.items() for c in cs}
        self.num_clients = len(self.node_of)
        self.asked = set(hosted)  # node ids whose clients are known, or that were asked
        self._queries: dict[str, tuple[Message, float]] = {}  # open client queries: id -> (message, expiry)
        self.base_delta: Params = {}

    # -- liveness: who is connected, and which clients new nodes host --------------------------------------------
    def _liveness(self, clock: RoundClock) -> set[int] | None:
        connected = node_ids(self.grid)
        if connected is None:
            return None
        now = time.monotonic()
        for mid, (msg, expiry) in list(self._queries.items()):
            if now >= expiry:  # never answered: ask that node again
                del self._queries[mid]
                self.asked.discard(msg.metadata.dst_node_id)
        new = sorted(connected - self.asked)
        if new:
            _log(f"new SuperNode(s) {new}: asking which clients they host")
            pushed, _ = push(self.grid, [query_message(n, self.query_ttl) for n in new])
            self.asked.update(m.metadata.dst_node_id for m in pushed.values())
            self._queries.update({mid: (m, now + self.query_ttl) for mid, m in pushed.items()})
        if self._queries:
            wait = min(self.query_wait, max(0.0, clock.remaining() / 4)) if new else 0.0
            until = time.monotonic() + wait
            left = poll_replies(self.grid, {mid: m for mid, (m, _) in self._queries.items()}, lambda: until,
                                self.poll, lambda sent, reply: self._adopt(sent, reply, connected))
            self._queries = {mid: q for mid, q in self._queries.items() if mid in left}
        return connected

    def _adopt(self, sent: Message, reply: Message, connected: set[int]) -> None:
        node = sent.metadata.dst_node_id
        try:
            clients = hosted_clients(reply, node)
        except ValueError as e:
            _log(f"ignoring SuperNode {node}: {e}")
            return
        moved = []
        for c in clients:
            old = self.node_of.get(c)
            if old is None:
                _log(f"SuperNode {node} hosts client {c}, which is not part of this run: ignored")
            elif old != node and old in connected:
                _log(f"client {c} is reported by SuperNodes {old} and {node}; keeping it on {old}")
            elif old != node:
                self.node_of[c] = node
                moved.append(c)
        if moved:
            _log(f"clients {moved} are now served by SuperNode {node}")

    # -- one attempt: send, read replies as they come, until the (moving) deadline --------------------------------
    def _messages(self, rnd: _Round, client_ids: Iterable[int], ttl: float) -> list[Message]:
        by_node: dict[int, list[int]] = {}
        for cid in sorted(client_ids):
            by_node.setdefault(self.node_of[cid], []).append(cid)
        msgs = []
        for node, cids in sorted(by_node.items()):
            rd = RecordDict()
            put_tasks(rd, rnd.idx, rnd.run_id, {c: rnd.sent[c] for c in cids}, self.base_delta)
            msgs.append(Message(rd, dst_node_id=node, message_type="train", group_id=str(rnd.idx), ttl=ttl))
        return msgs

    def _plausible(self, update: ClientUpdate, task: ClientTask | None) -> bool:
        """Whether the update would pass the round loop's checks, judged against what its client was sent (the
        tensors a client loads are those it returns, for every strategy so far); only counts towards min_clients."""
        from fedit.server.validate import update_problem

        if task is None:
            return False
        try:
            return update_problem(update, task.params, self.max_examples) is None
        except Exception:  # noqa: BLE001 - only counts towards min_clients; the round loop judges it again
            return False

    def _take(self, rnd: _Round, sent: Message, reply: Message) -> None:
        node = sent.metadata.dst_node_id
        _log(f"round {rnd.idx}: node {node} replied for clients {_clients_of(sent)}")
        answer = read_reply(reply, node, _clients_of(sent))
        for cid, reason in answer.failures.items():
            rnd.fail(cid, reason, retriable=answer.answered)
        for update in answer.updates.values():
            try:
                update = receive_update(update, rnd.received.get(update.client_id, ClientTask({})), self.wire)
            except WireError as e:  # a malformed encoding costs that client, as any malformed update
                rnd.fail(update.client_id, f"node {node} sent a malformed update for client {update.client_id} "
                                           f"({short(e)})", retriable=answer.answered)
                continue
            if rnd.sink is not None:  # folded into the round's accumulator now; its verdict is the real check
                rnd.succeed(update, bool(rnd.sink(update)))
            else:
                rnd.succeed(update, self._plausible(update, rnd.tasks.get(update.client_id)))
        if len(rnd.plausible) >= self.min_clients:
            rnd.clock.min_reached()

    def _missed(self, rnd: _Round, node: int) -> str:
        c = rnd.clock
        if c.in_grace() and c.t_min is not None:
            return (f"node {node} did not reply within the round's grace period ({c.deadline() - c.t_min:.1f}s "
                    f"after {self.min_clients} update(s) were in at {c.t_min - c.start:.1f}s)")
        return f"node {node} did not reply within the round's {self.round_timeout:.0f}s"

    def _send(self, rnd: _Round, client_ids: list[int]) -> dict[str, Message]:
        """Push one message per node for `client_ids`, TTL = the round's remaining time; returns what was pushed."""
        ttl = rnd.clock.remaining()
        if ttl < MIN_TTL:
            for cid in client_ids:
                rnd.fail(cid, f"round {rnd.idx} had no time left to send client {cid}")
            return {}
        pushed, refused = push(self.grid, self._messages(rnd, client_ids, ttl))
        for msg, reason in refused:
            for cid in _clients_of(msg):
                rnd.fail(cid, reason)
        return pushed

    def _maybe_retry(self, rnd: _Round, pending: dict[str, Message]) -> None:
        """Re-send failed clients whose node answered, as soon as min_clients cannot be met without them."""
        waiting = sum(len(_clients_of(m)) for m in pending.values())
        if len(rnd.plausible) + waiting >= self.min_clients:
            return
        again = [c for c in sorted(rnd.retriable) if rnd.tries.get(c, 0) < self.retries]
        if not again or rnd.clock.remaining() < MIN_TTL:
            return
        for c in again:
            rnd.tries[c] = rnd.tries.get(c, 0) + 1
        _log(f"round {rnd.idx}: {len(rnd.plausible)} usable update(s) + {waiting} awaited < min_clients "
             f"{self.min_clients}; re-sending clients {again}, whose nodes answered")
        pending.update(self._send(rnd, again))

    def set_base_delta(self, delta: Params) -> None:
        """Every later train message carries `delta` (cumulative): the nodes set W0 + delta themselves."""
        self.base_delta = dict(delta)

    def train_round(self, ctx: RoundContext, tasks: dict[int, ClientTask], progress: ClientProgress | None = None,
                    sink: UpdateSink | None = None) -> RoundOutcome:
        # the nodes rebuild the strategy's client plan from the config they share with the server
        rnd = _Round(ctx.round, dict(tasks), RoundClock(time.monotonic(), self.round_timeout, self.round_grace),
                     ctx.run_id, sink=sink)
        rnd.sent = send_tasks(tasks, self.wire)  # encoded once (a shared group stays one object, sent once a node)
        rnd.received = receive_tasks(rnd.sent, self.wire)  # the reference each update is decoded against
        connected = self._liveness(rnd.clock)
        send = []
        for cid in sorted(tasks):
            node = self.node_of.get(cid)
            if node is None:
                rnd.fail(cid, f"no SuperNode hosts client {cid}")
            elif connected is not None and node not in connected:
                rnd.fail(cid, f"node {node} is not connected")
            else:
                send.append(cid)
        pending = self._send(rnd, send) if send else {}
        _log(f"round {rnd.idx}: {len(pending)} message(s) sent")

        def on_reply(sent: Message, reply: Message) -> None:
            self._take(rnd, sent, reply)
            self._maybe_retry(rnd, pending)

        self._maybe_retry(rnd, pending)
        left = poll_replies(self.grid, pending, rnd.clock.deadline, self.poll, on_reply)
        for msg in left.values():
            reason = self._missed(rnd, msg.metadata.dst_node_id)
            for cid in _clients_of(msg):
                before = rnd.failures.get(cid) if rnd.tries.get(cid) else None
                rnd.fail(cid, f"{before}; then the retry: {reason}" if before else reason)
        return RoundOutcome(updates=[rnd.updates[c] for c in sorted(rnd.updates)],
                            failures=dict(sorted(rnd.failures.items())))

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
        reason = str(e) if isinstance(e, FeditError) else traceback.format_exc()
        _log(f"run failed: {reason}")
        if isinstance(e, FeditError):  # the one line above says it all: Flower logs it without the traceback
            logging.getLogger("flwr").addFilter(_without_traceback)
        if error_file:
            Path(error_file).parent.mkdir(parents=True, exist_ok=True)
            Path(error_file).write_text(f"{type(e).__name__}: {e}" if isinstance(e, Exception) else str(e))
        raise


def _without_traceback(record: logging.LogRecord) -> bool:
    """A logging filter: Flower's record of a fedit error (bad run config, refused resume, too few clients) keeps
    its message and loses the traceback (fedit errors, as on the CLI, are shown as one line)."""
    if record.exc_info and isinstance(record.exc_info[1], FeditError):
        record.exc_info, record.exc_text = None, None
    return True


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
                          retries=run_setting(rc, "round-retries"), min_clients=cfg.run.min_clients,
                          round_grace=run_setting(rc, "round-grace"), query_ttl=run_setting(rc, "discovery-timeout"),
                          max_examples=cfg.run.max_client_examples, wire=WireFormat.of(cfg.run))
    resume = cfg.run.out if run_setting(rc, "resume") else None
    # data.source = "nodes": the server never reads training data, it only learns which clients the nodes host.
    data = (pipeline.data_on_nodes(cfg, sorted(c for cs in hosted.values() for c in cs))
            if cfg.data.source == "nodes" else None)
    result = pipeline.run(cfg, resume=resume, overwrite=run_setting(rc, "overwrite"), engine=engine,
                          reporter=LogReporter(), data=data)
    _log(f"run finished: {result.run_dir}")
