"""A LoRA linear layer's whole forward and backward as one autograd function, for CPU training.

peft computes a LoRA linear layer as `base(x) + lora_B(lora_A(dropout(x))) * scaling`: besides the three matmuls,
a pass over the input for the dropout's scale, two passes over the output (the scaling, the sum), autocast's casts
of x, A and B per op, and as many again in the backward (the scaling's and the dropout's gradients, the sum of the
two gradients of x), each a full-size elementwise kernel and tensor. At the tiny base's width those passes cost
about as much as the LoRA matmuls themselves. `FusedLoraLinear` computes the same function with the constants folded
into the matmuls (W: the frozen base weight, b its bias, A: r x in, B: out x r, s = lora_alpha / r, m the dropout's
keep mask from `MaskDropout.keep_mask`, 1 where an element is kept, q = 1 / (1 - p) its scale):

    forward   x_d = m * x        h = x_d A^T        y = x W^T + b + (s q) h B^T
    backward  g_h = (s q) g B    dB = (s q) g^T h    dA = g_h^T x_d    dx = g W + m * (g_h A)

`y = x W^T + b + (s q) h B^T` and `dx = g W + ...` are one GEMM each (addmm's beta/alpha), so the two sums and the
two scalings cost no pass of their own; the mask multiplies as bytes (a bool tensor viewed as uint8: a quarter of
the time of a masked fill on CPU). The result equals peft's (same masks, the same draw of the random stream:
`MaskDropout` draws the mask either way) up to rounding; the matmuls run in the autocast dtype when CPU autocast is
on (bf16 over a bf16 base, fedit.model.precision), else in x's dtype; A's and B's gradients are returned in their
own dtype (float32).

`lora.kernel = "auto"` (the default) puts it on every plain LoRA linear layer of a CPU model whose dropout is
fedit's `MaskDropout` or none; "peft" keeps peft's forward. At call time anything else (merged or disabled
adapters, several active adapters, DoRA and other variants, LoRA bias, `adapter_names`, a non-CPU input, a base
weight that trains, peft's `nn.Dropout` in training) goes to peft's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from fedit.config import LORA_KERNELS
from fedit.model.dropout import MaskDropout


class FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + b + c (x_d A^T) B^T with c = scaling / (1 - p) and x_d = `keep` * x (module docstring; `keep`
    bool, True = kept, None: no dropout). All matmuls in `dtype`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, keep: torch.Tensor | None, c: float, dtype: torch.dtype) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(dtype)
        w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
        mask = None if keep is None else keep.reshape(x2.shape).view(torch.uint8)  # x * uint8: x's dtype
        xd = x2 if mask is None else x2 * mask
        h = xd @ a.t()
        base = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
        y = base.addmm_(h, b.t(), alpha=c)
        ctx.save_for_backward(xd, h, w, a, b, mask)
        ctx.c, ctx.in_shape = c, shape
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xd, h, w, a, b, mask = ctx.saved_tensors
        c = ctx.c
        g2 = g.reshape(-1, g.shape[-1]).to(xd.dtype)
        gh = (g2 @ b).mul_(c)
        grad_a = (gh.t() @ xd).to(ctx.a_dtype) if ctx.needs_input_grad[3] else None
        grad_b = torch.mm(g2.t(), h).mul_(c).to(ctx.b_dtype) if ctx.needs_input_grad[4] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            gxd = gh @ a
            if mask is not None:
                gxd.mul_(mask)
            grad_x = gxd.addmm_(g2, w).view(ctx.in_shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def _fusable(layer: Any, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The adapter name when this call can take the fused path (module docstring), else None."""
    if args or kwargs or layer.disable_adapters or layer.merged or x.device.type != "cpu":
        return None
    active = layer.active_adapters
    if len(active) != 1 or active[0] not in layer.lora_A or active[0] in layer.lora_variant:
        return None
    name = active[0]
    base = layer.base_layer
    if type(base) is not torch.nn.Linear or base.weight.requires_grad or layer.lora_bias.get(name, False):
        return None
    drop = layer.lora_dropout[name]
    if layer.training and not isinstance(drop, MaskDropout | torch.nn.Identity):
        return None
    return name


def fused_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A peft `lora.Linear`'s forward through `FusedLoraLinear` when the call allows it, else peft's own."""
    name = _fusable(layer, x, args, kwargs)
    if name is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    drop_module = layer.lora_dropout[name]
    c = float(layer.scaling[name])
    keep = None
    if layer.training and isinstance(drop_module, MaskDropout) and drop_module.drops:
        keep = drop_module.keep_mask(x)
        c *= drop_module.scale
    base = layer.base_layer
    dtype = _compute_dtype(x)
    return FusedLoraLinear.apply(x, base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
                                 keep, c, dtype)


def resolve_kernel(setting: str, device: torch.device | str) -> str:
    """"fused" or "peft": what `lora.kernel = setting` means on `device`."""
    if setting not in LORA_KERNELS:
        raise ValueError(f"lora.kernel: got {setting!r}, expected one of {', '.join(LORA_KERNELS)}")
    return "fused" if setting == "auto" and torch.device(device).type == "cpu" else "peft"


def _lora_linears(model: Any) -> list[Any]:
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if isinstance(m, Linear)]


def set_lora_kernel(model: Any, kernel: str) -> int:
    """Give every peft LoRA linear layer of `model` the fused forward ("fused") or peft's own ("peft"), in place;
    returns how many layers now have that forward."""
    if kernel not in ("fused", "peft"):
        raise ValueError(f"LoRA kernel: got {kernel!r}, expected fused or peft")
    layers = _lora_linears(model)
    for m in layers:
        if kernel == "fused":
            m.forward = types.MethodType(fused_forward, m)
        else:
            m.__dict__.pop("forward", None)
    return len(layers)


def kernel_of(model: Any) -> str:
    """"fused" when any LoRA linear layer of `model` has the fused forward, else "peft"."""
    fused = (getattr(m.__dict__.get("forward"), "__func__", None) is fused_forward for m in _lora_linears(model))
    return "fused" if any(fused) else "peft"
