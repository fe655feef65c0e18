"""LoRA dropout with cheaper masks on CPU: four 16-bit draws from each 64-bit random word.

peft drops out each LoRA layer's input with `nn.Dropout`: on a CPU its Bernoulli mask costs one draw of torch's
Mersenne Twister per element (about 5 ns), a quarter of a bf16 training step on the tiny base (`fedit bench --only
dtype`'s profile). `MaskDropout` computes the same inverted dropout from 16-bit slices of full-range 64-bit words
(`Tensor.random_(-2**63, None)`: every bit uniform), four elements per draw:

    u_i uniform on {-32768, ..., 32767},  keep_i = u_i >= k - 32768,  y_i = keep_i * x_i / (1 - k / 65536)

with k = round(p * 65536), so an element is dropped with probability k / 65536 (p rounded to a multiple of 2^-16:
0.05 -> 0.0500031) and E[y] = x exactly. The masks come from torch's default generator, so a seeded run gives the
same bits at the same thread count, as with `nn.Dropout`, though not the same masks as `nn.Dropout` would draw.

`lora.dropout_impl`: "auto" (the default) is these masks on a CPU and peft's `nn.Dropout` elsewhere (CUDA's Philox
dropout is already cheap); "fast" and "torch" force one or the other.
"""

from __future__ import annotations

from typing import Any

import torch

from fedit.config import DROPOUT_IMPLS

_STEPS = 1 << 16  # p is rounded to a multiple of 2^-16


class MaskDropout(torch.nn.Module):
    """Inverted dropout, its mask from 16-bit slices of 64-bit random words (module docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability: got {p}, expected a number in [0, 1)")
        self.p = p
        self.drops = min(_STEPS - 1, round(p * _STEPS))  # k: elements u < k - 32768 are dropped
        self.scale = _STEPS / (_STEPS - self.drops)

    def extra_repr(self) -> str:
        return f"p={self.p}, effective p={self.drops}/{_STEPS}"

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A fresh mask for `x`: True where an element is kept (u >= k - 32768). One draw of the generator per
        four elements; `fedit.model.fused_lora` draws through here too, so both take the same masks."""
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2 ** 63), None)
        return words.view(torch.int16)[:n].view(x.shape) >= self.drops - _STEPS // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drops == 0:
            return x
        return torch.where(self.keep_mask(x), x * self.scale, 0)


def resolve_dropout_impl(setting: str, device: torch.device | str) -> str:
    """"fast" or "torch": what `lora.dropout_impl = setting` means on `device`."""
    if setting not in DROPOUT_IMPLS:
        raise ValueError(f"lora.dropout_impl: got {setting!r}, expected one of {', '.join(DROPOUT_IMPLS)}")
    if setting == "auto":
        return "fast" if torch.device(device).type == "cpu" else "torch"
    return setting


def set_lora_dropout(model: Any, impl: str) -> int:
    """Make every LoRA dropout of `model` (peft's `lora_dropout` dicts) a `MaskDropout` ("fast") or an `nn.Dropout`
    ("torch") with the same p, in place; returns how many are now of that kind. Layers without dropout (p = 0:
    peft's `nn.Identity`) are left as they are."""
    if impl not in ("fast", "torch"):
        raise ValueError(f"dropout impl: got {impl!r}, expected fast or torch")
    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, d in list(drops.items()):
            if isinstance(d, MaskDropout if impl == "torch" else torch.nn.Dropout):
                drops[name] = torch.nn.Dropout(d.p) if impl == "torch" else MaskDropout(d.p)
                drops[name].train(d.training)
            n += isinstance(drops[name], MaskDropout if impl == "fast" else torch.nn.Dropout)
    return n
