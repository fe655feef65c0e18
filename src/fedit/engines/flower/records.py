"""Adapter payloads and client updates <-> Flower records, bit-exact for every torch dtype (bf16 included).

Flower's Array goes through numpy, which has no bfloat16: such tensors travel as a same-width unsigned integer
view (see codec.py), and the torch dtype of every tensor rides along in a layout ConfigRecord so the receiver
restores it bit for bit. A tensor dict is one packed Array (see `pack`). torch is imported lazily: the warm
ClientApp forwards raw .npy bytes and never loads it.

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


# A tensor dict travels as ONE Array (`PACKED`: the .npy bytes of its tensors, concatenated, as uint8) and a layout
# record (keys, torch dtypes, byte lengths): Flower stores and moves every Array as an object of its own, one
# request per object at each hop (ServerApp -> SuperLink -> SuperNode -> ClientApp), ~55 ms each on the loopback, so
# an adapter of 56 tensors cost ~3 s to pull and ~1 s to push per message; packed it is one object.
PACKED = "packed"


def pack(keys: list[str], dtypes: Mapping[str, str], blobs: list[bytes]) -> tuple[ArrayRecord, ConfigRecord]:
    """(arrays, layout) for tensors given as .npy bytes `blobs`, in the order of `keys`."""
    import numpy as np

    arrays = ArrayRecord()
    arrays[PACKED] = Array.from_numpy_ndarray(np.frombuffer(b"".join(blobs), dtype=np.uint8))
    return arrays, ConfigRecord({"keys": list(keys), "dtypes": [str(dtypes[k]) for k in keys],
                                 "lengths": [len(b) for b in blobs]})


def unpack(arrays: ArrayRecord, layout: ConfigRecord) -> tuple[list[str], dict[str, str], list[bytes]]:
    """(keys, torch dtype name by key, .npy bytes per key) from `pack`'s records; MalformedRecord if they disagree."""
    keys, dtypes, lengths = layout.get("keys"), layout.get("dtypes"), layout.get("lengths")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise MalformedRecord(f"layout.keys must be a list of distinct tensor names, got {keys!r}")
    if not isinstance(dtypes, list) or not all(isinstance(d, str) for d in dtypes) or len(dtypes) != len(keys):
        raise MalformedRecord(f"layout.dtypes must name a dtype for each of the {len(keys)} tensors, got {dtypes!r}")
    if (not isinstance(lengths, list) or len(lengths) != len(keys)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths)):
        raise MalformedRecord(f"layout.lengths must give a byte length >= 0 for each of the {len(keys)} tensors, "
                              f"got {lengths!r}")
    if list(arrays.keys()) != [PACKED]:
        raise MalformedRecord(f"arrays must hold one array {PACKED!r}, got {sorted(arrays.keys())!r}")
    buf = arrays[PACKED].numpy()
    if buf.dtype.name != "uint8" or buf.ndim != 1 or buf.size != sum(lengths):
        raise MalformedRecord(f"the packed array is {buf.dtype.name} of shape {tuple(buf.shape)}, expected uint8 of "
                              f"{sum(lengths)} bytes")
    data = buf.tobytes()
    ends = [0]
    for n in lengths:
        ends.append(ends[-1] + n)
    return keys, dict(zip(keys, dtypes, strict=True)), [data[a:b] for a, b in zip(ends, ends[1:], strict=False)]


def params_to_records(params: Params) -> tuple[ArrayRecord, ConfigRecord]:
    """(arrays, layout): the tensors packed into one Array in payload order, with each one's torch dtype."""
    from fedit.engines.flower.codec import params_npy

    return pack(*params_npy(params))


def records_to_params(arrays: ArrayRecord, layout: ConfigRecord) -> Params:
    """The inverse of `params_to_records`; keys keep their order. ValueError if the records are malformed."""
    from fedit.engines.flower.codec import npy_load, numpy_to_tensor

    keys, dtypes, blobs = unpack(arrays, layout)
    return {k: numpy_to_tensor(npy_load(b), dtypes[k]) for k, b in zip(keys, blobs, strict=True)}


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
    content[f"{prefix}.arrays"], content[f"{prefix}.layout"] = params_to_records(params)


def get_params(content: RecordDict, prefix: str) -> Params:
    return records_to_params(_record(content, f"{prefix}.arrays", ArrayRecord),
                             _record(content, f"{prefix}.layout", ConfigRecord))


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


# ---- raw form for the warm node worker: (.npy bytes, torch dtype name) per key, no torch needed ------------------
def raw_params(content: RecordDict, prefix: str) -> tuple[list[str], dict[str, str], list[bytes]]:
    return unpack(_record(content, f"{prefix}.arrays", ArrayRecord), _record(content, f"{prefix}.layout", ConfigRecord))


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
    """One tensor group in the socket form (keys, torch dtypes + .npy buffers) as records."""
    content[f"{prefix}.arrays"], content[f"{prefix}.layout"] = pack(list(entry["keys"]), entry["dtypes"], buffers)


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
