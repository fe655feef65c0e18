"""The model as the planner sees it: its config (transformers AutoConfig) and a weightless skeleton on the meta device
with the run's LoRA attached by `attach_lora` itself, so adapter shapes, counts and payload bytes are exactly those
of the run, for any architecture peft supports, without reading a weight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.model.base_delta import ModelFacts
from fedit.types import Params

# Weight files transformers loads, single-file or sharded (with an index naming the shards).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class LoraShape:
    """One LoRA-wrapped module: its payload prefix and base layer's input/output features."""

    name: str
    d_in: int
    d_out: int


@dataclass
class ModelShape:
    """Sizes of the base model and of the run's adapter, from the model config alone."""

    name: str
    model_type: str
    config: Any  # the transformers PretrainedConfig
    dtype: torch.dtype  # the compute dtype the run loads the base in
    params: int  # base parameters (tied weights once)
    linear_params: int  # in the blocks' linear layers: what 4/8-bit quantization packs
    linear_rows: int  # output rows of those layers (8-bit keeps one scale per row)
    payload: Params  # the adapter payload as meta tensors: key -> shape and dtype, as AdapterSlots maps it
    lora: list[LoraShape]
    targets: list[str] | str  # the resolved lora.targets
    facts: ModelFacts
    weights: str | None  # where the weights are, when present on this machine (None: not here)
    weights_missing: str = ""  # why not, when they are not
    dims: dict[str, int] = field(default_factory=dict)  # hidden, intermediate, layers, heads, kv_heads, head_dim, vocab

    @property
    def adapter_params(self) -> int:
        return sum(t.numel() for t in self.payload.values())


def load_model_config(name: str) -> Any:
    """The model's transformers config ("tiny" = the shipped base's); ConfigError naming model.name if it cannot
    be read (a missing path, a hub name not cached with HF_HUB_OFFLINE=1, ...)."""
    from transformers import AutoConfig

    from fedit.model.load import quiet_transformers, resolve_model_path

    quiet_transformers()
    try:
        return AutoConfig.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name: cannot load the config of {name!r}: {e}") from None


def model_shape(cfg: Config, dtype: torch.dtype) -> ModelShape:
    """Build the weightless skeleton, attach the run's LoRA (same seed, same targets) and read off its sizes."""
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from fedit.model.base_delta import model_facts
    from fedit.model.lora import AdapterSlots, attach_lora, target_modules

    config = load_model_config(cfg.model.name)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    try:
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(config, **kwargs)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"model.name: {cfg.model.name!r} is not a causal language model transformers can "
                          f"build: {e}") from None
    params = sum(p.numel() for p in base.parameters())
    linear_params, linear_rows = _linear_sizes(base)
    targets = target_modules(base, cfg.lora.targets)
    peft_model = attach_lora(base, cfg.lora, seed=cfg.run.seed)
    slots = AdapterSlots(peft_model)
    lora = [LoraShape(n, int(m.in_features), int(m.out_features)) for n, m in peft_model.named_modules()
            if isinstance(m, LoraLayer) and "default" in m.lora_A]
    facts = replace(model_facts(peft_model), quantized=bool(cfg.model.quantization))
    weights, missing = find_weights(cfg.model.name)
    return ModelShape(cfg.model.name, str(getattr(config, "model_type", "")), config, dtype, params, linear_params,
                      linear_rows, {k: p.detach() for k, p in slots.params.items()}, lora, targets, facts, weights,
                      missing, model_dims(config))


def _linear_sizes(model: Any) -> tuple[int, int]:
    """Weights and output rows of the linear layers bitsandbytes would quantize (all but the output head)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    n = rows = 0
    for m in model.modules():
        if m is head or not isinstance(m, (torch.nn.Linear, Conv1D)):
            continue
        n += m.weight.numel()
        rows += m.weight.shape[1] if isinstance(m, Conv1D) else m.weight.shape[0]
    return n, rows


def model_dims(config: Any) -> dict[str, int]:
    """The dimensions the activation estimate uses, read from the common config attribute names."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def first(*names: str, default: int = 0) -> int:
        for n in names:
            v = getattr(text, n, None)
            if isinstance(v, int) and v > 0:
                return v
        return default

    hidden = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head", default=1)
    head_dim = first("head_dim", default=hidden // heads if heads else hidden)
    return {"hidden": hidden, "intermediate": first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
            "layers": first("num_hidden_layers", "n_layer", "num_layers"), "heads": heads,
            "kv_heads": first("num_key_value_heads", default=heads), "head_dim": head_dim,
            "vocab": first("vocab_size")}


def find_weights(name: str) -> tuple[str | None, str]:
    """(where the model's weights are on this machine, "") or (None, why they are not): a local directory with its
    weight files (every shard an index names), or a hub name whose files are all in the Hugging Face cache."""
    from fedit.model.load import resolve_model_path

    path = Path(resolve_model_path(name))
    if path.is_dir():
        for index in WEIGHT_INDEXES:
            if (path / index).is_file():
                shards = _shards(path / index)
                missing = [s for s in shards if not (path / s).is_file()]
                return (str(path), "") if not missing else (None, f"{len(missing)} shard(s) missing in {path}")
        if any((path / f).is_file() for f in WEIGHT_FILES):
            return str(path), ""
        return None, f"no weight files in {path}"
    return _cached_hub_weights(name)


def _shards(index: Path) -> list[str]:
    try:
        return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError):
        return [index.name]  # an unreadable index: report it as missing


def _cached_hub_weights(name: str) -> tuple[str | None, str]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None, "huggingface_hub is not installed"
    for index in WEIGHT_INDEXES:
        found = try_to_load_from_cache(name, index)
        if isinstance(found, str):
            missing = [s for s in _shards(Path(found)) if not isinstance(try_to_load_from_cache(name, s), str)]
            return (str(Path(found).parent), "") if not missing else (None, f"{len(missing)} shard(s) not cached")
    for f in WEIGHT_FILES:
        found = try_to_load_from_cache(name, f)
        if isinstance(found, str):
            return str(Path(found).parent), ""
    return None, f"the weights of {name!r} are not in the Hugging Face cache"
