"""Mixed precision on CPU: bf16 autocast over a base stored in bf16, LoRA parameters and optimizer state in float32.

`model.dtype` decides how the frozen base is stored (`fedit.model.load.pick_dtype`: "auto" is bf16 on a CPU with
bf16 matrix units, float32 on one without). When a CPU model's base is stored in bf16, its forward passes (training,
held-out loss, generation) run under `torch.autocast("cpu", torch.bfloat16)`: matmuls in bf16, the LoRA weights
(float32, peft keeps adapters in float32 over a half-precision base) cast to bf16 once per forward by autocast's
cache, losses computed in float32 (`label_token_nll` upcasts the logits). Gradients, AdamW state and the payload stay
float32. CUDA runs are left as they were (a bf16/fp16 base with float32 adapters, no autocast).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def base_dtype(model: Any) -> torch.dtype:
    """The dtype the base is stored in: that of the model's first floating-point parameter (the token embedding)."""
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def autocast_dtype(model: Any) -> torch.dtype | None:
    """bf16 when `model` sits on a CPU with its base stored in bf16 (mixed precision); None (no autocast) otherwise."""
    p = next(p for p in model.parameters() if p.is_floating_point())
    return torch.bfloat16 if p.device.type == "cpu" and p.dtype == torch.bfloat16 else None


def autocast(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The context a forward of `model` runs in: CPU bf16 autocast for a bf16 base on a CPU, else nothing."""
    dtype = autocast_dtype(model)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)
