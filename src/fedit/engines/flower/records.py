"""Adapter payloads and client updates <-> Flower records, bit-exact for every torch dtype (bf16 included).

Flower's Array goes through numpy, which has no bfloat16: such tensors travel as a same-width unsigned integer
view (see codec.py), and the torch dtype of every tensor rides along in a ConfigRecord so the receiver restores
it bit for bit. torch is imported lazily: the warm ClientApp forwards raw .npy bytes and never loads it.

The readers (`get_update`, `read_status`) face whatever a node sent: they raise ValueError (MalformedRecord, or
the decoder's own) naming what is malformed, and the ServerApp turns that into the failure of that node's clients
(never of the run).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

if TYPE_CHECKING:
    from fedit.types import ClientTask, ClientUpdate, Params

NUMPY_STYPE = "numpy.ndarray"


def params_to_records(params: Params) -> tuple[ArrayRecord, ConfigRecord]:
    """(arrays, dtypes): one Array per tensor in payload order, and each tensor's torch dtype by key."""
    from fedit.engines.flower.codec import tensor_to_numpy

    arrays = ArrayRecord()
    dtypes: dict[str, str] = {}
    for key, t in params.items():
        arr, dtypes[key] = tensor_to_numpy(t)
        arrays[key] = Array.from_numpy_ndarray(arr)
    return arrays, ConfigRecord(dtypes)


def records_to_params(arrays: ArrayRecord, dtypes: ConfigRecord) -> Params:
    """The inverse of `params_to_records`; keys keep their order. ValueError if the two records disagree."""
    from fedit.engines.flower.codec import numpy_to_tensor

    if set(arrays.keys()) != set(dtypes.keys()):
        odd = sorted(set(arrays.keys()) ^ set(dtypes.keys()))
        raise MalformedRecord(f"arrays and dtypes name different tensors (e.g. {odd[0]!r})")
    out = {}
    for key, array in arrays.items():
        name = dtypes[key]
        if not isinstance(name, str):
            raise MalformedRecord(f"{key}: dtype must be a name, got {name!r}")
        out[key] = numpy_to_tensor(array.numpy(), name)
    return out


class MalformedRecord(ValueError):
    """A reply lacks a record, or holds one of the wrong kind or content."""


def _record(content: RecordDict, key: str, kind: type) -> Any:
    if key not in content:
        raise MalformedRecord(f"no {key!r} record")
    rec = content[key]
    if not isinstance(rec, kind):
        raise MalformedRecord(f"{key!r} is a {type(rec).__name__}, expected {kind.__name__}")
    return rec


def put_params(content: RecordDict, prefix: str, params: Params) -> None:
    arrays, dtypes = params_to_records(params)
    content[f"{prefix}.arrays"] = arrays
    content[f"{prefix}.dtypes"] = dtypes


def get_params(content: RecordDict, prefix: str) -> Params:
    return records_to_params(_record(content, f"{prefix}.arrays", ArrayRecord),
                             _record(content, f"{prefix}.dtypes", ConfigRecord))


def put_update(content: RecordDict, update: ClientUpdate) -> None:
    """One client's update under the prefix `client.<id>` (its extra tensors, if any, under `client.<id>.extras`)."""
    prefix = f"client.{update.client_id}"
    put_params(content, prefix, update.params)
    if update.extras:
        put_params(content, f"{prefix}.extras", update.extras)
    content[f"{prefix}.metrics"] = MetricRecord({k: float(v) for k, v in update.metrics.items()}
                                                | {"num_examples": int(update.num_examples)})


def get_update(content: RecordDict, client_id: int) -> ClientUpdate:
    """Client `client_id`'s update as the node sent it (values are judged by the round loop's validation)."""
    from fedit.types import ClientUpdate

    prefix = f"client.{client_id}"
    metrics = dict(_record(content, f"{prefix}.metrics", MetricRecord).items())
    if "num_examples" not in metrics:
        raise MalformedRecord(f"{prefix}.metrics has no num_examples")
    n = metrics.pop("num_examples")
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MalformedRecord(f"{prefix}.metrics[{k!r}] is {v!r}, expected a number")
    extras = get_params(content, f"{prefix}.extras") if f"{prefix}.extras.arrays" in content else {}
    return ClientUpdate(client_id, get_params(content, prefix), n,  # type: ignore[arg-type]
                        {k: float(v) for k, v in metrics.items()}, extras)  # type: ignore[arg-type]


# ---- a train message: the round's tasks for one node's clients, each distinct tensor group sent once ----------
def put_tasks(content: RecordDict, round_idx: int, run_id: str, tasks: Mapping[int, ClientTask],
              base_delta: Params | None) -> None:
    """The `task` record (round, clients, run id, each client's task as JSON naming its tensor groups) and the
    groups `g<i>.{arrays,dtypes}`: a tensor dict shared by several tasks (the global adapter, SCAFFOLD's c) is
    one group, sent once. The cumulative base delta, if any, is a group too."""
    groups: dict[int, str] = {}

    def group(params: Params | None) -> str:
        if not params:
            return ""
        if id(params) not in groups:
            groups[id(params)] = f"g{len(groups)}"
            put_params(content, groups[id(params)], params)
        return groups[id(params)]

    spec = {str(cid): {"params": group(t.params), "extras": group(t.extras), "config": dict(t.config)}
            for cid, t in sorted(tasks.items())}
    content["task"] = ConfigRecord({"round": int(round_idx), "clients": sorted(int(c) for c in tasks),
                                    "run_id": str(run_id), "tasks": json.dumps(spec),
                                    "base_delta": group(base_delta)})


