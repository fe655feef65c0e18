"""Merge a LoRA adapter into its base and save a standalone model + tokenizer (loadable without peft or fedit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedit.atomic import staged_dir, write_json
from fedit.errors import ConfigError
from fedit.outdir import check_output_dir, write_marker
from fedit.serve.session import AdapterSource


def export_merged(source: AdapterSource, out: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write `out/` with config.json, model.safetensors, the tokenizer (chat template included), fedit_export.json
    and README.md (its model card).

    Merging happens in float32 on the CPU (exact W + scale * B @ A), then the weights are cast to `dtype`. A base
    delta saved beside the adapter (fedex runs) is added to the base first: W0 + delta + scale * B @ A.
    """
    import torch
    from peft import PeftModel

    from fedit.config import ModelConfig
    from fedit.model.base_delta import apply_saved_base_delta
    from fedit.model.card import write_merged_card
    from fedit.model.load import load_base, pick_dtype

    if source.path is None:
        raise ConfigError("export needs an adapter, not the bare base")
    out = Path(out)
    check_output_dir(out, overwrite, "--out")  # only a fedit output may be replaced, and only once this one is done
    target = pick_dtype(dtype, torch.device("cpu"))
    base, tokenizer = load_base(ModelConfig(name=source.base, device="cpu", dtype="float32"))
    try:
        peft_model = PeftModel.from_pretrained(base, str(source.path), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"--adapter {source.path}: cannot load it onto {source.base!r} ({e})") from None
    with_delta = apply_saved_base_delta(peft_model, source.path) is not None  # fedex: W0 + delta first
    merged: Any = peft_model.merge_and_unload()
    merged.to(target)
    meta = {"merged_from": source.info(), "dtype": str(target).removeprefix("torch."), "base_delta": with_delta,
            "note": "LoRA merged into the base weights" + (" with the adapter's base delta" if with_delta else "")
                    + "; load with AutoModelForCausalLM.from_pretrained"}
    with staged_dir(out) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "fedit_export.json", meta)
        write_merged_card(tmp, source, meta, out.name)  # README.md, the model card (library_name transformers)
        write_marker(tmp, "export")
    return out
