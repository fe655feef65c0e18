"""The Flower ClientApp: reports the logical clients a SuperNode hosts and trains the ones sampled each round.

Warm path (node-config `worker = "<socket>"`): the request goes to the node's long-lived worker (worker.py), which
keeps the model loaded across rounds; this process then never imports torch. Cold path (no worker, or the worker
is dead or unreachable for this message): the base model is loaded in this per-message process. Both run the same
loop (`node.train_clients`), with the run's injected faults.

Every message carries a deadline, `created_at + ttl` (the ServerApp sets the TTL to the round's remaining time):
the warm request waits for the worker until then and no longer, and a `hang` fault holds the message until just
past it. The clock is the wall clock on both sides, as Flower's own TTL check: keep node clocks in sync (NTP).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedit.engines.flower.records import put_raw_update, put_status, raw_tasks, raw_update_buffers

app = ClientApp()


def _log(message: str) -> None:
    print(f"[fedit] {message}", flush=True)


def node_config_of(context: Context) -> dict[str, Any]:
    """This node's config; a virtual SuperNode of Flower's Simulation Engine (`--engine flower-sim`) has only its
    partition id, and reads its clients from `<node-data>/node_<id>` (run-config `node-data`)."""
    from fedit.engines.flower.node import virtual_node_config
    from fedit.engines.flower.protocol import run_setting

    return virtual_node_config(dict(context.node_config), run_setting(context.run_config, "node-data"))


def deadline_of(msg: Message) -> float:
    """When the server stops waiting for this message (epoch seconds)."""
    return float(msg.metadata.created_at) + float(msg.metadata.ttl)


@app.query()
def query(msg: Message, context: Context) -> Message:
    from fedit.engines.flower.node import client_files

    hosted = sorted(client_files(node_config_of(context)))  # from the file names: no record is read
    return Message(RecordDict({"node": ConfigRecord({"clients": hosted})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from fedit.engines.flower.records import task_header
    from fedit.engines.flower.worker import WorkerUnavailable

    round_idx = task_header(msg.content)["round"]
    deadline = deadline_of(msg)
    if context.node_config.get("worker"):  # (never on a virtual node: its ClientApp process is the warm worker)
        try:
            return Message(_train_on_worker(msg, context, deadline), reply_to=msg)
        except WorkerUnavailable as e:
            _log(f"round {round_idx}: {e}; training in this process instead")
    return Message(_train_here(msg, context, deadline), reply_to=msg)


def _train_on_worker(msg: Message, context: Context, deadline: float) -> RecordDict:
    from fedit.engines.flower.protocol import fedit_settings
    from fedit.engines.flower.worker import request

    node_config = dict(context.node_config)
    header, buffers = raw_tasks(msg.content)
    # the run config's fedit keys as they came: the worker resolves them (this process never imports torch)
    header |= {"op": "train", "run_config": fedit_settings(context.run_config), "node_config": node_config}
    reply, out = request(str(node_config["worker"]), header, buffers, deadline=deadline)
    if "error" in reply:
        raise RuntimeError(f"node worker: {reply['error']}")
    content = RecordDict()
    i = 0
    for u in reply["updates"]:
        n = raw_update_buffers(u)
        put_raw_update(content, u, out[i:i + n])
        i += n
    put_status(content, dict(zip(reply["failed"], reply["reasons"], strict=True)),
               load_seconds=reply["load_seconds"], seconds=reply["seconds"], warm=True)
    return content


def _train_here(msg: Message, context: Context, deadline: float) -> RecordDict:
    from fedit.engines.flower.node import train_clients
    from fedit.engines.flower.protocol import config_from_run_config
    from fedit.engines.flower.records import get_tasks, put_update

    cfg = config_from_run_config(context.run_config)
    header, tasks, base_delta = get_tasks(msg.content)
    report = train_clients(cfg, node_config_of(context), header["round"], tasks, base_delta, header["run_id"],
                           deadline)
    content = RecordDict()
    for u in report.updates:
        put_update(content, u)
    put_status(content, report.failed, load_seconds=report.load_seconds, seconds=report.seconds, warm=False)
    return content
