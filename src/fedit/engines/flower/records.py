"""Adapter payloads and client updates <-> Flower records, bit-exact for every torch dtype (bf16 included).

Flower's Array goes through numpy, which has no bfloat16: such tensors travel as a same-width unsigned integer
view (see codec.py), and the torch dtype of every tensor rides along in a ConfigRecord so the receiver restores
it bit for bit. torch is imported lazily: the warm ClientApp forwards raw .npy bytes and never loads it.

The readers (`get_update`, `read_status`) face whatever a node sent: they raise ValueError (MalformedRecord, or
the decoder's own) naming what is malformed, and the ServerApp turns that into the failure of that node's clients
(never of the run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

if TYPE_CHECKING:
    from fedit.types import ClientUpdate, Params

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
    """One client's update under the prefix `client.<id>`."""
    prefix = f"client.{update.client_id}"
    put_params(content, prefix, update.params)
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
    return ClientUpdate(client_id, get_params(content, prefix), n,  # type: ignore[arg-type]
                        {k: float(v) for k, v in metrics.items()})  # type: ignore[arg-type]


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


def put_raw_update(content: RecordDict, update: dict[str, Any], buffers: list[bytes]) -> None:
    """A worker's update (header dict + .npy buffers) as records, without decoding the arrays."""
    prefix = f"client.{update['client']}"
    arrays = ArrayRecord()
    for key, shape, wire_dtype, data in zip(update["keys"], update["shapes"], update["wire_dtypes"], buffers,
                                            strict=True):
        arrays[key] = Array(dtype=wire_dtype, shape=tuple(shape), stype=NUMPY_STYPE, data=data)
    content[f"{prefix}.arrays"] = arrays
    content[f"{prefix}.dtypes"] = ConfigRecord(dict(update["dtypes"]))
    content[f"{prefix}.metrics"] = MetricRecord({k: float(v) for k, v in update["metrics"].items()}
                                                | {"num_examples": int(update["num_examples"])})
