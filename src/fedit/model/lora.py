"""LoRA through peft: attach once, get/set the adapter-only payload in place, save/load in PEFT format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedit.atomic import staged_dir
from fedit.config import LoraConfig
from fedit.errors import CheckpointError, ConfigError
from fedit.types import Params

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# Attention projections per architecture: the FedIT/Alpaca-LoRA default is q and v.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"], "qwen3": ["q_proj", "v_proj"], "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"], "gemma3_text": ["q_proj", "v_proj"], "phi3": ["qkv_proj"],
    "phi": ["q_proj", "v_proj"], "opt": ["q_proj", "v_proj"], "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"], "falcon": ["query_key_value"], "bloom": ["query_key_value"],
    "gptj": ["q_proj", "v_proj"], "olmo": ["q_proj", "v_proj"], "olmo2": ["q_proj", "v_proj"],
}


def target_modules(model: Any, targets: list[str] | None) -> list[str] | str:
    if targets == ["all-linear"] or targets == "all-linear":
        return "all-linear"
    if targets and targets != ["auto"]:
        return list(targets)
    return DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""), "all-linear")


def peft_lora_config(cfg: LoraConfig, targets: list[str] | str, base_name: str | None) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none",
        task_type="CAUSAL_LM", base_model_name_or_path=base_name,
    )


def is_kbit(model: Any) -> bool:
    """Whether the base was loaded 4-bit or 8-bit through bitsandbytes."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant torch.utils.checkpoint): less
    activation memory for one more forward of every layer. The KV cache is off (it is useless in training and
    transformers refuses it with checkpointing). With non-reentrant checkpointing the layers' inputs need not
    require grad; `enable_input_require_grads` is still set, which also serves a reentrant checkpoint function."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    model.config.use_cache = False


def prepare_base(model: Any, gradient_checkpointing: bool) -> Any:
    """Ready a frozen base for LoRA training. A 4/8-bit base goes through peft's `prepare_model_for_kbit_training`
    (norms, embeddings and LM head upcast to float32, base frozen, checkpointing when asked) as QLoRA does; any other
    base only gets checkpointing when asked."""
    if is_kbit(model):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        if gradient_checkpointing:
            model.config.use_cache = False
        return model
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def attach_lora(model: Any, cfg: LoraConfig, seed: int, *, gradient_checkpointing: bool = False) -> Any:
    """Wrap `model` with a LoRA adapter named "default"; the init is seeded, so the same seed gives the same adapter.

    The base is prepared first (`prepare_base`: k-bit preparation for a quantized base, gradient checkpointing when
    `gradient_checkpointing`). The live model's PEFT config names the base as peft finds it (its load path); what
    saved adapters record is the run's own `peft_lora_config(..., base_name)`, so the two never need to agree (and
    peft does not warn)."""
    from peft import get_peft_model

    targets = target_modules(model, cfg.targets)
    model = prepare_base(model, gradient_checkpointing)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(model, peft_lora_config(cfg, targets, None))
        except ValueError as e:  # peft's NoMatchingPeftModuleError for targets the model does not have
            raise ConfigError(f"lora.targets: got {cfg.targets!r}, which matches no module of this model: {e}"
                              ) from None
    return peft_model


class AdapterSlots:
    """Maps payload keys to the live LoRA parameters of a PeftModel, so get/set are plain tensor copies."""

    def __init__(self, peft_model: Any) -> None:
        from peft import get_peft_model_state_dict

        keys = list(get_peft_model_state_dict(peft_model).keys())
        named = dict(peft_model.named_parameters())
        self.params: dict[str, torch.nn.Parameter] = {}
        for key in keys:
            # payload key "...q_proj.lora_A.weight" <-> parameter "...q_proj.lora_A.default.weight"
            live = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
            if live not in named:
                raise RuntimeError(f"cannot map adapter key {key!r} to a parameter")
            self.params[key] = named[live]

    def get(self) -> Params:
        """A CPU copy of the adapter payload."""
        return {k: p.detach().to("cpu", copy=True) for k, p in self.params.items()}

    @torch.no_grad()
    def set(self, params: Params) -> None:
        """Load a payload into the live parameters in place (keys and shapes must match)."""
        if params.keys() != self.params.keys():
            missing = sorted(self.params.keys() - params.keys())[:3]
            extra = sorted(params.keys() - self.params.keys())[:3]
            raise CheckpointError(f"adapter payload does not match the model: missing {missing}, unexpected {extra}")
        for k, p in self.params.items():
            src = params[k]
            if src.shape != p.shape:
                raise CheckpointError(f"adapter tensor {k}: shape {tuple(src.shape)}, model expects {tuple(p.shape)}")
            p.copy_(src)

    def trainable(self) -> list[torch.nn.Parameter]:
        return list(self.params.values())


def save_adapter(params: Params, path: str | Path, peft_config: Any, base_delta: Params | None = None) -> None:
    """Write a PEFT-format adapter directory atomically (temp dir + rename); a base delta goes beside it."""
    with staged_dir(Path(path)) as tmp:
        peft_config.save_pretrained(str(tmp))
        save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, str(tmp / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})
        if base_delta:
            from fedit.model.base_delta import save_base_delta

            save_base_delta(base_delta, tmp)


def load_adapter_params(path: str | Path) -> Params:
    path = Path(path)
    f = path / ADAPTER_WEIGHTS
    if not f.is_file():
        raise CheckpointError(f"{path}: not a PEFT adapter directory (no {ADAPTER_WEIGHTS})")
    try:
        return load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{f}: unreadable adapter weights ({e})") from None


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    f = Path(path) / ADAPTER_CONFIG
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a PEFT adapter directory (no {ADAPTER_CONFIG})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: invalid JSON ({e})") from None
