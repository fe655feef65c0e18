"""FlowerEngine against a small in-process Grid stand-in: malformed replies, deadlines, grace, TTL, liveness, retry.

A real SuperNode cannot easily be made to send a malformed reply, so these tests script the replies with real
`flwr.app.Message` objects; everything else about the Flower engine is tested on real loopback deployments
(test_loopback.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
from flwr.app import Array, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedit.engines.flower.records import get_params, get_tasks, put_status, put_update  # noqa: E402
from fedit.engines.flower.server_app import FlowerEngine, RoundClock, discover_nodes  # noqa: E402
from fedit.strategies.base import RoundContext  # noqa: E402
from fedit.types import ClientTask, ClientUpdate  # noqa: E402

GLOBAL = {"m.lora_A.weight": torch.zeros(2, 3), "m.lora_B.weight": torch.ones(3, 2)}
RUN = "0123abcd"


def _round(r: int, clients: list[int], params: dict | None = None) -> tuple[RoundContext, dict[int, ClientTask]]:
    """(context, tasks) of round r: the same task object for every client, as the default `configure` makes."""
    task = ClientTask(GLOBAL if params is None else params, config={"state_round": 0})
    return RoundContext(r, 0, 4, tuple(clients), RUN), dict.fromkeys(clients, task)
Behaviour = Callable[[Message], "Message | None"]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when it builds messages (run, node and task ids)."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class StandInGrid:
    """push/pull/get_node_ids like flwr's Grid; each node answers with a scripted reply after a delay (or never)."""

    def __init__(self, nodes: dict[int, Behaviour], delays: dict[int, float] | None = None) -> None:
        self.nodes, self.delays = nodes, delays or {}
        self.connected = set(nodes)
        self.sent: list[Message] = []
        self._due: dict[str, tuple[float, Message]] = {}

    def get_node_ids(self) -> list[int]:
        return sorted(self.connected)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for m in messages:
            mid = f"m{len(self.sent)}"
            m.metadata.__dict__["_message_id"] = mid  # as the SuperLink does
            self.sent.append(m)
            node = m.metadata.dst_node_id
            reply = self.nodes[node](m)
            if reply is not None:
                self._due[mid] = (time.monotonic() + self.delays.get(node, 0.0), reply)
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        now = time.monotonic()
        ready = [mid for mid in ids if mid in self._due and self._due[mid][0] <= now]
        return [self._due.pop(mid)[1] for mid in ready]

    def sent_to(self, node: int, kind: str = "train") -> list[Message]:
        return [m for m in self.sent if m.metadata.dst_node_id == node and m.metadata.message_type == kind]


def _clients(msg: Message) -> list[int]:
    return [int(c) for c in msg.content["task"]["clients"]]


def _trained(msg: Message, failed: dict[int, str] | None = None) -> RecordDict:
    """A well-formed reply's content: every asked client trained (global + client id), except `failed`."""
    failed = failed or {}
    content = RecordDict()
    _, tasks, _ = get_tasks(msg.content)
    for c in _clients(msg):
        if c not in failed:
            params = tasks[c].params
            put_update(content, ClientUpdate(c, {k: v + c for k, v in params.items()}, 5, {"loss": 1.0}))
    put_status(content, failed, load_seconds=0.0, seconds=0.0, warm=False)
    return content


def good(msg: Message) -> Message:
    if msg.metadata.message_type == "query":
        return Message(RecordDict({"node": ConfigRecord({"clients": []})}), reply_to=msg)
    return Message(_trained(msg), reply_to=msg)


def silent(msg: Message) -> None:
    return None


def error(msg: Message) -> Message:
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "Traceback ...\nRuntimeError: boom"), reply_to=msg)


def hosting(*clients: int) -> Behaviour:
    def answer(msg: Message) -> Message:
        if msg.metadata.message_type == "query":
            return Message(RecordDict({"node": ConfigRecord({"clients": list(clients)})}), reply_to=msg)
        return good(msg)
    return answer


def mangled(change: Callable[[RecordDict, int], None]) -> Behaviour:
    """A reply that is well-formed but for `change(content, first_client)`."""
    def answer(msg: Message) -> Message:
        content = _trained(msg)
        change(content, _clients(msg)[0])
        return Message(content, reply_to=msg)
    return answer


def _engine(grid: StandInGrid, hosted: dict[int, list[int]], **kw) -> FlowerEngine:
    opts = {"round_timeout": 10.0, "poll": 0.01, "retries": 0, "min_clients": 1, "round_grace": 0.2,
            "query_wait": 0.5, "query_ttl": 30.0} | kw
    return FlowerEngine(grid, hosted, **opts)  # type: ignore[arg-type]


