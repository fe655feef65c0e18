"""Adapter payloads cross Flower records bit for bit, bf16 included (numpy has no bf16: a uint16 view travels)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("flwr")
from flwr.app import Array, RecordDict  # noqa: E402

from fedit.engines.flower.codec import npy_bytes, npy_load, numpy_to_tensor, tensor_to_numpy  # noqa: E402
from fedit.engines.flower.records import (  # noqa: E402
    get_params,
    get_tasks,
    get_update,
    put_params,
    put_raw_update,
    put_tasks,
    put_update,
    raw_params,
    raw_tasks,
)
from fedit.engines.flower.worker import decode_params, decode_tasks, encode_update  # noqa: E402
from fedit.types import ClientTask, ClientUpdate  # noqa: E402


def _payload() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=g)
    special = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40, -3.5])  # NaN, inf, signed zero, subnormal
    return {"a.lora_A.weight": x.to(torch.bfloat16), "a.lora_B.weight": x.half(), "b.lora_A.weight": x,
            "nan.bf16": special.to(torch.bfloat16), "nan.f32": special}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def _same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(_bits(a[k]), _bits(b[k])), k


def test_bf16_travels_as_uint16_view() -> None:
    t = torch.randn(3, 5).to(torch.bfloat16)
    arr, name = tensor_to_numpy(t)
    assert str(arr.dtype) == "uint16" and name == "bfloat16"
    back = numpy_to_tensor(npy_load(npy_bytes(arr)), name)
    assert back.dtype == torch.bfloat16 and torch.equal(back.view(torch.int16), t.view(torch.int16))


def test_params_round_trip_through_the_wire_form() -> None:
    params = _payload()
    rd = RecordDict()
    put_params(rd, "global", params)
    # what crosses the network is each Array's serialized bytes: rebuild every Array from them
    for key in ("global.arrays",):
        rec = rd[key]
        for k in list(rec.keys()):
            a = rec[k]
            rec[k] = Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=bytes(a.data))
    _same_bits(params, get_params(rd, "global"))


def test_client_update_round_trip_cold_and_warm_paths() -> None:
    u = ClientUpdate(3, _payload(), 17, {"loss": 1.25, "steps": 2.0})
    rd = RecordDict()
    put_update(rd, u)
    back = get_update(rd, 3)
    assert (back.client_id, back.num_examples, back.metrics) == (3, 17, u.metrics)
    _same_bits(u.params, back.params)

    # the warm worker's socket form (the worker's own encoder), turned into records without torch
    entry, buffers = encode_update(u)
    entry = json.loads(json.dumps(entry))  # the header crosses the socket as JSON
    rd2 = RecordDict()
    put_raw_update(rd2, entry, buffers)
    back2 = get_update(rd2, 3)
    assert (back2.client_id, back2.num_examples, back2.metrics) == (3, 17, u.metrics)
    _same_bits(u.params, back2.params)
    # and what a global adapter looks like on the worker's side of the socket
    keys, dtypes, raw = raw_params(rd, "client.3")
    _same_bits(u.params, decode_params(keys, dtypes, raw))


def test_update_extras_round_trip_cold_and_warm_paths() -> None:
    extras = {"c.m.lora_A.weight": torch.randn(2, 3, dtype=torch.float64), "c.m.lora_B.weight": torch.randn(3, 2)}
    u = ClientUpdate(1, _payload(), 4, {"loss": 0.5}, extras)
    rd = RecordDict()
    put_update(rd, u)
    _same_bits(extras, get_update(rd, 1).extras)
    entry, buffers = encode_update(u)
    rd2 = RecordDict()
    put_raw_update(rd2, json.loads(json.dumps(entry)), buffers)
    back = get_update(rd2, 1)
    _same_bits(extras, back.extras)
    _same_bits(u.params, back.params)
    plain = RecordDict()
    put_update(plain, ClientUpdate(2, _payload(), 4, {"loss": 0.5}))
    assert get_update(plain, 2).extras == {} and not any(k.startswith("client.2.extras") for k in plain)


def test_tasks_send_each_shared_tensor_group_once_and_round_trip() -> None:
    shared, c = _payload(), {"c.x": torch.arange(6.0).reshape(2, 3)}
    own = {"c.x": torch.ones(2, 3)}
    tasks = {0: ClientTask(shared, c, {"state_round": 0}), 2: ClientTask(shared, c, {"state_round": 1}),
             5: ClientTask(shared, own, {"state_round": 3, "lr": 0.5, "tag": "x"})}
    delta = {"m.weight": torch.full((3, 3), 0.25)}
    rd = RecordDict()
    put_tasks(rd, 4, "run42", tasks, delta)
    groups = sorted(k.removesuffix(".arrays") for k in rd if k.endswith(".arrays"))
    assert groups == ["g0", "g1", "g2", "g3"]  # shared payload, c, the own extras, the delta: 4 groups, not 7
    header, back, back_delta = get_tasks(rd)
    assert (header["round"], header["clients"], header["run_id"]) == (4, [0, 2, 5], "run42")
    for cid, t in tasks.items():
        _same_bits(t.params, back[cid].params)
        _same_bits(t.extras, back[cid].extras)
        assert back[cid].config == t.config
    assert back[0].params is back[2].params  # decoded once, shared again on the node
    _same_bits(delta, back_delta)
    # the warm worker's form: the same tasks and delta, bit for bit
    raw, buffers = raw_tasks(rd)
    warm, warm_delta = decode_tasks(json.loads(json.dumps(raw)), buffers)
    for cid, t in tasks.items():
        _same_bits(t.params, warm[cid].params)
        _same_bits(t.extras, warm[cid].extras)
        assert warm[cid].config == t.config
    _same_bits(delta, warm_delta)
    none = RecordDict()
    put_tasks(none, 1, "r", {0: ClientTask(shared)}, {})
    assert get_tasks(none)[2] == {} and get_tasks(none)[1][0].extras == {}


def test_unknown_dtype_is_refused() -> None:
    arr, _ = tensor_to_numpy(torch.zeros(2))
    with pytest.raises(ValueError, match="unknown tensor dtype"):
        numpy_to_tensor(arr, "float99")
    with pytest.raises(ValueError, match="sender said"):
        numpy_to_tensor(arr, "float16")


def test_a_tensor_dict_is_one_packed_array_with_its_layout() -> None:
    from fedit.engines.flower.records import PACKED, unpack

    params = _payload()
    rd = RecordDict()
    put_params(rd, "global", params)
    arrays, layout = rd["global.arrays"], rd["global.layout"]
    # one object for Flower to move, whatever the number of tensors (it moves each Array as its own object)
    assert list(arrays.keys()) == [PACKED] and len(params) > 1
    keys, dtypes, blobs = unpack(arrays, layout)
    assert keys == list(params) and [dtypes[k] for k in keys] == [str(t.dtype).removeprefix("torch.")
                                                                 for t in params.values()]
    # the packed bytes are each tensor's .npy bytes, back to back, in payload order
    want = b"".join(npy_bytes(tensor_to_numpy(t)[0]) for t in params.values())
    assert b"".join(blobs) == want and arrays[PACKED].numpy().tobytes() == want
    assert list(layout["lengths"]) == [len(npy_bytes(tensor_to_numpy(t)[0])) for t in params.values()]
