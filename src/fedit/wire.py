"""How tensors cross between the server and its clients (`run.wire_dtype`, `run.wire_block`): pure functions.

Formats (each applies to float32 tensors; a tensor of any other dtype crosses unchanged):

- ``float32`` (default): nothing is encoded; every function here returns what it was given, so results are
  bit-identical to a run without this module.
- ``bfloat16``: a tensor crosses as its bf16 rounding (round to nearest, ties to even; same shape; on Flower as a
  uint16 view with the dtype name, see engines/flower/codec.py) and is decoded back to float32: 2 bytes per value.
  Error: |x - bf16(x)| <= 2**-8 * |x| (8 significant bits), e.g. 1 + 2**-9 -> 1.0, 1 + 3 * 2**-8 -> 1 + 2**-6.
- ``int8``: blockwise absmax quantization. The tensor is flattened and cut into blocks of `block` values (the
  last one may be short); per block, scale = absmax / 127 in float32 and q = round_half_even(x / scale) in
  [-127, 127] (q = 0 where absmax = 0). Encoded: `key` -> the int8 tensor q (same shape) and `key#scale` -> the
  float32 scales (ceil(numel / block) of them): 1 + 4 / block bytes per value (1.0625 at 64, about a quarter of
  float32). Decoded: q * scale per block, in float32. Error: |x - q * scale| <= scale / 2 = absmax / 254 per value
  (plus float32 rounding of the division and product, a few ulps of x). A block holding NaN or Inf gets a
  non-finite scale and q = 0, so it decodes to non-finite values, which the round loop's validation rejects.

Directions. Down (`send_tasks`, the server's tasks): the task's params and extras go absolute in the format
(under int8, int8 absolute: the server keeps its exact float32 copy and re-encodes it every round, so the downlink
error does not build up in what the server holds between rounds, and it stays within absmax / 254 of each block of
the adapter, whose blocks hold values of similar size). Up (`send_update`): each float32 tensor of the update's
params that has a same-shaped float32 counterpart in the tensors the client received goes as the DELTA from it
(the client's weights minus what it received), so the error scales with the update, not with the weights: under
bf16 the absolute weights would carry an error of |w| * 2**-8, as large as the update itself at small learning
rates. The server decodes with the same reference, which it knows bit for bit: it decodes what it sent with these
same functions (`receive_tasks`). The reconstruction is received + decode(delta): the client's own weights, up to
the delta's quantization error (a client that changed nothing is reconstructed exactly). The update's extras
(e.g. SCAFFOLD's control-variate change, already a change) go absolute. The cumulative base delta (FedEx-LoRA) is
not encoded: it is the base itself. All rounding is deterministic (no random rounding), so the simulator, which
applies exactly these encode -> decode steps in-process, and a Flower run get the same bits.

A decoder faces what a client sent: an encoded payload that is malformed (a scale without its tensor, scales of
the wrong count or dtype, a q value of -128) raises WireError naming the tensor; the engines make that the
client's failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedit.types import ClientTask, ClientUpdate, Params

FORMATS = ("float32", "bfloat16", "int8")
SCALE = "#scale"  # suffix of the int8 scales' key


class WireError(ValueError):
    """An encoded payload that cannot be decoded (it names the tensor and what is wrong)."""


@dataclass(frozen=True)
class WireFormat:
    """`run.wire_dtype` and `run.wire_block`."""

    dtype: str = "float32"
    block: int = 64

    def __post_init__(self) -> None:
        if self.dtype not in FORMATS:
            raise ValueError(f"wire dtype {self.dtype!r}: expected one of {', '.join(FORMATS)}")
        if self.block < 1:
            raise ValueError(f"wire block {self.block}: expected an integer >= 1")

    @classmethod
    def of(cls, run: Any) -> WireFormat:
        """The format a RunConfig asks for."""
        return cls(str(run.wire_dtype), int(run.wire_block))

    @property
    def exact(self) -> bool:
        """True for float32: nothing is encoded."""
        return self.dtype == "float32"


EXACT = WireFormat()


# ---- one tensor -------------------------------------------------------------------------------------------------
def _blocks(n: int, block: int) -> int:
    return -(-n // block)


def quantize_int8(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q: int8 of x's shape, scales: float32 [ceil(numel / block)]) as the module docstring says."""
    flat = x.detach().reshape(-1).to(torch.float32)
    n, nb = flat.numel(), _blocks(flat.numel(), block)
    padded = torch.zeros(nb * block, dtype=torch.float32)
    padded[:n] = flat
    rows = padded.view(nb, block)
    scale = rows.abs().amax(dim=1) / 127 if nb else torch.zeros(0)
    usable = torch.isfinite(scale) & (scale > 0)
    q = torch.round(rows / torch.where(usable, scale, torch.ones_like(scale))[:, None]).clamp_(-127, 127)
    q = torch.where(usable[:, None], q, torch.zeros_like(q)).to(torch.int8)
    return q.reshape(-1)[:n].reshape(x.shape).clone(), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, block: int, key: str = "tensor") -> torch.Tensor:
    """float32 q * scale per block; WireError if q or scale is not what `quantize_int8` makes."""
    if q.dtype != torch.int8:
        raise WireError(f"{key}: int8 values expected, got {q.dtype}")
    if scale.dtype != torch.float32 or scale.dim() != 1:
        raise WireError(f"{key}{SCALE}: a 1-d float32 tensor expected, got {scale.dtype} of shape "
                        f"{tuple(scale.shape)}")
    n = q.numel()
    nb = _blocks(n, block)
    if scale.numel() != nb:
        raise WireError(f"{key}{SCALE}: {scale.numel()} scales for {n} values, expected {nb} (blocks of {block})")
    if bool((q == -128).any()):
        raise WireError(f"{key}: value -128 is outside the encoder's range [-127, 127]")
    padded = torch.zeros(nb * block, dtype=torch.float32)
    padded[:n] = q.reshape(-1).to(torch.float32)
    return (padded.view(nb, block) * scale[:, None]).reshape(-1)[:n].reshape(q.shape).clone()


