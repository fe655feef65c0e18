"""A change to the frozen base weights (FedEx-LoRA folds the residual of averaging into them): applied as
W = W0 + delta from a kept copy of W0, so setting the cumulative delta again is exact whatever was applied before.

Keys are the plain base model's weight names (`model.layers.0.self_attn.q_proj.weight`), each delta in that
weight's own layout (a `fan_in_fan_out` Conv1D stores (in, out)); in a PeftModel the LoRA-wrapped weight is
found under `...q_proj.base_layer.weight`. Saved beside an adapter as `fedit_base_delta.safetensors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedit.errors import CheckpointError, ConfigError
from fedit.types import Params

BASE_DELTA_FILE = "fedit_base_delta.safetensors"


@dataclass(frozen=True)
class LoraModule:
    """What a strategy needs to know of one adapted module to turn its A and B into a base delta."""

    weight: str  # the plain base model's weight name, e.g. "model.layers.0.self_attn.q_proj.weight"
    scaling: float  # s in W = W0 + s B A: lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA), as peft computes it
    fan_in_fan_out: bool  # the weight is stored (in, out) (GPT-2's Conv1D), so a delta B A is added transposed


@dataclass(frozen=True)
class ModelFacts:
    """The adapted model as a strategy sees it: payload module prefix ("base_model.model.model.layers.0.self_attn.
    q_proj", a payload key without ".lora_A.weight") -> LoraModule, and whether the base is 4/8-bit quantized."""

    modules: dict[str, LoraModule] = field(default_factory=dict)
    quantized: bool = False


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def model_facts(peft_model: Any, adapter: str = "default") -> ModelFacts:
    """The scaling and layout of every LoRA module of `peft_model`, read from peft's own layers (so they are what
    the forward pass uses: lora.alpha / lora.r from the config, fan_in_fan_out as peft set it for Conv1D)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    plain = {id(m): n for n, m in base.named_modules()}
    modules = {}
    for name, m in peft_model.named_modules():
        if isinstance(m, LoraLayer) and adapter in m.scaling:
            modules[name] = LoraModule(f"{plain[id(m)]}.weight", float(m.scaling[adapter]),
                                       bool(getattr(m, "fan_in_fan_out", False)))
    return ModelFacts(modules, is_quantized(peft_model))


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
        if is_quantized(self.model):
            raise ConfigError("a base delta cannot be applied exactly to a 4/8-bit quantized base; load it unquantized")
        for name, d in delta.items():  # every name and shape checked before any weight changes
            w = _find(self.model, name)
            if tuple(d.shape) != tuple(w.shape):
                raise ConfigError(f"base delta for {name!r} has shape {tuple(d.shape)}, the weight {tuple(w.shape)}")
        for name in sorted(set(self._w0) | set(delta)):
            w = _find(self.model, name)
            if name not in self._w0:
                self._w0[name] = w.detach().clone()
            d = delta.get(name)
            w0 = self._w0[name]
            w.copy_(w0 if d is None else (w0.to(torch.float32) + d.to(w0.device, torch.float32)).to(w.dtype))


def save_base_delta(delta: Params, adapter_dir: str | Path) -> None:
    from safetensors.torch import save_file

    # one metadata key: safetensors writes a metadata map in hash order, so two keys make the bytes differ by process
    save_file({k: v.contiguous().cpu() for k, v in delta.items()}, str(Path(adapter_dir) / BASE_DELTA_FILE),
              metadata={"format": "pt"})


def load_base_delta(adapter_dir: str | Path) -> Params:
    """The base delta saved beside an adapter ({} if there is none)."""
    from safetensors.torch import load_file

    f = Path(adapter_dir) / BASE_DELTA_FILE
    if not f.is_file():
        return {}
    try:
        return load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{f}: unreadable base delta ({e})") from None


def apply_saved_base_delta(model: Any, adapter_dir: str | Path) -> BaseWeights | None:
    """Set `model`'s base to W0 + the delta saved beside the adapter in `adapter_dir` (FedEx-LoRA), before the
    adapter is used or merged; None when there is no delta. The keeper is returned, to restore W0 or set another."""
    delta = load_base_delta(adapter_dir)
    if not delta:
        return None
    if is_quantized(model):
        raise ConfigError(f"{adapter_dir} comes with a base delta ({BASE_DELTA_FILE}: the adapter was trained "
                          "with fedex and is only right on W0 + delta), which cannot be applied exactly to a 4/8-bit "
                          "quantized base; load the base unquantized")
    keeper = BaseWeights(model)
    try:
        keeper.apply(delta)
    except ConfigError as e:
        raise ConfigError(f"{adapter_dir}: {e}") from None
    return keeper
