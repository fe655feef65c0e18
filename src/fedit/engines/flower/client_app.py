"""The Flower ClientApp: reports the logical clients a SuperNode hosts and trains the ones sampled each round.

Cold path: loads the base model in this (per-message) process and calls `train_client`. Warm path (node-config
`worker = "<socket>"`): forwards the request to the node's long-lived worker (worker.py), which keeps the model
loaded across rounds; this process then never imports torch.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedit.engines.flower.records import put_raw_update, raw_params

app = ClientApp()


def _worker_request(context: Context, header: dict[str, Any], buffers: list[bytes]):
    from fedit.engines.flower.worker import request

    node_config = dict(context.node_config)
    header = header | {"config": str(context.run_config.get("fedit-config", "")), "node_config": node_config}
    reply, out = request(str(node_config["worker"]), header, buffers)
    if "error" in reply:
        raise RuntimeError(f"node worker: {reply['error']}")
    return reply, out


@app.query()
def query(msg: Message, context: Context) -> Message:
    from fedit.engines.flower.node import client_files

    hosted = sorted(client_files(dict(context.node_config)))
    return Message(RecordDict({"node": ConfigRecord({"clients": hosted})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    task = msg.content["task"]
    round_idx = int(task["round"])  # type: ignore[arg-type]
    clients = [int(c) for c in task["clients"]]  # type: ignore[union-attr]
    if context.node_config.get("worker"):
        keys, dtypes, buffers = raw_params(msg.content, "global")
        reply, out = _worker_request(context, {"op": "train", "round": round_idx, "clients": clients, "keys": keys,
                                               "dtypes": dtypes}, buffers)
        content = RecordDict()
        i = 0
        for u in reply["updates"]:
            n = len(u["keys"])
            put_raw_update(content, u, out[i:i + n])
            i += n
        content["status"] = ConfigRecord({"failed": reply["failed"], "reasons": reply["reasons"],
                                          "load_seconds": float(reply["load_seconds"]),
                                          "seconds": float(reply["seconds"]), "warm": True})
        return Message(content, reply_to=msg)
    return Message(_train_here(msg, context, round_idx, clients), reply_to=msg)


def _train_here(msg: Message, context: Context, round_idx: int, clients: list[int]) -> RecordDict:
    from fedit.engines.flower.node import get_worker
    from fedit.engines.flower.protocol import config_from_run_config
    from fedit.engines.flower.records import get_params, put_update
    from fedit.errors import FeditError

    t0 = time.perf_counter()
    worker = get_worker(config_from_run_config(context.run_config), dict(context.node_config))
    load_seconds = time.perf_counter() - t0
    global_params = get_params(msg.content, "global")
    content = RecordDict()
    failed: list[int] = []
    reasons: list[str] = []
    for cid in clients:
        try:
            put_update(content, worker.train(round_idx, cid, global_params))
        except FeditError as e:  # one client's failure is reported, the others still count
            failed.append(cid)
            reasons.append(str(e))
        except Exception as e:  # noqa: BLE001 - report any crash of one client as its failure
            failed.append(cid)
            reasons.append(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
    content["status"] = ConfigRecord({"failed": failed, "reasons": reasons, "load_seconds": load_seconds,
                                      "seconds": time.perf_counter() - t0, "warm": False})
    return content
