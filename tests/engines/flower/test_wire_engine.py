"""run.wire_dtype on Flower: FlowerEngine sends encoded tasks, decodes each update against what it sent, and a
malformed encoded update costs that client alone, with a reason. A scripted node (as in test_engine.py) does what
`node.train_clients` does: decode the tasks, train, send the update as the delta from what it received."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

pytest.importorskip("flwr")
from flwr.app import Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedit.engines.flower.records import get_params, get_tasks, put_params, put_status, put_update  # noqa: E402
from fedit.engines.flower.server_app import FlowerEngine  # noqa: E402
from fedit.strategies.base import RoundContext  # noqa: E402
from fedit.types import ClientTask, ClientUpdate, payload_bytes  # noqa: E402
from fedit.wire import SCALE, WireFormat, receive_tasks, round_trip_update, send_tasks, send_update  # noqa: E402

RUN = "0123abcd"
INT8 = WireFormat("int8", 64)
GLOBAL = {"m.lora_A.weight": torch.linspace(-1, 1, 4 * 96).view(4, 96), "m.lora_B.weight": torch.zeros(96, 4)}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def trained(task: ClientTask, cid: int) -> ClientUpdate:
    """A deterministic stand-in for local training: a small step that depends on the client."""
    return ClientUpdate(cid, {k: v + 1e-3 * (cid + 1) * torch.cos(v + cid) for k, v in task.params.items()}, 5,
                        {"loss": 1.0})


class Node:
    """Replies to a train message as `node.train_clients` would; `mangle(content, cid)` may spoil the reply."""

    def __init__(self, mangle: Callable[[RecordDict, int], None] | None = None) -> None:
        self.mangle = mangle
        self.sent: list[Message] = []

    def __call__(self, msg: Message) -> Message:
        self.sent.append(msg)
        _, tasks, _ = get_tasks(msg.content)
        received = receive_tasks(tasks, INT8)
        content = RecordDict()
        for cid in sorted(tasks):
            put_update(content, send_update(trained(received[cid], cid), received[cid], INT8))
            if self.mangle:
                self.mangle(content, cid)
        put_status(content, {}, load_seconds=0.0, seconds=0.0, warm=False)
        return Message(content, reply_to=msg)


class Grid:
    def __init__(self, node: Node) -> None:
        self.node, self.replies, self.n = node, {}, 0

    def get_node_ids(self) -> list[int]:
        return [1]

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for m in messages:
            mid = f"m{self.n}"
            self.n += 1
            m.metadata.__dict__["_message_id"] = mid
            self.replies[mid] = self.node(m)
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return [self.replies.pop(i) for i in ids if i in self.replies]


def _round(node: Node) -> tuple[dict[int, ClientTask], object]:
    engine = FlowerEngine(Grid(node), {1: [0, 1]}, round_timeout=10.0, poll=0.01, retries=0, min_clients=1,
                          round_grace=0.2, query_wait=0.1, wire=INT8)  # type: ignore[arg-type]
    tasks = dict.fromkeys([0, 1], ClientTask(GLOBAL, config={"state_round": 0}))
    t0 = time.monotonic()
    out = engine.train_round(RoundContext(1, 0, 2, (0, 1), RUN), tasks)
    assert time.monotonic() - t0 < 5
    return tasks, out


def test_int8_on_flower_gives_the_simulators_bits_and_sends_the_encoded_bytes() -> None:
    node = Node()
    tasks, out = _round(node)
    assert not out.failures and [u.client_id for u in out.updates] == [0, 1]
    received = receive_tasks(send_tasks(tasks, INT8), INT8)  # what the simulator trains from
    for u in out.updates:
        want = round_trip_update(trained(received[u.client_id], u.client_id), received[u.client_id], INT8)
        for k, v in want.params.items():
            assert u.params[k].dtype == torch.float32 and torch.equal(u.params[k], v), k
    (msg,) = node.sent
    group = get_params(msg.content, "g0")  # the global adapter, once for both clients, as int8 + scales
    assert {k: v.dtype for k, v in group.items()} == {
        "m.lora_A.weight": torch.int8, "m.lora_A.weight" + SCALE: torch.float32,
        "m.lora_B.weight": torch.int8, "m.lora_B.weight" + SCALE: torch.float32}
    assert payload_bytes(group) == 2 * (384 + 4 * 6)


def test_a_malformed_encoded_update_fails_that_client_with_a_reason() -> None:
    def short_scales(content: RecordDict, cid: int) -> None:
        if cid == 0:
            params = get_params(content, "client.0")
            params["m.lora_A.weight" + SCALE] = params["m.lora_A.weight" + SCALE][:-1].clone()
            put_params(content, "client.0", params)

    _, out = _round(Node(short_scales))
    assert [u.client_id for u in out.updates] == [1]
    assert "malformed update for client 0" in out.failures[0] and "5 scales for 384 values" in out.failures[0]
