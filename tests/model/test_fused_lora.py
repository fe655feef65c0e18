"""fedit.model.fused_lora: a LoRA linear layer's forward and backward as one autograd function. Checked against a
case worked by hand, against the formula in float64 with autograd, against peft's own forward on the same masks
(the same draws of the random stream), under bf16 autocast against float32; the fallbacks to peft's forward;
swapping the forward in and out; `lora.kernel` checked before any work."""

from __future__ import annotations

import pytest
import torch

import fedit.model.fused_lora as fl
from fedit.config import Config, LoraConfig
from fedit.model.dropout import MaskDropout, set_lora_dropout
from fedit.model.fused_lora import FusedLoraLinear, kernel_of, resolve_kernel, set_lora_kernel


def test_a_case_worked_by_hand() -> None:
    # x = [1, 2], W = [[1, 0]], b = [0.5], A = [[1, 1]], B = [[2]], c = 0.5, the second element dropped:
    # x_d = [1, 0], h = x_d A^T = 1, y = x W^T + b + c h B^T = 1 + 0.5 + 0.5 * 1 * 2 = 2.5
    # with g = 1: g_h = c g B = 1, dB = c g h = 0.5, dA = g_h x_d = [1, 0], dx = g W + mask(g_h A) = [1, 0] + [1, 0]
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    w, bias = torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])
    a = torch.tensor([[1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[2.0]], requires_grad=True)
    keep = torch.tensor([[True, False]])
    y = FusedLoraLinear.apply(x, w, bias, a, b, keep, 0.5, torch.float32)
    assert y.tolist() == [[2.5]]
    y.sum().backward()
    assert b.grad.tolist() == [[0.5]] and a.grad.tolist() == [[1.0, 0.0]] and x.grad.tolist() == [[2.0, 0.0]]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("with_drop", [True, False])
def test_forward_and_gradients_equal_the_formula_in_float64(with_bias, with_drop) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64) if with_bias else None
    a = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(2, 3, 6, generator=g) >= 0.3 if with_drop else None
    gy = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    c = 0.7
    y = FusedLoraLinear.apply(x, w, bias, a, b, keep, c, torch.float64)
    grads = torch.autograd.grad(y, (x, a, b), gy)
    xd = x if keep is None else x * keep
    want = x @ w.T + (0 if bias is None else bias) + c * (xd @ a.T) @ b.T
    wgrads = torch.autograd.grad(want, (x, a, b), gy)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    for got, exp in zip(grads, wgrads, strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)
    if keep is not None:
        assert keep.any() and (~keep).any()


