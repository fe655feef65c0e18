"""Packing inside local training: batch sizes count examples, so a packed run trains the same examples per step and
ends with the adapter of the unpacked run (float32 tolerance), with fewer tokens through the model."""

from __future__ import annotations

from pathlib import Path

import torch

from fedit.client.train import LocalTrainer, train_client
from fedit.config import ClientConfig, LoraConfig, ModelConfig
from fedit.data.tokenize import IGNORE_INDEX, TokenizedData
from fedit.model.load import load_base
from fedit.model.lora import attach_lora


def _data(vocab: int) -> TokenizedData:
    g = torch.Generator().manual_seed(5)
    ids, labels = [], []
    for i in range(24):
        n = 6 + (i * 7) % 30
        x = torch.randint(4, vocab, (n,), generator=g).tolist()
        ids.append(x)
        labels.append([IGNORE_INDEX] * (n // 2) + x[n // 2:])
    return TokenizedData(ids, labels, [None] * len(ids))


def test_packed_training_equals_unpacked(micro_model_dir: Path):
    base, tok = load_base(ModelConfig(name=str(micro_model_dir), device="cpu", dtype="float32"))
    model = attach_lora(base, LoraConfig(r=4, dropout=0.0), seed=0)
    trainer = LocalTrainer.for_model(model, tok)
    data = _data(base.config.vocab_size)
    cfg = ClientConfig(local_steps=3, local_epochs=None, batch_size=8, micro_batch_size=4, lr=1e-2,
                       group_by_length=False)
    plain = train_client(trainer, trainer.init, data, cfg, client_id=0, round_idx=0, seed=0)
    trainer.pack_len = 64
    packed = train_client(trainer, trainer.init, data, cfg, client_id=0, round_idx=0, seed=0)
    assert packed.metrics["label_tokens"] == plain.metrics["label_tokens"]
    assert packed.metrics["tokens"] == plain.metrics["tokens"]  # real tokens: the same examples
    assert abs(packed.metrics["loss"] - plain.metrics["loss"]) < 1e-5
    assert any(float(v.abs().max()) > 0 for v in plain.params.values())
    for k, v in plain.params.items():
        torch.testing.assert_close(packed.params[k], v, rtol=1e-4, atol=1e-6, msg=k)
