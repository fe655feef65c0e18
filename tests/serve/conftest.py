"""Fixtures for serving tests: a fake run directory whose adapters have random non-zero LoRA B weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_run(model_dir: Path, run_dir: Path, rounds: int = 2, template: str = "alpaca-short", scale: float = 0.5) -> Path:
    """A run dir (config.toml, round_NNNN/adapter, final/) with distinct random adapters on `model_dir`."""
    from fedit.config import Config, LoraConfig
    from fedit.model.lora import AdapterSlots, attach_lora, peft_lora_config, save_adapter, target_modules
    from fedit.server.checkpoint import atomic_write_json, atomic_write_text, round_dir_name
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, alpha=8, dropout=0.0)
    model = attach_lora(base, lora, seed=0, base_name=str(model_dir))
    slots = AdapterSlots(model)
    peft_config = peft_lora_config(lora, target_modules(base, None), str(model_dir))
    cfg = Config().override({"model.name": str(model_dir), "data.template": template, "run.rounds": rounds})
    run_dir.mkdir(parents=True)
    atomic_write_text(run_dir / "config.toml", cfg.to_toml())
    gen = torch.Generator().manual_seed(1)
    params = {}
    for r in range(1, rounds + 1):
        # B = 0 at init would make the adapter a no-op; random B makes every round a different model
        params = {k: (torch.randn(v.shape, generator=gen) * scale if ".lora_B." in k else v)
                  for k, v in slots.get().items()}
        save_adapter(params, run_dir / round_dir_name(r) / "adapter", peft_config)
        atomic_write_json(run_dir / round_dir_name(r) / "metrics.json", {"round": r})
    save_adapter(params, run_dir / "final", peft_config)
    return run_dir


@pytest.fixture(scope="session")
def micro_run(micro_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(micro_model_dir, tmp_path_factory.mktemp("serve") / "run")
