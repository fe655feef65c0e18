"""fedit.wire against hand-computed values: bf16 rounding, int8 blocks, deltas, bytes, malformed payloads."""

from __future__ import annotations

import pytest
import torch

from fedit.types import ClientTask, ClientUpdate, payload_bytes
from fedit.wire import (
    SCALE,
    WireError,
    WireFormat,
    decode,
    dequantize_int8,
    encode,
    quantize_int8,
    receive_tasks,
    receive_update,
    round_trip_update,
    send_tasks,
    send_update,
    wire_bytes,
)

BF16, INT8 = WireFormat("bfloat16"), WireFormat("int8", 64)


def test_bf16_rounds_to_nearest_even_and_decodes_to_float32() -> None:
    x = torch.tensor([1 + 2**-9, 1 + 2**-8, 1 + 3 * 2**-8, -3.0, 2**-7 + 2**-20])
    enc = encode({"w": x}, BF16)["w"]
    assert enc.dtype == torch.bfloat16
    # bit patterns by hand: 1.0 = 0x3F80 (1 + 2**-9 below half an ulp; 1 + 2**-8 a tie, to even), 1 + 2**-6 =
    # 0x3F82 (1 + 3 * 2**-8 a tie between 0x3F81 and 0x3F82, to even), -3 = 0xC040, 2**-7 = 0x3C00
    assert enc.view(torch.int16).tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC040 - 0x10000, 0x3C00]
    back = decode({"w": enc}, BF16)["w"]
    assert back.dtype == torch.float32 and back.tolist() == [1.0, 1.0, 1 + 2**-6, -3.0, 2**-7]
    assert wire_bytes({"w": x}, BF16) == 10 == payload_bytes({"w": x}) // 2


def test_int8_blocks_by_hand() -> None:
    # block 4: [127, 2.5, 3.5, -2.5] has absmax 127 -> scale exactly 1, so the ties show round-half-even;
    # [0, 0, 0, 0] -> scale 0, q 0; [-6.35] (the short last block) -> scale 0.05, q -127
    x = torch.tensor([127.0, 2.5, 3.5, -2.5, 0.0, 0.0, 0.0, 0.0, -6.35])
    q, scale = quantize_int8(x, 4)
    assert q.dtype == torch.int8 and q.tolist() == [127, 2, 4, -2, 0, 0, 0, 0, -127]
    assert scale.tolist() == [1.0, 0.0, torch.tensor(6.35 / 127, dtype=torch.float32).item()]
    back = dequantize_int8(q, scale, 4)
    assert back[:8].tolist() == [127.0, 2.0, 4.0, -2.0, 0.0, 0.0, 0.0, 0.0]
    assert back[8].item() == pytest.approx(-6.35, rel=1e-6)
    fmt = WireFormat("int8", 4)
    enc = encode({"w": x.view(3, 3)}, fmt)
    assert set(enc) == {"w", "w" + SCALE} and enc["w"].shape == (3, 3)
    assert wire_bytes({"w": x}, fmt) == 9 + 4 * 3 == payload_bytes(enc)


def test_int8_scale_from_absmax_and_a_non_finite_block_stays_non_finite() -> None:
    x = torch.tensor([1.0, -2.0, 0.5, 0.25, float("nan"), 1.0, 1.0, 1.0])
    q, scale = quantize_int8(x, 4)
    assert scale[0].item() == torch.tensor(2.0 / 127).item() and q[:4].tolist() == [64, -127, 32, 16]  # 63.5.. 31.75
    assert q[4:].tolist() == [0, 0, 0, 0] and torch.isnan(scale[1])
    back = dequantize_int8(q, scale, 4)
    assert bool(torch.isfinite(back[:4]).all()) and not bool(torch.isfinite(back[4:]).any())


