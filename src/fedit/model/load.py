"""Load a base model and tokenizer by hub name or local path ("tiny" = the shipped base), on a sensible device/dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedit.config import ModelConfig
from fedit.errors import ConfigError

TINY_PATH = Path(__file__).parent / "assets" / "tiny"


def resolve_model_path(name: str) -> str:
    """'tiny' -> the shipped base; anything else is passed to transformers (local dir or hub name)."""
    if name == "tiny":
        if not (TINY_PATH / "config.json").is_file():
            raise ConfigError(f"the shipped tiny model is missing from {TINY_PATH}; reinstall fedit")
        return str(TINY_PATH)
    return name


def pick_device(device: str = "auto") -> torch.device:
    """The torch device for a model.device setting; ConfigError for one this machine does not have."""
    if device != "auto":
        try:
            picked = torch.device(device)
        except RuntimeError as e:
            raise ConfigError(f"model.device: got {device!r}, expected auto, cpu, cuda, cuda:N or mps ({e})") from None
        _check_available(picked, device)
        return picked
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_available(device: torch.device, name: str) -> None:
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"model.device={name!r}: no CUDA GPU is available here (torch "
                              f"{torch.__version__}); use --device auto or cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"model.device={name!r}: this machine has {count} CUDA GPU(s), cuda:0 to "
                              f"cuda:{count - 1}")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"model.device={name!r}: Apple MPS is not available here; use --device auto or cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype the base is stored in. "auto": bf16 on CUDA (fp16 where bf16 is unsupported); on a CPU, bf16 where it
    has bf16 matrix units (AMX-BF16 or AVX512-BF16: training then runs under bf16 autocast with float32 LoRA, see
    fedit.model.precision) and float32 where it has not (there bf16 matmuls are emulated and slower than float32)."""
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ConfigError(f"model.dtype: got {dtype!r}, expected auto, float32, bfloat16 or float16") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        from fedit import env

        return torch.bfloat16 if env.bf16_matrix_units() else torch.float32
    return torch.float32  # mps


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load tokenizer {name!r}: {e}") from None
    if tok.pad_token_id is None:  # many causal LMs ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def quiet_transformers() -> None:
    """No download/loading progress bars or advisory warnings in fedit's own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


# ---- quantization (QLoRA) -------------------------------------------------------------------------------------

def check_quantization(quantization: str | None, device: torch.device) -> None:
    """ConfigError, before any work, for a 4bit/8bit request this machine cannot serve (no CUDA, no bitsandbytes)."""
    if not quantization:
        return
    if device.type != "cuda":
        raise ConfigError(f"model.quantization={quantization!r} needs a CUDA GPU (bitsandbytes); this run's device "
                          f"is {device}: drop --quantization or run on a GPU")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"model.quantization={quantization!r} needs bitsandbytes, which is not installed: "
                          "pip install 'fedit[gpu]'")


def bnb_config(quantization: str, compute_dtype: torch.dtype) -> Any:
    """The BitsAndBytesConfig of a quantized load: "4bit" is QLoRA's (NF4 weights, double quantization of the
    quantization constants, matmuls in `compute_dtype`: the run's dtype, bf16 on GPUs that have it, fp16 on
    the others); "8bit" is LLM.int8 (outlier threshold 6.0). Builds on CPU too (no bitsandbytes needed)."""
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=torch.uint8)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    raise ConfigError(f"model.quantization: got {quantization!r}, expected 4bit or 8bit")


def load_base(cfg: ModelConfig, max_len: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode with gradients off for the base weights. `max_len` (the longest row the model
    will see: the run's cutoff) picks the attention implementation when `cfg.attn_implementation` is unset
    (`fedit.model.precision.pick_attention`)."""
    from transformers import AutoModelForCausalLM

    from fedit.model.precision import pick_attention

    quiet_transformers()

    path = resolve_model_path(cfg.name)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    attn = pick_attention(cfg.attn_implementation, device, dtype, max_len)
    if attn:
        kwargs["attn_implementation"] = attn
    if cfg.quantization:
        check_quantization(cfg.quantization, device)
        kwargs["quantization_config"] = bnb_config(cfg.quantization, dtype)
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load model {cfg.name!r}: {e}") from None
    if not cfg.quantization:
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, load_tokenizer(cfg.name)
