"""bf16 autocast on CPU (fedit.model.precision): chosen by model.dtype="auto" only where the CPU has bf16 matrix units;
loss and LoRA gradients close to float32; LoRA weights, gradients, optimizer state and payload stay float32; runs
stay bit-identical at equal thread counts."""

from __future__ import annotations

import pytest
import torch

from fedit import env
from fedit.client.train import LocalTrainer, train_client
from fedit.config import ClientConfig, LoraConfig, ModelConfig
from fedit.data.records import Record
from fedit.data.templates import get_template
from fedit.data.tokenize import collate, tokenize_records
from fedit.model.load import load_base, pick_dtype
from fedit.model.lora import attach_lora
from fedit.model.loss import label_token_nll
from fedit.model.precision import autocast, autocast_dtype

# bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per value); through 4 layers and a softmax over the
# vocabulary the mean loss moves by well under 1% (measured on the tiny base: 0.13%); each LoRA gradient tensor by a
# few percent of its norm (measured: median 4.5%, worst 8.2%, cosine >= 0.9967), the backward pass rounding every
# activation gradient to bf16 as well.
LOSS_RTOL = 1e-2
GRAD_RTOL = 0.12  # ||g_bf16 - g_fp32||_F / ||g_fp32||_F, per LoRA tensor
GRAD_COS = 0.99  # cosine between the bf16 and float32 gradient, per LoRA tensor


def test_auto_picks_bf16_only_with_bf16_matrix_units() -> None:
    assert env.bf16_matrix_units({"avx512_bf16": True}) and env.bf16_matrix_units({"amx_bf16": True})
    assert not env.bf16_matrix_units({"avx2": True, "avx512f": True})
    want = torch.bfloat16 if env.bf16_matrix_units() else torch.float32
    assert pick_dtype("auto", torch.device("cpu")) == want
    assert pick_dtype("float32", torch.device("cpu")) == torch.float32  # an explicit dtype is never overridden


