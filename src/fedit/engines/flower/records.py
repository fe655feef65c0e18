"""Adapter payloads and client updates <-> Flower records, bit-exact for every torch dtype (bf16 included).

Flower's Array goes through numpy, which has no bfloat16: such tensors travel as a same-width unsigned integer
view (see codec.py), and the torch dtype of every tensor rides along in a ConfigRecord so the receiver restores
it bit for bit. torch is imported lazily: the warm ClientApp forwards raw .npy bytes and never loads it.
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
    """The inverse of `params_to_records`; keys keep their order."""
    from fedit.engines.flower.codec import numpy_to_tensor

    return {key: numpy_to_tensor(array.numpy(), str(dtypes[key])) for key, array in arrays.items()}


def put_params(content: RecordDict, prefix: str, params: Params) -> None:
    arrays, dtypes = params_to_records(params)
    content[f"{prefix}.arrays"] = arrays
    content[f"{prefix}.dtypes"] = dtypes


def get_params(content: RecordDict, prefix: str) -> Params:
    return records_to_params(content[f"{prefix}.arrays"], content[f"{prefix}.dtypes"])  # type: ignore[arg-type]


def put_update(content: RecordDict, update: ClientUpdate) -> None:
    """One client's update under the prefix `client.<id>`."""
    prefix = f"client.{update.client_id}"
    put_params(content, prefix, update.params)
    content[f"{prefix}.metrics"] = MetricRecord({k: float(v) for k, v in update.metrics.items()}
                                                | {"num_examples": int(update.num_examples)})


def get_update(content: RecordDict, client_id: int) -> ClientUpdate:
    from fedit.types import ClientUpdate

    prefix = f"client.{client_id}"
    metrics = dict(content[f"{prefix}.metrics"].items())  # type: ignore[union-attr]
    n = int(metrics.pop("num_examples"))  # type: ignore[arg-type]
    return ClientUpdate(client_id, get_params(content, prefix), n, {k: float(v) for k, v in metrics.items()})


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
