"""Mixed precision on CPU: bf16 autocast over a base stored in bf16, LoRA parameters and optimizer state in float32.

`model.dtype` decides how the frozen base is stored (`fedit.model.load.pick_dtype`: "auto" is bf16 on a CPU with
bf16 matrix units, float32 on one without). When a CPU model's base is stored in bf16, its forward passes (training,
held-out loss, generation) run under `torch.autocast("cpu", torch.bfloat16)`: matmuls in bf16, the LoRA weights
(float32, peft keeps adapters in float32 over a half-precision base) cast to bf16 once per forward by autocast's
cache, losses computed in float32 (`label_token_nll` upcasts the logits). Gradients, AdamW state and the payload stay
float32. Inside that context peft's own cast of each LoRA layer's input to the adapter's float32 is switched off
(`peft.helpers.disable_input_dtype_casting`): autocast would cast it straight back to bf16 for the matmul, so the
activations stay bf16 and two casts per LoRA layer per pass are saved (about 5% of a step on the tiny base). CUDA
runs are left as they were (a bf16/fp16 base with float32 adapters, no autocast).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def base_dtype(model: Any) -> torch.dtype:
    """The dtype the base is stored in: that of the model's first floating-point parameter (the token embedding)."""
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def autocast_dtype(model: Any) -> torch.dtype | None:
    """bf16 when `model` sits on a CPU with its base stored in bf16 (mixed precision); None (no autocast) otherwise."""
    p = next(p for p in model.parameters() if p.is_floating_point())
    return torch.bfloat16 if p.device.type == "cpu" and p.dtype == torch.bfloat16 else None


@contextlib.contextmanager
def _mixed(model: Any, dtype: torch.dtype) -> Iterator[None]:
    from peft.helpers import disable_input_dtype_casting

    with torch.autocast("cpu", dtype=dtype), disable_input_dtype_casting(model):
        yield


def autocast(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The context a forward of `model` runs in: CPU bf16 autocast for a bf16 base on a CPU (peft's input casts
    off), else nothing."""
    dtype = autocast_dtype(model)
    if dtype is None:
        return contextlib.nullcontext()
    return _mixed(model, dtype)


# Under CPU bf16 autocast, transformers' eager attention (bf16 matmuls, softmax in float32) is faster than torch's
# CPU SDPA kernel for short rows and slower for long ones. Tiny base, one training step, bf16 autocast, eager / sdpa
# time (benchmarks/cpu_attention.py): 0.87 at 16 x 64 tokens, 0.96 at 16 x 256, 0.94-1.10 at 8 x 512 (runs
# disagree), 1.83 at 4 x 1024, 2.05 at 2 x 2048 (docs/benchmarks.md). The bound stays where eager never lost.
EAGER_MAX_LEN = 256


def pick_attention(setting: str | None, device: torch.device, dtype: torch.dtype, max_len: int | None) -> str | None:
    """The attention implementation to load: `setting` (`model.attn_implementation`) when given; else "eager" for a
    bf16 base on a CPU (autocast) when no row is longer than EAGER_MAX_LEN tokens (`max_len`, the run's cutoff;
    None: unknown), else None (transformers' default, sdpa). A quantized base is CUDA-only, so it gets None too."""
    if setting:
        return setting
    if device.type == "cpu" and dtype == torch.bfloat16 and max_len is not None and max_len <= EAGER_MAX_LEN:
        return "eager"
    return None