def _bad_array(content: RecordDict, c: int) -> None:
    content[f"client.{c}.arrays"]["packed"] = Array(dtype="uint8", shape=(17,), stype="numpy.ndarray",
                                                   data=b"not an npy buffer")


def _layout(**fields) -> Callable[[RecordDict, int], None]:
    def change(content: RecordDict, c: int) -> None:
        content[f"client.{c}.layout"] = ConfigRecord(dict(content[f"client.{c}.layout"]) | fields)
    return change


def _bad_blob(content: RecordDict, c: int) -> None:  # the packed bytes are fine, a tensor's .npy bytes are not
    n = sum(content[f"client.{c}.layout"]["lengths"])
    content[f"client.{c}.arrays"]["packed"] = Array.from_numpy_ndarray(np.full(n, 7, dtype=np.uint8))


def _set_status(**fields) -> Callable[[RecordDict, int], None]:
    def change(content: RecordDict, c: int) -> None:
        content["status"] = ConfigRecord(dict(content["status"]) | fields)
    return change


MALFORMED: dict[str, tuple[Behaviour, str]] = {
    "error reply": (error, "failed: Traceback ... | RuntimeError: boom"),
    "no status": (mangled(lambda rd, c: rd.__delitem__("status")), "malformed status (no 'status' record)"),
    "status of the wrong type": (mangled(lambda rd, c: rd.__setitem__("status", MetricRecord({"x": 1.0}))),
                                 "'status' is a MetricRecord"),
    "failed ids not ints": (mangled(_set_status(failed=["x"], reasons=["y"])), "status.failed must be a list"),
    "failed/reasons mismatch": (mangled(_set_status(failed=[0, 1], reasons=["only one"])),
                                "2 failed clients but 1 reasons"),
    "missing client records": (mangled(lambda rd, c: rd.__delitem__(f"client.{c}.arrays")),
                               "no 'client.{c}.arrays' record"),
    "missing metrics": (mangled(lambda rd, c: rd.__delitem__(f"client.{c}.metrics")),
                        "no 'client.{c}.metrics' record"),
    "no num_examples": (mangled(lambda rd, c: rd.__setitem__(f"client.{c}.metrics", MetricRecord({"loss": 1.0}))),
                        "has no num_examples"),
    "undecodable array": (mangled(_bad_array), "malformed update for client"),
    "undecodable tensor bytes": (mangled(_bad_blob), "malformed update for client"),
    "unknown dtype name": (mangled(_layout(dtypes=["float99", "float32"])), "unknown tensor dtype 'float99'"),
    "layout names other tensors": (mangled(_layout(keys=["other"])), "layout.dtypes must name a dtype for each of "
                                                                     "the 1 tensors"),
    "lengths do not add up": (mangled(_layout(lengths=[1, 2])), "the packed array is uint8 of shape"),
    "missing layout": (mangled(lambda rd, c: rd.__delitem__(f"client.{c}.layout")), "no 'client.{c}.layout' record"),
    "two arrays": (mangled(lambda rd, c: rd[f"client.{c}.arrays"].__setitem__(
        "extra", Array.from_numpy_ndarray(np.zeros(1, dtype=np.uint8)))), "arrays must hold one array 'packed'"),
    "arrays of the wrong record type": (mangled(lambda rd, c: rd.__setitem__(
        f"client.{c}.arrays", ConfigRecord({"m.lora_A.weight": 1}))),
        "'client.2.arrays' is a ConfigRecord, expected ArrayRecord"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_reply_costs_that_node_only(case: str) -> None:
    behaviour, reason = MALFORMED[case]
    grid = StandInGrid({1: good, 2: behaviour})
    engine = _engine(grid, {1: [0, 1], 2: [2]})
    out = engine.train_round(*_round(1, [0, 1, 2]))
    assert [u.client_id for u in out.updates] == [0, 1]
    assert list(out.failures) == [2]
    assert out.failures[2].startswith("node 2") and reason.format(c=2) in out.failures[2], out.failures[2]
    assert torch.equal(out.updates[1].params["m.lora_B.weight"], GLOBAL["m.lora_B.weight"] + 1)


def test_a_client_the_node_reports_as_failed_fails_alone_with_its_reason() -> None:
    grid = StandInGrid({1: lambda m: Message(_trained(m, {1: "DataError: client_001.jsonl is empty"}), reply_to=m)})
    out = _engine(grid, {1: [0, 1]}).train_round(*_round(1, [0, 1]))
    assert [u.client_id for u in out.updates] == [0]
    assert out.failures == {1: "node 1: DataError: client_001.jsonl is empty"}


def test_grace_period_closes_the_round_after_min_clients() -> None:
    # node 1 answers at once (2 updates = min_clients); node 2 would answer after 3 s: the round does not wait
    grid = StandInGrid({1: good, 2: good}, delays={2: 3.0})
    engine = _engine(grid, {1: [0, 1], 2: [2]}, min_clients=2, round_grace=0.3, round_timeout=60.0)
    t0 = time.monotonic()
    out = engine.train_round(*_round(1, [0, 1, 2]))
    took = time.monotonic() - t0
    assert [u.client_id for u in out.updates] == [0, 1]
    assert out.failures[2].startswith("node 2 did not reply within the round's grace period"), out.failures
    assert 0.25 < took < 1.5


@pytest.mark.parametrize("late, included", [(0.7, True), (1.6, False)])
def test_grace_is_at_least_as_long_as_reaching_min_clients_took(late: float, included: bool) -> None:
    # min_clients is reached at t_min ~ 0.5 s: the round waits max(0.1, t_min) more, i.e. until ~1.0 s
    grid = StandInGrid({1: good, 2: good}, delays={1: 0.5, 2: late})
    engine = _engine(grid, {1: [0], 2: [1]}, min_clients=1, round_grace=0.1, round_timeout=60.0)
    out = engine.train_round(*_round(1, [0, 1]))
    assert (1 in {u.client_id for u in out.updates}) == included, out.failures


def test_round_clock() -> None:
    c = RoundClock(start=100.0, timeout=50.0, grace=5.0)
    assert c.deadline() == 150.0 and not c.in_grace()
    c.t_min = 102.0  # 2 s to reach min_clients: the grace (5 s) rules
    assert c.deadline() == 107.0 and c.in_grace()
    c.t_min = 120.0  # 20 s: waits as long again
    assert c.deadline() == 140.0
    c.t_min = 140.0  # never past the round timeout
    assert c.deadline() == 150.0 and not c.in_grace()


def test_no_reply_costs_at_most_the_round_timeout_and_every_message_carries_its_ttl() -> None:
    grid = StandInGrid({1: silent})
    engine = _engine(grid, {1: [0]}, round_timeout=0.6)
    t0 = time.monotonic()
    out = engine.train_round(*_round(1, [0]))
    assert time.monotonic() - t0 < 1.2
    assert out.failures == {0: "node 1 did not reply within the round's 1s"}
    (msg,) = grid.sent_to(1)
    assert 0.4 < msg.metadata.ttl <= 0.6  # the round's remaining time, not Flower's 12 h default


def test_discovery_messages_carry_the_discovery_timeout_as_ttl() -> None:
    grid = StandInGrid({1: hosting(0, 1), 2: hosting(2)})
    assert discover_nodes(grid, min_nodes=2, num_clients=3, timeout=20.0, poll=0.01) == {1: [0, 1], 2: [2]}
    for m in grid.sent:
        assert m.metadata.message_type == "query" and 19.0 < m.metadata.ttl <= 20.0


def test_discovery_leaves_out_a_node_with_a_malformed_answer() -> None:
    bad = lambda m: Message(RecordDict({"node": ConfigRecord({"clients": "all"})}), reply_to=m)  # noqa: E731
    grid = StandInGrid({1: hosting(0, 1), 2: bad, 3: error})
    assert discover_nodes(grid, min_nodes=1, num_clients=2, timeout=5.0, poll=0.01) == {1: [0, 1]}
    with pytest.raises(Exception, match=r"SuperNode 2 sent a malformed client list.*SuperNode 3 cannot serve"):
        discover_nodes(StandInGrid({2: bad, 3: error}), min_nodes=1, num_clients=2, timeout=0.3, poll=0.01)


def test_disconnected_nodes_fail_at_once_and_a_new_node_takes_its_clients_back() -> None:
    grid = StandInGrid({1: good, 2: good, 7: hosting(2)})
    grid.connected = {1}  # node 2 is gone, node 7 not there yet
    engine = _engine(grid, {1: [0, 1], 2: [2]})
    out = engine.train_round(*_round(1, [0, 1, 2]))
    assert out.failures == {2: "node 2 is not connected"} and not grid.sent_to(2)
    grid.connected = {1, 7}  # node 2's SuperNode restarted under a new id
    out = engine.train_round(*_round(2, [0, 1, 2]))
    assert not out.failures and [u.client_id for u in out.updates] == [0, 1, 2]
    assert [_clients(m) for m in grid.sent_to(7)] == [[2]]
    (query,) = grid.sent_to(7, "query")
    assert 29.0 < query.metadata.ttl <= 30.0


def test_a_new_node_cannot_take_clients_of_a_connected_node_or_of_another_run() -> None:
    grid = StandInGrid({1: good, 9: hosting(0, 5)})
    engine = _engine(grid, {1: [0, 1]})
    out = engine.train_round(*_round(1, [0, 1]))
    assert not out.failures and engine.node_of == {0: 1, 1: 1} and not grid.sent_to(9)


def test_retry_goes_only_to_nodes_that_answered_and_stays_within_the_round_timeout() -> None:
    answers = iter([error, good])
    grid = StandInGrid({1: lambda m: next(answers)(m), 2: silent})
    engine = _engine(grid, {1: [0], 2: [1]}, min_clients=2, retries=3, round_timeout=1.0)
    t0 = time.monotonic()
    out = engine.train_round(*_round(1, [0, 1]))
    assert time.monotonic() - t0 < 1.5
    assert [u.client_id for u in out.updates] == [0]  # node 1 errored quickly, was retried, and trained
    assert len(grid.sent_to(1)) == 2 and len(grid.sent_to(2)) == 1  # the silent node got no retry
    assert out.failures == {1: "node 2 did not reply within the round's 1s"}
    retry = grid.sent_to(1)[1]
    assert retry.metadata.ttl < grid.sent_to(1)[0].metadata.ttl  # the round's remaining time


def test_no_retry_when_min_clients_is_met() -> None:
    grid = StandInGrid({1: good, 2: error})
    out = _engine(grid, {1: [0], 2: [1]}, min_clients=1, retries=2).train_round(*_round(1, [0, 1]))
    assert list(out.failures) == [1] and len(grid.sent_to(2)) == 1


def test_implausible_updates_are_delivered_but_do_not_count_towards_min_clients() -> None:
    def nan(content: RecordDict, c: int) -> None:
        arr = get_params(content, f"client.{c}")
        arr["m.lora_A.weight"][0, 0] = float("nan")
        put_update(content, ClientUpdate(c, arr, 5, {"loss": 1.0}))

    # node 1's NaN update arrives at once, node 2's good one after 0.5 s: the grace starts only then
    grid = StandInGrid({1: mangled(nan), 2: good}, delays={2: 0.5})
    out = _engine(grid, {1: [0], 2: [1]}, min_clients=1, round_grace=0.05).train_round(*_round(1, [0, 1]))
    assert [u.client_id for u in out.updates] == [0, 1] and not out.failures  # the round loop judges NaN
    assert torch.isnan(out.updates[0].params["m.lora_A.weight"][0, 0])


def test_discovery_waits_for_every_node_it_asked_not_only_the_first_that_suffices() -> None:
    grid = StandInGrid({1: hosting(0), 2: hosting(1)}, delays={2: 0.4})
    assert discover_nodes(grid, min_nodes=1, num_clients=0, timeout=20.0, poll=0.01) == {1: [0], 2: [1]}


def test_a_node_gets_its_clients_tasks_with_each_shared_group_once_and_the_base_delta() -> None:
    from fedit.engines.flower.records import task_header

    grid = StandInGrid({1: good, 2: good})
    engine = _engine(grid, {1: [0, 1, 3], 2: [2]})
    c = {"c.x": torch.ones(2)}
    tasks = {0: ClientTask(GLOBAL, c, {"state_round": 0}), 1: ClientTask(GLOBAL, c, {"state_round": 2}),
             2: ClientTask(GLOBAL, c, {"state_round": 1}), 3: ClientTask(GLOBAL, {"c.x": torch.zeros(2)})}
    engine.set_base_delta({"m.weight": torch.full((2, 2), 0.5)})
    out = engine.train_round(RoundContext(3, 0, 4, (0, 1, 2, 3), RUN), tasks)
    assert [u.client_id for u in out.updates] == [0, 1, 2, 3] and not out.failures
    (m1,) = grid.sent_to(1)
    header, got, delta = get_tasks(m1.content)
    assert header["run_id"] == RUN and header["round"] == 3 and sorted(got) == [0, 1, 3]
    assert [got[i].config.get("state_round") for i in (0, 1)] == [0, 2]
    assert torch.equal(delta["m.weight"], torch.full((2, 2), 0.5))
    # groups: the global adapter once, c once, client 3's own extras, the delta: 4, for 3 clients
    assert len([k for k in m1.content if k.endswith(".arrays")]) == 4
    assert task_header(grid.sent_to(2)[0].content)["clients"] == [2]
