"""fedit.model.dropout: LoRA dropout masks from 16-bit slices of 64-bit random words, checked against masks worked
out bit by bit in Python from the same random words; its drop rate, mean and gradient; swapping peft's nn.Dropout
in and out; `lora.dropout_impl` checked before any work."""

from __future__ import annotations

import pytest
import torch

from fedit.config import Config, LoraConfig
from fedit.errors import ConfigError
from fedit.model.dropout import MaskDropout, resolve_dropout_impl, set_lora_dropout


def _hand_keep(seed: int, n: int, p: float) -> list[bool]:
    """keep_i for n elements, from the words torch's generator gives after manual_seed(seed), sliced by hand."""
    torch.manual_seed(seed)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2 ** 63), None).tolist()
    k = round(p * 65536)
    keep = []
    for w in words:
        w &= (1 << 64) - 1  # two's complement as an unsigned 64-bit word
        for j in range(4):  # little-endian: element 4i + j is bits 16j..16j+15 of word i
            u = (w >> (16 * j)) & 0xFFFF
            u = u - 65536 if u >= 32768 else u  # as int16
            keep.append(u >= k - 32768)
    return keep[:n]


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 8)])  # 105 elements: the last word only partly used
def test_mask_and_scale_match_the_hand_computed_mask(shape) -> None:
    p = 0.3
    x = torch.arange(1, 1 + torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    drop = MaskDropout(p).train()
    torch.manual_seed(7)
    y = drop(x)
    keep = torch.tensor(_hand_keep(7, x.numel(), p)).reshape(shape)
    k = round(p * 65536)  # 19661
    assert drop.drops == k and drop.scale == pytest.approx(65536 / (65536 - 19661))
    want = torch.where(keep, x * (65536 / (65536 - k)), torch.zeros(()))
    assert torch.equal(y, want)
    assert 0 < int((~keep).sum()) < x.numel()  # some dropped, some kept: the check can fail


def test_drop_rate_mean_and_every_slice_position() -> None:
    p = 0.05
    drop = MaskDropout(p).train()
    torch.manual_seed(0)
    n = 1 << 20
    y = drop(torch.ones(n))
    dropped = (y == 0).float()
    q = 3277 / 65536  # p rounded to a multiple of 2^-16
    sigma = (q * (1 - q) / n) ** 0.5
    assert abs(dropped.mean().item() - q) < 5 * sigma
    assert abs(y.double().mean().item() - 1.0) < 5 * sigma / (1 - q)  # E[y] = x: inverted dropout is unbiased
    for j in range(4):  # each 16-bit slice of the words drops at the same rate
        assert abs(dropped[j::4].mean().item() - q) < 5 * 2 * sigma
    # successive calls draw new masks
    assert not torch.equal(drop(torch.ones(64)), drop(torch.ones(64)))


def test_gradient_is_the_mask_times_the_scale_and_dtype_is_kept() -> None:
    drop = MaskDropout(0.5).train()
    x = torch.randn(4, 33, dtype=torch.bfloat16, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    assert y.dtype == torch.bfloat16
    g = torch.randn_like(y)
    y.backward(g)
    keep = torch.tensor(_hand_keep(3, x.numel(), 0.5)).reshape(x.shape)
    assert torch.equal(x.grad, torch.where(keep, g * 2.0, torch.zeros((), dtype=torch.bfloat16)))


def test_eval_mode_and_zero_p_are_the_identity_and_bad_p_is_refused() -> None:
    x = torch.randn(10)
    assert MaskDropout(0.5).eval()(x) is x
    assert MaskDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MaskDropout(1.0)


def _peft(dropout: float):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lin = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    return get_peft_model(lin, PeftLoraConfig(r=2, lora_alpha=4, lora_dropout=dropout, target_modules=["0", "2"]))


def test_set_lora_dropout_swaps_peft_dropout_both_ways() -> None:
    model = _peft(0.1)
    model.train()
    assert set_lora_dropout(model, "fast") == 2
    drops = [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_A")]
    assert all(isinstance(d, MaskDropout) and d.p == 0.1 and d.training for d in drops)
    assert set_lora_dropout(model, "fast") == 2  # idempotent
    assert set_lora_dropout(model, "torch") == 2
    drops = [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_A")]
    assert all(type(d) is torch.nn.Dropout and d.p == 0.1 for d in drops)
    assert set_lora_dropout(_peft(0.0), "fast") == 0  # p = 0: peft's Identity stays
    with pytest.raises(ValueError, match="fast or torch"):
        set_lora_dropout(model, "auto")


def test_auto_is_fast_on_cpu_only() -> None:
    assert resolve_dropout_impl("auto", "cpu") == "fast"
    assert resolve_dropout_impl("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_dropout_impl("torch", "cpu") == "torch" and resolve_dropout_impl("fast", "cuda") == "fast"
    assert LoraConfig().dropout_impl == "auto"


@pytest.mark.parametrize(("key", "bad", "expected"), [("lora.dropout_impl", "philox", "auto, fast, torch"),
                                                         ("lora.kernel", "triton", "auto, peft")])
def test_a_bad_cpu_speed_option_is_refused_before_a_run_directory_exists(tmp_path, key, bad, expected) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    with pytest.raises(ConfigError, match=rf"{key}: got '{bad}', expected {expected}"):
        Config().override({key: bad}).validate()
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--out", str(out), "--set", f"{key}={bad}"])
    assert res.exit_code != 0 and key in res.output
    assert not out.exists()


def test_the_default_pipeline_uses_fast_masks_on_cpu_and_torch_when_asked(micro_model_dir) -> None:
    from fedit.pipeline import build_model

    cfg = Config().override({"model.name": str(micro_model_dir), "model.device": "cpu"})
    kinds = {type(m.lora_dropout["default"]) for m in build_model(cfg).model.modules() if hasattr(m, "lora_A")}
    assert kinds == {MaskDropout}
    cfg = cfg.override({"lora.dropout_impl": "torch"})
    kinds = {type(m.lora_dropout["default"]) for m in build_model(cfg).model.modules() if hasattr(m, "lora_A")}
    assert kinds == {torch.nn.Dropout}


def test_training_with_fast_masks_is_bit_identical_for_a_seed_and_differs_across_seeds(micro_model_dir) -> None:
    from fedit.client.train import train_client
    from fedit.config import ClientConfig
    from fedit.data.records import Record
    from fedit.data.tokenize import tokenize_records
    from fedit.pipeline import build_model

    cfg = Config().override({"model.name": str(micro_model_dir), "model.device": "cpu", "lora.dropout": 0.2})
    bundle = build_model(cfg)
    recs = [Record(instruction=f"Say {w} twice", response=f"{w} {w}") for w in "abcdefghijkl"]
    data = tokenize_records(recs, bundle.template, bundle.tokenizer, 64)
    init = bundle.trainer.slots.get()
    ccfg = ClientConfig(local_steps=3, batch_size=4, micro_batch_size=4, lr=1e-2)
    a = train_client(bundle.trainer, init, data, ccfg, client_id=0, round_idx=1, seed=5)
    b = train_client(bundle.trainer, init, data, ccfg, client_id=0, round_idx=1, seed=5)
    c = train_client(bundle.trainer, init, data, ccfg, client_id=0, round_idx=1, seed=6)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert not all(torch.equal(a.params[k], c.params[k]) for k in a.params)