def _peft(dropout: float, bias: bool = True, seed: int = 0):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(seed)
    lin = torch.nn.Sequential(torch.nn.Linear(8, 12, bias=bias), torch.nn.ReLU(), torch.nn.Linear(12, 4))
    model = get_peft_model(lin, PeftLoraConfig(r=3, lora_alpha=6, lora_dropout=dropout, target_modules=["0", "2"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero, which would leave A's gradient zero and the check blind
            torch.nn.init.normal_(p, std=0.5)
    set_lora_dropout(model, "fast")
    return model


def _step(model, x: torch.Tensor, seed: int):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = model(x)
    (y * torch.arange(1, y.shape[-1] + 1)).sum().backward()
    state = torch.get_rng_state()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return y.detach(), grads, x.grad, state


@pytest.mark.parametrize("train", [True, False])
def test_equal_to_peft_on_the_same_masks(train) -> None:
    model = _peft(0.3)
    model.train(train)
    x = torch.randn(5, 7, 8)
    assert set_lora_kernel(model, "peft") == 2
    y0, g0, gx0, rng0 = _step(model, x, 11)
    assert set_lora_kernel(model, "fused") == 2 and kernel_of(model) == "fused"
    y1, g1, gx1, rng1 = _step(model, x, 11)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys() and any("lora_A" in k for k in g1)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-5)
    assert torch.equal(rng0, rng1)  # the same draws of the random stream: same masks, and what follows is unchanged
    if train:  # the masks matter: another seed gives other outputs
        assert not torch.allclose(_step(model, x, 12)[0], y1)


def test_under_bf16_autocast_it_stays_as_close_to_float32_as_peft() -> None:
    model = _peft(0.0, seed=3)
    model.train()
    x = torch.randn(16, 8, 8)
    set_lora_kernel(model, "peft")
    ref_y, ref_g, _, _ = _step(model, x, 0)
    errs = {}
    for kernel in ("peft", "fused"):
        set_lora_kernel(model, kernel)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, g, _, _ = _step(model, x, 0)
        assert y.dtype == torch.bfloat16 and all(v.dtype == torch.float32 for v in g.values())
        errs[kernel] = max([((y.float() - ref_y).norm() / ref_y.norm()).item()]
                           + [((g[k] - ref_g[k]).norm() / ref_g[k].norm()).item() for k in ref_g])
    assert 0 < errs["fused"] < 0.02
    assert errs["fused"] <= 1.5 * errs["peft"]


def test_calls_it_cannot_fuse_go_to_peft(monkeypatch) -> None:
    calls = []
    real = FusedLoraLinear.apply
    monkeypatch.setattr(fl.FusedLoraLinear, "apply", lambda *a: calls.append(1) or real(*a))
    model = _peft(0.2)
    set_lora_kernel(model, "fused")
    x = torch.randn(3, 8)
    model.train()
    model(x)
    assert len(calls) == 2
    with model.disable_adapter():  # disabled adapters: the base alone
        assert torch.equal(model(x), model.get_base_model()(x))
    assert len(calls) == 2
    set_lora_dropout(model, "torch")  # peft's nn.Dropout in training: peft's forward draws its masks
    model(x)
    assert len(calls) == 2
    model.eval()  # ... but without dropout in eval the fused path serves
    model(x)
    assert len(calls) == 4
    model.merge_adapter()  # merged weights: the base layer alone
    merged = model(x)
    assert len(calls) == 4
    model.unmerge_adapter()
    torch.testing.assert_close(model(x), merged, rtol=1e-5, atol=1e-5)
    assert len(calls) == 6


def test_set_lora_kernel_both_ways_and_auto_is_fused_on_cpu_only() -> None:
    model = _peft(0.1)
    assert kernel_of(model) == "peft"
    assert set_lora_kernel(model, "fused") == 2 and kernel_of(model) == "fused"
    assert set_lora_kernel(model, "fused") == 2  # idempotent
    assert set_lora_kernel(model, "peft") == 2 and kernel_of(model) == "peft"
    assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(ValueError, match="fused or peft"):
        set_lora_kernel(model, "auto")
    assert resolve_kernel("auto", "cpu") == "fused"
    assert resolve_kernel("auto", torch.device("cuda", 0)) == "peft"
    assert resolve_kernel("peft", "cpu") == "peft"
    assert LoraConfig().kernel == "auto"
    with pytest.raises(ValueError, match="lora.kernel: got 'triton'"):
        resolve_kernel("triton", "cpu")


def test_the_pipeline_fuses_on_cpu_unless_asked_and_training_matches_peft(micro_model_dir) -> None:
    from fedit.client.train import train_client
    from fedit.config import ClientConfig
    from fedit.data.records import Record
    from fedit.data.tokenize import tokenize_records
    from fedit.pipeline import build_model

    cfg = Config().override({"model.name": str(micro_model_dir), "model.device": "cpu", "model.dtype": "float32",
                           "lora.dropout": 0.2})  # float32: equal up to rounding (bf16 closeness: the autocast test)
    recs = [Record(instruction=f"Say {w} twice", response=f"{w} {w}") for w in "abcdefghijkl"]
    ccfg = ClientConfig(local_steps=3, batch_size=4, micro_batch_size=2, lr=1e-2)
    out = {}
    for kernel in ("auto", "peft"):
        bundle = build_model(cfg.override({"lora.kernel": kernel}))
        assert kernel_of(bundle.model) == ("fused" if kernel == "auto" else "peft")
        assert {type(m.lora_dropout["default"]) for m in bundle.model.modules() if hasattr(m, "lora_A")} == {
            MaskDropout}
        data = tokenize_records(recs, bundle.template, bundle.tokenizer, 64)
        init = bundle.trainer.slots.get()
        out[kernel] = [train_client(bundle.trainer, init, data, ccfg, client_id=0, round_idx=1, seed=s).params
                       for s in (5, 5)]
    fused, peft = out["auto"], out["peft"]
    assert all(torch.equal(fused[0][k], fused[1][k]) for k in fused[0])  # bit-identical for a seed
    moved = 0
    for k in peft[0]:
        torch.testing.assert_close(fused[0][k], peft[0][k], rtol=1e-4, atol=1e-5)  # the same training, rounding aside
        moved += not torch.equal(peft[0][k], init[k])
    assert moved > 0
