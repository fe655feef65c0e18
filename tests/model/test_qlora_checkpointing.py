"""The GPU path's code that runs on CPU: QLoRA's BitsAndBytesConfig, the refusal of 4/8-bit without CUDA or
bitsandbytes before a run directory exists, k-bit preparation at attach time, and gradient checkpointing (same LoRA
gradients as without, and it does recompute)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fedit.config import Config, LoraConfig, ModelConfig
from fedit.errors import ConfigError
from fedit.model.load import bnb_config, check_quantization, load_base
from fedit.model.lora import AdapterSlots, attach_lora
from fedit.model.loss import label_token_nll


def test_4bit_is_qlora_nf4_double_quant_in_the_run_dtype():
    c = bnb_config("4bit", torch.bfloat16)
    assert c.load_in_4bit and not c.load_in_8bit
    assert c.bnb_4bit_quant_type == "nf4"
    assert c.bnb_4bit_use_double_quant is True
    assert c.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config("4bit", torch.float16).bnb_4bit_compute_dtype == torch.float16
    e = bnb_config("8bit", torch.bfloat16)
    assert e.load_in_8bit and not e.load_in_4bit and e.llm_int8_threshold == 6.0
    with pytest.raises(ConfigError, match="model.quantization"):
        bnb_config("3bit", torch.bfloat16)


def test_quantization_refused_without_cuda_or_bitsandbytes():
    check_quantization(None, torch.device("cpu"))  # nothing asked, nothing checked
    with pytest.raises(ConfigError, match=r"model.quantization='4bit' needs a CUDA GPU") as e:
        check_quantization("4bit", torch.device("cpu"))
    assert "\n" not in str(e.value)
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match="needs bitsandbytes"):
            check_quantization("8bit", torch.device("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_run_refuses_4bit_before_the_run_directory(tmp_path: Path):
    from fedit.pipeline import run

    out = tmp_path / "run"
    cfg = Config().override({"model.quantization": "4bit", "run.out": str(out)})
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        run(cfg)
    assert not out.exists()


def test_kbit_base_goes_through_peft_preparation(micro_model_dir: Path, monkeypatch):
    import peft

    calls: list[bool] = []
    real = peft.prepare_model_for_kbit_training

    def spy(model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=None, **kw):
        calls.append(use_gradient_checkpointing)
        assert gradient_checkpointing_kwargs == {"use_reentrant": False}
        return real(model, use_gradient_checkpointing, gradient_checkpointing_kwargs, **kw)

    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", spy)
    base, _ = load_base(ModelConfig(name=str(micro_model_dir), device="cpu", dtype="float32"))
    attach_lora(base, LoraConfig(r=2, dropout=0.0), seed=0)
    assert calls == []  # a plain base is not prepared
    base, _ = load_base(ModelConfig(name=str(micro_model_dir), device="cpu", dtype="float32"))
    base.is_loaded_in_4bit = True  # as bitsandbytes leaves a quantized base
    model = attach_lora(base, LoraConfig(r=2, dropout=0.0), seed=0, gradient_checkpointing=True)
    assert calls == [True]
    assert model.get_base_model().is_gradient_checkpointing


def _trained_grads(micro_model_dir: Path, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int, float]:
    base, _ = load_base(ModelConfig(name=str(micro_model_dir), device="cpu", dtype="float32"))
    model = attach_lora(base, LoraConfig(r=4, dropout=0.0), seed=3, gradient_checkpointing=checkpointing)
    slots = AdapterSlots(model)
    g = torch.Generator().manual_seed(0)
    slots.set({k: torch.randn(v.shape, generator=g) * 0.1 for k, v in slots.get().items()})  # B != 0: A learns too
    calls = [0]
    mlp = model.get_base_model().model.layers[0].mlp
    # a pre-hook: the recompute stops as soon as it has every saved tensor back, before the MLP's forward returns
    mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    ids = torch.randint(4, base.config.vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100
    model.train()
    nll, _ = label_token_nll(model, ids, torch.ones_like(ids), labels)
    nll.mean().backward()
    return {k: p.grad.clone() for k, p in slots.params.items()}, calls[0], float(nll.mean().detach())


def test_gradient_checkpointing_same_grads_and_recomputes(micro_model_dir: Path):
    plain, plain_calls, plain_loss = _trained_grads(micro_model_dir, False)
    ckpt, ckpt_calls, ckpt_loss = _trained_grads(micro_model_dir, True)
    assert (plain_calls, ckpt_calls) == (1, 2)  # the layer's forward runs again in the backward pass
    assert ckpt_loss == pytest.approx(plain_loss, rel=1e-6)
    assert any(float(g.abs().max()) > 0 for k, g in plain.items() if "lora_A" in k)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)