def tensor_bytes(t: torch.Tensor, fmt: WireFormat) -> int:
    """Bytes of tensor data `t` takes on the wire in `fmt` (as `payload_bytes(encode({k: t}))`)."""
    n = t.numel()
    if fmt.exact or t.dtype != torch.float32:
        return n * t.element_size()
    if fmt.dtype == "bfloat16":
        return 2 * n
    return n + 4 * _blocks(n, fmt.block)


def wire_bytes(params: Any, fmt: WireFormat) -> int:
    """Bytes of tensor data of a payload on the wire in `fmt` (non-tensor values, and a malformed payload that is
    not a mapping at all, count 0)."""
    if not isinstance(params, Mapping):
        return 0
    return sum(tensor_bytes(v, fmt) for v in params.values() if isinstance(v, torch.Tensor))


# ---- a tensor dict ----------------------------------------------------------------------------------------------
def _delta_ref(reference: Params | None, key: str, shape: torch.Size) -> torch.Tensor | None:
    ref = (reference or {}).get(key)
    if isinstance(ref, torch.Tensor) and ref.dtype == torch.float32 and ref.shape == shape:
        return ref
    return None


def encode(params: Params, fmt: WireFormat, reference: Params | None = None) -> Params:
    """`params` in `fmt`: every float32 tensor encoded, as the delta from `reference[key]` where that is a float32
    tensor of the same shape. float32 returns `params` itself."""
    if fmt.exact:
        return params
    out: Params = {}
    for key, t in params.items():
        if key.endswith(SCALE):
            raise ValueError(f"{key}: tensor names ending in {SCALE!r} are reserved by the int8 wire format")
        if t.dtype != torch.float32:
            out[key] = t
            continue
        ref = _delta_ref(reference, key, t.shape)
        x = t.detach().to("cpu") if ref is None else t.detach().to("cpu") - ref
        if fmt.dtype == "bfloat16":
            out[key] = x.to(torch.bfloat16)
        else:
            out[key], out[key + SCALE] = quantize_int8(x, fmt.block)
    return out


