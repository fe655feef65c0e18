"""Tensor <-> .npy bytes, bit-exact for every torch dtype: numpy has no bfloat16, so it travels as a uint16 view."""

from __future__ import annotations

import io

import numpy as np
import torch

# torch dtypes numpy lacks -> (signed torch int of the same width, unsigned numpy type they travel as)
_VIEW_AS = {torch.bfloat16: (torch.int16, np.uint16, np.int16),
            torch.float8_e4m3fn: (torch.int8, np.uint8, np.int8),
            torch.float8_e5m2: (torch.int8, np.uint8, np.int8)}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """(array for the wire, torch dtype name)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype in _VIEW_AS:
        signed, wire, _ = _VIEW_AS[t.dtype]
        return t.view(signed).numpy().view(wire), dtype_name(t.dtype)
    return t.numpy(), dtype_name(t.dtype)


def numpy_to_tensor(arr: np.ndarray, name: str) -> torch.Tensor:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown tensor dtype {name!r}")
    if dtype in _VIEW_AS:  # unsigned on the wire -> signed int of the same width -> the real dtype
        _, _, signed_np = _VIEW_AS[dtype]
        return torch.from_numpy(arr.view(signed_np).copy()).view(dtype)
    t = torch.from_numpy(arr.copy())
    if t.dtype != dtype:
        raise ValueError(f"tensor arrived as {t.dtype}, the sender said {dtype}")
    return t


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def params_npy(params: dict[str, torch.Tensor]) -> tuple[list[str], dict[str, str], list[bytes]]:
    """(keys in order, torch dtype name by key, .npy bytes per key): a tensor dict as it travels."""
    dtypes: dict[str, str] = {}
    blobs = []
    for k, t in params.items():
        arr, dtypes[k] = tensor_to_numpy(t)
        blobs.append(npy_bytes(arr))
    return list(params), dtypes, blobs