@pytest.mark.parametrize("shape", [(7,), (64,), (33, 65), (8, 128)])
def test_error_bounds_hold_on_random_tensors(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * torch.logspace(-4, 1, shape[-1])  # values of varied size
    back = decode(encode({"w": x}, INT8), INT8)["w"]
    _, scale = quantize_int8(x, 64)
    per_value = scale.repeat_interleave(64)[: x.numel()].view(shape)
    assert bool(((x - back).abs() <= per_value / 2 * (1 + 1e-5) + 1e-12).all())
    b = decode(encode({"w": x}, BF16), BF16)["w"]
    assert bool(((x - b).abs() <= x.abs() * 2**-8).all())


def test_updates_go_up_as_the_delta_from_what_was_received() -> None:
    g = torch.Generator().manual_seed(0)
    ref = {"a": torch.randn(4, 64, generator=g), "b": torch.randn(3, generator=g)}
    received = ClientTask(ref)
    step = {"a": torch.randn(4, 64, generator=g) * 1e-4}
    update = ClientUpdate(1, {"a": ref["a"] + step["a"], "b": ref["b"].clone()}, 5, {"loss": 1.0},
                          extras={"c": torch.full((2,), 0.5)})
    got = round_trip_update(update, received, INT8)
    assert torch.equal(got.params["b"], ref["b"])  # unchanged -> delta 0 -> exact
    err = (got.params["a"] - update.params["a"]).abs()
    bound = step["a"].abs().amax(dim=1, keepdim=True) / 254  # blocks of 64 = rows here
    assert bool((err <= bound * (1 + 1e-3) + 1e-7).all())
    assert float(err.max()) < 1e-5 < float((decode(encode(update.params, INT8), INT8)["a"] - update.params["a"])
                                            .abs().max())  # absolute int8 would be far worse
    assert torch.equal(got.extras["c"], torch.full((2,), 0.5)) and got.num_examples == 5
    up = send_update(update, received, BF16)
    assert torch.equal(up.params["a"], step_bf16 := (update.params["a"] - ref["a"]).to(torch.bfloat16))
    assert torch.equal(receive_update(up, received, BF16).params["a"], ref["a"] + step_bf16.float())


def test_float32_is_no_round_trip_at_all() -> None:
    shared = {"a": torch.randn(3, 3)}
    tasks = {0: ClientTask(shared), 1: ClientTask(shared)}
    f32 = WireFormat()
    sent = send_tasks(tasks, f32)
    assert all(sent[c] is tasks[c] for c in tasks) and receive_tasks(sent, f32)[0] is tasks[0]
    u = ClientUpdate(0, {"a": torch.randn(3, 3)}, 1)
    assert round_trip_update(u, tasks[0], f32) is u
    assert wire_bytes(shared, f32) == payload_bytes(shared)


def test_a_shared_tensor_group_is_encoded_once_and_stays_shared() -> None:
    shared = {"a": torch.randn(3, 70)}
    tasks = {0: ClientTask(shared), 1: ClientTask(shared), 2: ClientTask({"a": torch.randn(3, 70)})}
    sent = send_tasks(tasks, INT8)
    assert sent[0].params is sent[1].params and sent[2].params is not sent[0].params
    got = receive_tasks(sent, INT8)
    assert got[0].params is got[1].params and got[0].params["a"].dtype == torch.float32
    assert wire_bytes(shared, INT8) == payload_bytes(sent[0].params) == 210 + 4 * 4


@pytest.mark.parametrize("mangle, says", [
    (lambda e: e.__setitem__("a" + SCALE, e["a" + SCALE][:-1]), "scales for"),
    (lambda e: e.__setitem__("a" + SCALE, e["a" + SCALE].double()), "1-d float32"),
    (lambda e: e.__setitem__("z" + SCALE, torch.ones(1)), "scales without the int8 tensor"),
    (lambda e: e["a"].view(-1).__setitem__(0, -128), "outside the encoder's range"),
])
def test_malformed_int8_payloads_raise_wire_error(mangle, says: str) -> None:
    enc = encode({"a": torch.randn(2, 100)}, INT8)
    enc = {k: v.clone() for k, v in enc.items()}
    mangle(enc)
    with pytest.raises(WireError, match=says):
        decode(enc, INT8)


def test_non_float32_tensors_cross_unchanged() -> None:
    p = {"i": torch.arange(5), "h": torch.ones(3, dtype=torch.float16)}
    for fmt in (BF16, INT8):
        enc = encode(p, fmt)
        assert set(enc) == set(p) and all(enc[k] is p[k] for k in p)
        assert wire_bytes(p, fmt) == payload_bytes(p)


def test_bad_format_settings_are_config_errors() -> None:
    from fedit.config import Config
    from fedit.errors import ConfigError

    with pytest.raises(ConfigError, match="run.wire_dtype"):
        Config().override({"run.wire_dtype": "fp8"})
    with pytest.raises(ConfigError, match="run.wire_block"):
        Config().override({"run.wire_block": 4})