def task_header(content: RecordDict) -> dict[str, Any]:
    """The `task` record as plain values: round, clients, run_id, tasks (client id -> spec), base_delta."""
    task = _record(content, "task", ConfigRecord)
    return {"round": int(task["round"]), "clients": [int(c) for c in task["clients"]],  # type: ignore[union-attr]
            "run_id": str(task.get("run_id", "")), "tasks": json.loads(str(task["tasks"])),
            "base_delta": str(task.get("base_delta", ""))}


def tasks_from(header: dict[str, Any], group: Any) -> tuple[dict[int, ClientTask], Params]:
    """(client id -> task, base delta) from `task_header` and `group(name) -> Params` (one object per name)."""
    from fedit.types import ClientTask

    cache: dict[str, Params] = {}

    def get(name: str) -> Params:
        if not name:
            return {}
        if name not in cache:
            cache[name] = group(name)
        return cache[name]

    tasks = {int(c): ClientTask(get(s["params"]), get(s["extras"]), dict(s["config"]))
             for c, s in header["tasks"].items()}
    return tasks, get(header["base_delta"])


def get_tasks(content: RecordDict) -> tuple[dict[str, Any], dict[int, ClientTask], Params]:
    """(task header, client id -> task, base delta) of a train message."""
    header = task_header(content)
    tasks, delta = tasks_from(header, lambda name: get_params(content, name))
    return header, tasks, delta


def task_groups(header: dict[str, Any]) -> list[str]:
    """The tensor groups a task header names, in a fixed order."""
    names = {s[k] for s in header["tasks"].values() for k in ("params", "extras")} | {header["base_delta"]}
    return sorted(n for n in names if n)


def put_status(content: RecordDict, failed: dict[int, str], *, load_seconds: float, seconds: float,
               warm: bool) -> None:
    """The `status` record of a node's reply: the clients that failed, with their reasons, and timings."""
    content["status"] = ConfigRecord({"failed": list(failed), "reasons": list(failed.values()),
                                      "load_seconds": float(load_seconds), "seconds": float(seconds), "warm": warm})


def read_status(content: RecordDict) -> dict[int, str]:
    """Failed client id -> reason from a reply's `status`; MalformedRecord if it is malformed."""
    status = _record(content, "status", ConfigRecord)
    failed, reasons = status.get("failed"), status.get("reasons")
    if not isinstance(failed, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in failed):
        raise MalformedRecord(f"status.failed must be a list of client ids, got {failed!r}")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise MalformedRecord(f"status.reasons must be a list of strings, got {reasons!r}")
    if len(failed) != len(reasons):
        raise MalformedRecord(f"status lists {len(failed)} failed clients but {len(reasons)} reasons")
    return dict(zip(failed, reasons, strict=True))


# ---- raw form for the warm node worker: (.npy bytes, dtype name, shape) per key, no torch needed ----------------
def raw_params(content: RecordDict, prefix: str) -> tuple[list[str], dict[str, str], list[bytes]]:
    arrays: ArrayRecord = content[f"{prefix}.arrays"]  # type: ignore[assignment]
    dtypes: ConfigRecord = content[f"{prefix}.dtypes"]  # type: ignore[assignment]
    keys = list(arrays.keys())
    return keys, {k: str(dtypes[k]) for k in keys}, [arrays[k].data for k in keys]


def raw_tasks(content: RecordDict) -> tuple[dict[str, Any], list[bytes]]:
    """A train message as (JSON-able header, .npy buffers) for the worker socket: the task header plus, per tensor
    group, its keys and dtypes; the buffers follow group by group, key by key."""
    header = task_header(content)
    groups: dict[str, dict[str, Any]] = {}
    buffers: list[bytes] = []
    for name in task_groups(header):
        keys, dtypes, raw = raw_params(content, name)
        groups[name] = {"keys": keys, "dtypes": dtypes}
        buffers += raw
    return header | {"groups": groups}, buffers


def put_raw_params(content: RecordDict, prefix: str, entry: dict[str, Any], buffers: list[bytes]) -> None:
    """One tensor group in the socket form (keys, shapes, wire dtypes, torch dtypes + buffers) as records."""
    arrays = ArrayRecord()
    for key, shape, wire_dtype, data in zip(entry["keys"], entry["shapes"], entry["wire_dtypes"], buffers,
                                            strict=True):
        arrays[key] = Array(dtype=wire_dtype, shape=tuple(shape), stype=NUMPY_STYPE, data=data)
    content[f"{prefix}.arrays"] = arrays
    content[f"{prefix}.dtypes"] = ConfigRecord(dict(entry["dtypes"]))


def put_raw_update(content: RecordDict, update: dict[str, Any], buffers: list[bytes]) -> None:
    """A worker's update (header entry + .npy buffers: the params' then the extras') as records, undecoded."""
    prefix = f"client.{update['client']}"
    n = len(update["params"]["keys"])
    put_raw_params(content, prefix, update["params"], buffers[:n])
    if update["extras"]["keys"]:
        put_raw_params(content, f"{prefix}.extras", update["extras"], buffers[n:])
    content[f"{prefix}.metrics"] = MetricRecord({k: float(v) for k, v in update["metrics"].items()}
                                                | {"num_examples": int(update["num_examples"])})


def raw_update_buffers(update: dict[str, Any]) -> int:
    """How many buffers one update entry of the socket form takes."""
    return len(update["params"]["keys"]) + len(update["extras"]["keys"])