def _model(dtype: str):
    # the shipped tiny base (trained, 4 layers): a random micro model's logits are ~0 and its loss ln(V) in any dtype
    base, tok = load_base(ModelConfig(name="tiny", device="cpu", dtype=dtype))
    model = attach_lora(base, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make every A gradient 0: give B the same random values in both
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, tok


@pytest.fixture(scope="module")
def pair():
    return _model("float32"), _model("bfloat16")


def _batch(tok):
    recs = [Record(instruction=f"Name a fruit like {w}", response=f"{w} and {w} again, {w}.")
            for w in ["apple", "pear", "plum", "fig", "kiwi", "lime"]]
    data = tokenize_records(recs, get_template("alpaca-short", tok), tok)
    return data, collate(data, list(range(len(data))), tok.pad_token_id)


def _loss_and_grads(model, b) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    model.train()
    with autocast(model):
        nll, _ = label_token_nll(model, b["input_ids"], b["attention_mask"], b["labels"])
    loss = nll.sum() / len(nll)
    loss.backward()
    return float(loss), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_bf16_loss_and_gradients_close_to_fp32(pair) -> None:
    (m32, tok), (m16, _) = pair
    assert autocast_dtype(m32) is None and autocast_dtype(m16) == torch.bfloat16
    _, b = _batch(tok)
    l32, g32 = _loss_and_grads(m32, b)
    l16, g16 = _loss_and_grads(m16, b)
    assert l16 != l32  # bf16 really ran
    assert abs(l16 - l32) <= LOSS_RTOL * abs(l32)
    assert set(g16) == set(g32) and len(g32) > 0
    for n in g32:
        assert g16[n].dtype == torch.float32  # LoRA weights and their gradients stay float32 over a bf16 base
        err = float((g16[n] - g32[n]).norm() / g32[n].norm())
        cos = float(torch.nn.functional.cosine_similarity(g16[n].flatten(), g32[n].flatten(), 0))
        assert err <= GRAD_RTOL and cos >= GRAD_COS, (n, err, cos)


def test_bf16_base_keeps_lora_and_optimizer_in_fp32_and_is_bit_identical(pair) -> None:
    _, (m16, tok) = pair
    assert next(m16.parameters()).dtype == torch.bfloat16  # the frozen base (embedding) is stored in bf16
    trainer = LocalTrainer.for_model(m16, tok)
    data, _ = _batch(tok)
    init = trainer.slots.get()
    cfg = ClientConfig(local_steps=3, batch_size=4, micro_batch_size=2, lr=1e-2)
    a = train_client(trainer, init, data, cfg, client_id=1, round_idx=2, seed=3)
    assert all(v.dtype == torch.float32 for v in a.params.values())
    # AdamW's moments take their parameters' dtype: every trainable tensor is float32
    assert all(p.dtype == torch.float32 for p in m16.parameters() if p.requires_grad)
    b = train_client(trainer, init, data, cfg, client_id=1, round_idx=2, seed=3)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert not all(torch.equal(a.params[k], init[k]) for k in init)


def test_default_attention_is_eager_only_for_a_bf16_cpu_base_at_short_rows() -> None:
    from fedit.model.precision import EAGER_MAX_LEN, pick_attention

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert EAGER_MAX_LEN == 256
    assert pick_attention(None, cpu, torch.bfloat16, 256) == "eager"
    assert pick_attention(None, cpu, torch.bfloat16, 257) is None  # long rows: SDPA (measured faster from 512 on)
    assert pick_attention(None, cpu, torch.bfloat16, None) is None  # row length unknown (serving, export)
    assert pick_attention(None, cpu, torch.float32, 64) is None  # float32: SDPA is the faster one
    assert pick_attention(None, cuda, torch.bfloat16, 64) is None
    assert pick_attention("sdpa", cpu, torch.bfloat16, 64) == "sdpa"  # an explicit setting always wins


@pytest.mark.parametrize(("settings", "want"), [
    ({"model.dtype": "bfloat16", "data.cutoff_len": 64}, "eager"),
    ({"model.dtype": "bfloat16", "data.cutoff_len": 512}, "sdpa"),
    ({"model.dtype": "float32", "data.cutoff_len": 64}, "sdpa"),
    ({"model.dtype": "bfloat16", "data.cutoff_len": 64, "model.attn_implementation": "sdpa"}, "sdpa"),
])
def test_the_pipeline_loads_the_attention_pick_attention_picks(micro_model_dir, settings, want) -> None:
    from fedit.config import Config
    from fedit.pipeline import build_model

    cfg = Config().override({"model.name": str(micro_model_dir), "model.device": "cpu", **settings})
    assert build_model(cfg).model.get_base_model().config._attn_implementation == want


def test_eager_attention_under_bf16_autocast_is_as_close_to_float32_as_sdpa() -> None:
    b32, tok = load_base(ModelConfig(name="tiny", device="cpu", dtype="float32"), max_len=64)
    assert b32.config._attn_implementation == "sdpa"
    base, _ = load_base(ModelConfig(name="tiny", device="cpu", dtype="bfloat16"), max_len=64)
    assert base.config._attn_implementation == "eager"
    _, b = _batch(tok)
    with torch.no_grad():
        ref, _ = label_token_nll(b32, b["input_ids"], b["attention_mask"], b["labels"])
        with autocast(base):
            eager, _ = label_token_nll(base, b["input_ids"], b["attention_mask"], b["labels"])
            base.set_attn_implementation("sdpa")
            sdpa, _ = label_token_nll(base, b["input_ids"], b["attention_mask"], b["labels"])
    assert not torch.equal(eager, sdpa)  # two kernels really ran
    err = {k: float((v.float() - ref).abs().mean()) for k, v in (("eager", eager), ("sdpa", sdpa))}
    # per-token losses move by ~0.1 nat in bf16 either way (measured: eager 0.100, sdpa 0.095 on 53 tokens)
    assert err["eager"] <= 1.5 * err["sdpa"], err
    for v in (eager, sdpa):
        assert abs(float(v.float().mean() - ref.mean())) <= LOSS_RTOL * float(ref.mean())