def decode(encoded: Mapping[str, Any], fmt: WireFormat, reference: Params | None = None) -> Params:
    """The inverse of `encode` (float32 values; a delta is added back to the same `reference`). WireError for a
    payload `encode` cannot have made. float32 returns `encoded` itself."""
    if fmt.exact:
        return encoded  # type: ignore[return-value]
    out: Params = {}
    for key, t in encoded.items():
        if not isinstance(t, torch.Tensor):
            raise WireError(f"{key}: a tensor expected, got {type(t).__name__}")
        if key.endswith(SCALE):
            base = key[: -len(SCALE)]
            if fmt.dtype != "int8" or not isinstance(encoded.get(base), torch.Tensor) \
                    or encoded[base].dtype != torch.int8:
                raise WireError(f"{key}: scales without the int8 tensor {base!r}")
            continue
        if fmt.dtype == "bfloat16" and t.dtype == torch.bfloat16:
            x = t.to(torch.float32)
        elif fmt.dtype == "int8" and t.dtype == torch.int8 and key + SCALE in encoded:
            scale = encoded[key + SCALE]
            if not isinstance(scale, torch.Tensor):
                raise WireError(f"{key}{SCALE}: a tensor expected, got {type(scale).__name__}")
            x = dequantize_int8(t, scale, fmt.block, key)
        else:  # not encoded (a tensor that was not float32): as it came
            out[key] = t
            continue
        ref = _delta_ref(reference, key, x.shape)
        out[key] = x if ref is None else ref + x
    return out


# ---- the two ends of a round ------------------------------------------------------------------------------------
def _each_once(tasks: Mapping[int, ClientTask], fn: Any) -> dict[int, ClientTask]:
    """`fn` applied to each distinct params/extras dict once: tensors shared by several tasks stay shared."""
    memo: dict[int, Params] = {}

    def once(p: Params) -> Params:
        if not p:
            return p
        if id(p) not in memo:
            memo[id(p)] = fn(p)
        return memo[id(p)]

    return {cid: ClientTask(once(t.params), once(t.extras), t.config) for cid, t in tasks.items()}


def send_tasks(tasks: Mapping[int, ClientTask], fmt: WireFormat) -> dict[int, ClientTask]:
    """The server's tasks as they go down (params and extras absolute in `fmt`)."""
    if fmt.exact:
        return dict(tasks)
    return _each_once(tasks, lambda p: encode(p, fmt))


def receive_tasks(sent: Mapping[int, ClientTask], fmt: WireFormat) -> dict[int, ClientTask]:
    """What clients train from: `send_tasks`' tasks decoded (the server computes the same, as the reference)."""
    if fmt.exact:
        return dict(sent)
    return _each_once(sent, lambda p: decode(p, fmt))


def send_update(update: ClientUpdate, received: ClientTask, fmt: WireFormat) -> ClientUpdate:
    """A client's update as it goes up: params as the delta from what it `received`, extras absolute."""
    if fmt.exact:
        return update
    return ClientUpdate(update.client_id, encode(update.params, fmt, received.params), update.num_examples,
                        update.metrics, encode(update.extras, fmt))


def receive_update(update: ClientUpdate, received: ClientTask, fmt: WireFormat) -> ClientUpdate:
    """The server's float32 view of `send_update`'s update, `received` being what that client was sent, decoded
    (`receive_tasks`); WireError if it is malformed."""
    if fmt.exact:
        return update
    return ClientUpdate(update.client_id, decode(update.params, fmt, received.params), update.num_examples,
                        update.metrics, decode(update.extras, fmt))


def round_trip_update(update: ClientUpdate, received: ClientTask, fmt: WireFormat) -> ClientUpdate:
    """`receive_update(send_update(...))`: what the server gets from an honest client (the simulator's path)."""
    return receive_update(send_update(update, received, fmt), received, fmt)
