"""The GPU benchmark's CPU smoke mode: every case that needs no CUDA runs through fedit's loop (full-length,
gradient checkpointing, varied lengths with the hand loop, packing); NF4 is recorded as skipped; FLOPs by hand."""

from __future__ import annotations

import pytest
import torch

from fedit.bench import gpu


@pytest.fixture(scope="module")
def smoke() -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return gpu.run(smoke=True)
    finally:
        torch.set_num_threads(before)


def test_smoke_runs_every_cpu_case(smoke):
    by = {c["case"]: c for c in smoke["cases"]}
    assert list(by) == ["smoke/bf16/full", "smoke/bf16/ckpt/full", "smoke/bf16/varied", "smoke/bf16/packed",
                        "smoke/nf4/full"]
    if not torch.cuda.is_available():
        assert by["smoke/nf4/full"] == {"case": "smoke/nf4/full", "skipped": "needs CUDA and bitsandbytes"}
    for name in ("smoke/bf16/full", "smoke/bf16/ckpt/full", "smoke/bf16/varied", "smoke/bf16/packed"):
        c = by[name]
        assert "error" not in c and c["tokens_per_s"] > 0 and c["repeats"] == 1, c
    assert by["smoke/bf16/ckpt/full"]["gradient_checkpointing"] and by["smoke/bf16/packed"]["packing"]
    assert by["smoke/bf16/varied"]["fedit_vs_hand_loop"] > 0
    assert smoke["mfu"] is None and smoke["packing_speedup"] > 0 and smoke["gpu_throughput_ratio"] > 0


def test_flops_per_token_by_hand(smoke):
    # smoke shape: hidden 64, 2 layers, 4 heads of 16, 2 KV heads (k, v: 32 wide), MLP 128, vocab 512, untied
    per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128
    n_base = 2 * per_layer + 512 * 64  # + the LM head; the input embedding is a lookup
    n_lora = 2 * ((16 * 64 + 64 * 16) + (16 * 64 + 32 * 16))  # r16 on q (64 -> 64) and v (64 -> 32)
    full = next(c for c in smoke["cases"] if c["case"] == "smoke/bf16/full")
    assert full["n_base_matmul"] == n_base and full["n_lora"] == n_lora
    assert full["flops_per_token"] == 4 * n_base + 6 * n_lora + 6 * 2 * 64 * 64  # ctx = seq_len 64


def test_checkpointing_is_switched_off_after_its_case():
    model = gpu.build_model("smoke", "cpu", torch.float32, 64)
    from fedit.config import LoraConfig
    from fedit.model.lora import attach_lora

    peft_model = attach_lora(model, LoraConfig(r=2, dropout=0.0), seed=0)
    gpu.set_checkpointing(peft_model, True)
    assert model.is_gradient_checkpointing
    gpu.set_checkpointing(peft_model, False)
    assert not model.is_gradient_checkpointing
