"""LoRA attach, payload get/set in place, PEFT-format save that peft itself loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.config import LoraConfig, ModelConfig
from fedit.errors import CheckpointError
from fedit.model.load import load_base
from fedit.model.lora import AdapterSlots, attach_lora, load_adapter_params, peft_lora_config, save_adapter


@pytest.fixture
def peft_model(micro_model_dir: Path):
    base, _ = load_base(ModelConfig(name=str(micro_model_dir), device="cpu"))
    return attach_lora(base, LoraConfig(r=4, alpha=8, dropout=0.0, targets=["auto"]), seed=1)


def test_payload_is_adapter_only_and_seeded(peft_model, micro_model_dir: Path) -> None:
    slots = AdapterSlots(peft_model)
    p = slots.get()
    assert p and all("lora_" in k for k in p)
    assert {k.split(".")[-3] for k in p} == {"q_proj", "v_proj"}  # the llama default
    assert all(torch.count_nonzero(v) == 0 for k, v in p.items() if "lora_B" in k)  # B = 0: the base model
    base2, _ = load_base(ModelConfig(name=str(micro_model_dir), device="cpu"))
    again = AdapterSlots(attach_lora(base2, LoraConfig(r=4, alpha=8, dropout=0.0, targets=["auto"]), seed=1)).get()
    assert all(torch.equal(p[k], again[k]) for k in p)


def test_set_changes_outputs_in_place_and_checks_shapes(peft_model) -> None:
    slots = AdapterSlots(peft_model)
    ids = torch.tensor([[1, 5, 7, 9]])
    before = peft_model(input_ids=ids).logits
    new = {k: torch.randn_like(v) for k, v in slots.get().items()}
    slots.set(new)
    assert not torch.allclose(before, peft_model(input_ids=ids).logits)
    assert all(torch.equal(slots.get()[k], new[k]) for k in new)
    with pytest.raises(CheckpointError, match="shape"):
        slots.set({k: torch.zeros(3) for k in new})
    with pytest.raises(CheckpointError, match="does not match"):
        slots.set({"nope": torch.zeros(1)})


def test_saved_adapter_loads_with_peft(peft_model, micro_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    slots = AdapterSlots(peft_model)
    params = {k: torch.randn_like(v) for k, v in slots.get().items()}
    cfg = peft_lora_config(LoraConfig(r=4, alpha=8, dropout=0.0), ["q_proj", "v_proj"], str(micro_model_dir))
    save_adapter(params, tmp_path / "adapter", cfg)
    assert not list(tmp_path.glob(".tmp-*"))
    loaded = load_adapter_params(tmp_path / "adapter")
    assert all(torch.equal(loaded[k], params[k]) for k in params)
    base, _ = load_base(ModelConfig(name=str(micro_model_dir), device="cpu"))
    pm = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    slots.set(params)
    ids = torch.tensor([[1, 5, 7, 9]])
    peft_model.eval()
    assert torch.allclose(pm(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-6)
    with pytest.raises(CheckpointError, match="not a PEFT adapter"):
        load_adapter_params(tmp_path)


def test_default_targets_are_all_linear(micro_model_dir: Path) -> None:
    base, _ = load_base(ModelConfig(name=str(micro_model_dir), device="cpu"))
    p = AdapterSlots(attach_lora(base, LoraConfig(), seed=0)).get()
    assert {k.split(".")[-3] for k in p} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}
