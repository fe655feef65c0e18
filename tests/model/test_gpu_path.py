"""The GPU path on a GPU (marked gpu: never in CI, run where a CUDA device and bitsandbytes exist): a real NF4
load of the micro model through load_base, k-bit preparation, checkpointing and a few packed training steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fedit.config import ClientConfig, LoraConfig, ModelConfig
from fedit.data.tokenize import IGNORE_INDEX, TokenizedData

pytestmark = pytest.mark.gpu
needs_bnb = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                               reason="needs CUDA and bitsandbytes")


def _data() -> TokenizedData:
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(4, 300, (n,), generator=g).tolist() for n in (12, 30, 7, 21, 16, 9, 25, 5)]
    return TokenizedData(ids, [[IGNORE_INDEX] * 3 + x[3:] for x in ids], [None] * len(ids))


@needs_bnb
@pytest.mark.parametrize("checkpointing", [False, True])
def test_qlora_nf4_trains(micro_model_dir: Path, checkpointing: bool):
    import bitsandbytes as bnb

    from fedit.client.train import LocalTrainer, train_client
    from fedit.model.load import load_base
    from fedit.model.lora import attach_lora

    base, tok = load_base(ModelConfig(name=str(micro_model_dir), device="cuda", quantization="4bit"))
    assert base.is_loaded_in_4bit
    q = base.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_type == "nf4" and q.weight.compress_statistics
    assert q.compute_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    model = attach_lora(base, LoraConfig(r=4, dropout=0.0), seed=0, gradient_checkpointing=checkpointing)
    assert model.get_base_model().is_gradient_checkpointing == checkpointing
    trainer = LocalTrainer.for_model(model, tok)
    trainer.pack_len = 64
    cfg = ClientConfig(local_steps=3, local_epochs=None, batch_size=4, micro_batch_size=4, lr=1e-3)
    u = train_client(trainer, trainer.init, _data(), cfg, client_id=0, round_idx=0, seed=0)
    assert torch.isfinite(torch.tensor(u.metrics["loss"]))
    assert any(float(v.abs().max()) > 0 for k, v in u.params.items() if "lora_B" in k)


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
                    reason="needs CUDA and flash-attn")
def test_packed_flash_attention_matches_one_by_one(micro_model_dir: Path):
    from transformers import AutoModelForCausalLM

    from fedit.data.packing import collate_packed
    from fedit.data.tokenize import collate
    from fedit.model.loss import label_token_nll, packed_attention

    model = AutoModelForCausalLM.from_pretrained(micro_model_dir, dtype=torch.bfloat16,
                                                 attn_implementation="flash_attention_2").cuda()
    data = _data()
    packed = {k: v.cuda() for k, v in collate_packed(data, range(len(data)), 0, 64).items()}
    assert packed_attention(model, packed["position_ids"]) is None  # varlen through position ids
    nll, _ = label_token_nll(model, packed["input_ids"], packed["attention_mask"], packed["labels"],
                             packed["position_ids"])
    ref = sum(float(label_token_nll(model, *(b[k].cuda() for k in ("input_ids", "attention_mask", "labels")))[0]
                    .sum()) for b in (collate(data, [i], 0) for i in range(len(data))))
    assert abs(float(nll.sum()) - ref) < 2e-2 * max(1.0, abs(ref))  # bf16
