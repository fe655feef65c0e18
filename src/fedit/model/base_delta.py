"""A change to the frozen base weights (FedEx-LoRA folds the residual of averaging into them): applied as
W = W0 + delta from a kept copy of W0, so setting the cumulative delta again is exact whatever was applied before.

Keys are the plain base model's weight names (`model.layers.0.self_attn.q_proj.weight`), each delta in that
weight's own layout (a `fan_in_fan_out` Conv1D stores (in, out)); in a PeftModel the LoRA-wrapped weight is
found under `...q_proj.base_layer.weight`. Saved beside an adapter as `fedit_base_delta.safetensors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedit.errors import ConfigError
from fedit.types import Params

BASE_DELTA_FILE = "fedit_base_delta.safetensors"


def _find(model: Any, name: str) -> torch.nn.Parameter:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    named = dict(base.named_parameters())
    for cand in (name, name.replace(".weight", ".base_layer.weight")):
        if cand in named:
            return named[cand]
    raise ConfigError(f"base delta names {name!r}, which this model does not have")


class BaseWeights:
    """Sets the base weights of `model` to W0 + delta for the modules a delta names (W0 kept on first touch)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._w0: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, delta: Params) -> None:
        if getattr(self.model, "is_loaded_in_4bit", False) or getattr(self.model, "is_loaded_in_8bit", False):
            raise ConfigError("a base delta cannot be applied exactly to a 4/8-bit quantized base; load it unquantized")
        for name in sorted(set(self._w0) | set(delta)):
            w = _find(self.model, name)
            if name not in self._w0:
                self._w0[name] = w.detach().clone()
            d = delta.get(name)
            w0 = self._w0[name]
            w.copy_(w0 if d is None else (w0.to(torch.float32) + d.to(w0.device, torch.float32)).to(w.dtype))


def save_base_delta(delta: Params, adapter_dir: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous().cpu() for k, v in delta.items()}, str(Path(adapter_dir) / BASE_DELTA_FILE),
              metadata={"format": "pt", "fedit": "base delta: W = W0 + delta"})


def load_base_delta(adapter_dir: str | Path) -> Params:
    """The base delta saved beside an adapter ({} if there is none)."""
    from safetensors.torch import load_file

    f = Path(adapter_dir) / BASE_DELTA_FILE
    return load_file(str(f)) if f.is_file() else {}
