"""FedEx-LoRA (`fedex`): A and B averaged with p_k, the residual folded into the base in each weight's own layout.

Hand values (docs: /work/shared/notes/algorithms.md C.2, recomputed here):
- symmetric, p = 1/2: B1 = [1,0]^T, A1 = [1,0], B2 = [0,1]^T, A2 = [0,1]: sum p B A = I/2, B_bar A_bar = 1/4 ones,
  R = [[1/4, -1/4], [-1/4, 1/4]];
- asymmetric, p = 1/2: A1 = [1,1] instead: sum p B A = [[1/2,1/2],[0,1/2]], B_bar = [1/2,1/2]^T, A_bar = [1/2,1],
  B_bar A_bar = [[1/4,1/2],[1/4,1/2]], R = [[1/4,0],[-1/4,0]] (R^T = [[1/4,-1/4],[0,0]] differs: the transposition
  bug shows);
- the same with n = (3, 1): sum p B A = [[3/4,3/4],[0,1/4]], B_bar = [3/4,1/4]^T, A_bar = [3/4,1],
  B_bar A_bar = [[9/16,3/4],[3/16,1/4]], R = [[3/16,0],[-3/16,0]];
- non-square (d_out 3, d_in 2), p = 1/2: B1 = [1,0,2]^T, A1 = [1,1], B2 = [0,1,0]^T, A2 = [2,0]:
  sum p B A = [[1/2,1/2],[1,0],[1,1]], B_bar = [1/2,1/2,1]^T, A_bar = [3/2,1/2],
  B_bar A_bar = [[3/4,1/4],[3/4,1/4],[3/2,1/2]], R = [[-1/4,1/4],[1/4,-1/4],[-1/2,1/2]].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from fedit.errors import AggregationError, ConfigError
from fedit.model.base_delta import BaseWeights, LoraModule, ModelFacts, model_facts
from fedit.strategies import STRATEGIES, RoundContext
from fedit.strategies.fedex import FedExLoRA
from fedit.types import ClientUpdate

CTX = RoundContext(round=1, seed=0, num_clients=2, sampled=(0, 1))
A, B = "base_model.model.m.lora_A.weight", "base_model.model.m.lora_B.weight"


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def fedex(scaling: float = 1.0, fan_in_fan_out: bool = False) -> FedExLoRA:
    s = FedExLoRA()
    s.bind_model(ModelFacts({"base_model.model.m": LoraModule("m.weight", scaling, fan_in_fan_out)}))
    return s


def two(a1, b1, a2, b2, n=(1, 1)) -> list[ClientUpdate]:
    return [ClientUpdate(0, {A: t(a1), B: t(b1)}, n[0]), ClientUpdate(1, {A: t(a2), B: t(b2)}, n[1])]


def glob(r: int, d_out: int, d_in: int) -> dict[str, torch.Tensor]:
    return {A: torch.zeros(r, d_in, dtype=torch.float64), B: torch.zeros(d_out, r, dtype=torch.float64)}


def test_symmetric_case_by_hand_and_exactness() -> None:
    ups = two([[1, 0]], [[1], [0]], [[0, 1]], [[0], [1]])
    out = fedex(scaling=2.0).aggregate(CTX, glob(1, 2, 2), ups, {})
    r = t([[0.25, -0.25], [-0.25, 0.25]])
    assert torch.allclose(out.base_delta["m.weight"].double(), 2.0 * r)
    assert torch.equal(out.params[A], t([[0.5, 0.5]])) and torch.equal(out.params[B], t([[0.5], [0.5]]))
    w0 = t([[3, 1], [4, 1]])
    merged = w0 + out.base_delta["m.weight"].double() + 2.0 * out.params[B] @ out.params[A]
    assert torch.allclose(merged, w0 + 2.0 * 0.5 * torch.eye(2, dtype=torch.float64))
    assert out.metrics["residual_norm"] == pytest.approx(2.0 * 0.5)  # ||2R||_F = 2 * sqrt(4/16)


def test_asymmetric_case_catches_the_transposition() -> None:
    ups = two([[1, 1]], [[1], [0]], [[0, 1]], [[0], [1]])
    linear = fedex().aggregate(CTX, glob(1, 2, 2), ups, {}).base_delta["m.weight"]
    assert torch.allclose(linear.double(), t([[0.25, 0], [-0.25, 0]]))
    conv = fedex(fan_in_fan_out=True).aggregate(CTX, glob(1, 2, 2), ups, {}).base_delta["m.weight"]
    assert torch.allclose(conv.double(), t([[0.25, -0.25], [0, 0]]))  # stored (in, out): R^T


def test_unequal_examples_weight_the_means_and_the_residual() -> None:
    ups = two([[1, 1]], [[1], [0]], [[0, 1]], [[0], [1]], n=(3, 1))
    out = fedex().aggregate(CTX, glob(1, 2, 2), ups, {})
    assert torch.allclose(out.params[A], t([[0.75, 1.0]])) and torch.allclose(out.params[B], t([[0.75], [0.25]]))
    assert torch.allclose(out.base_delta["m.weight"].double(), t([[3 / 16, 0], [-3 / 16, 0]]))
    ideal = t([[0.75, 0.75], [0, 0.25]])
    assert torch.allclose(out.base_delta["m.weight"].double() + out.params[B] @ out.params[A], ideal)


def test_non_square_linear_and_conv1d_layouts() -> None:
    ups = two([[1, 1]], [[1], [0], [2]], [[2, 0]], [[0], [1], [0]])
    r = t([[-0.25, 0.25], [0.25, -0.25], [-0.5, 0.5]])  # (d_out, d_in) = (3, 2)
    linear = fedex(scaling=0.5).aggregate(CTX, glob(1, 3, 2), ups, {}).base_delta["m.weight"]
    assert linear.shape == (3, 2) and linear.dtype == torch.float32
    assert torch.allclose(linear.double(), 0.5 * r)
    conv = fedex(scaling=0.5, fan_in_fan_out=True).aggregate(CTX, glob(1, 3, 2), ups, {}).base_delta["m.weight"]
    assert conv.shape == (2, 3) and torch.allclose(conv.double(), 0.5 * r.T)


def test_one_client_leaves_nothing_to_fold() -> None:
    out = fedex().aggregate(CTX, glob(1, 2, 2), [ClientUpdate(0, {A: t([[1, 2]]), B: t([[3], [4]])}, 5)], {})
    assert torch.equal(out.base_delta["m.weight"], torch.zeros(2, 2))


def test_refusals() -> None:
    ups = two([[1, 1]], [[1], [0]], [[0, 1]], [[0], [1]])
    with pytest.raises(AggregationError, match="bind the server's model"):
        FedExLoRA().aggregate(CTX, glob(1, 2, 2), ups, {})
    with pytest.raises(ConfigError, match="quantized"):
        FedExLoRA().bind_model(ModelFacts({}, quantized=True))
    other = FedExLoRA()
    other.bind_model(ModelFacts({"base_model.model.x": LoraModule("x.weight", 1.0, False)}))
    with pytest.raises(AggregationError, match="no LoRA module 'base_model.model.m'"):
        other.aggregate(CTX, glob(1, 2, 2), ups, {})
    bad = [ClientUpdate(0, {A: t([[float("nan"), 1]]), B: t([[1], [0]])}, 1)]
    with pytest.raises(AggregationError):
        fedex().aggregate(CTX, glob(1, 2, 2), bad, {})


# ---- through real peft layers: W0' + s B_bar A_bar == W0 + s sum_k p_k B_k A_k -----------------------------------

def _random_updates(slots_params: dict[str, torch.Tensor], n: list[int], seed: int) -> list[ClientUpdate]:
    gen = torch.Generator().manual_seed(seed)
    return [ClientUpdate(i, {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in slots_params.items()}, n[i])
            for i in range(len(n))]


def _check_exact_through(peft_model, layout: str) -> None:
    from peft.tuners.lora import LoraLayer

    from fedit.model.lora import AdapterSlots

    peft_model.eval()
    slots = AdapterSlots(peft_model)
    facts = model_facts(peft_model)
    lora = {n: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert set(facts.modules) == set(lora) and lora
    plain = dict(peft_model.get_base_model().named_parameters())
    for mod in facts.modules.values():
        assert mod.fan_in_fan_out is (layout == "conv1d")
        assert mod.weight.replace(".weight", ".base_layer.weight") in plain
    n = [1, 2, 5]
    ups = _random_updates(slots.get(), n, seed=11)
    s = STRATEGIES.get("fedex")()
    s.bind_model(facts)
    w0 = {p: m.base_layer.weight.detach().clone().double() for p, m in lora.items()}
    out = s.aggregate(RoundContext(1, 0, 3, (0, 1, 2)), slots.get(), ups, {})
    BaseWeights(peft_model).apply(out.base_delta)
    slots.set(out.params)
    gen = torch.Generator().manual_seed(5)
    for prefix, m in lora.items():
        scaling = facts.modules[prefix].scaling
        a = [u.params[f"{prefix}.lora_A.weight"].double() for u in ups]
        b = [u.params[f"{prefix}.lora_B.weight"].double() for u in ups]
        ideal = sum(n[i] / 8 * b[i] @ a[i] for i in range(3))  # (d_out, d_in), by hand: p = (1, 2, 5) / 8
        d_in = a[0].shape[1]
        x = torch.randn(4, d_in, generator=gen)
        w_eff = w0[prefix] + scaling * (ideal.T if layout == "conv1d" else ideal)
        bias = m.base_layer.bias.detach().double() if m.base_layer.bias is not None else 0.0
        want = x.double() @ (w_eff if layout == "conv1d" else w_eff.T) + bias
        with torch.no_grad():
            got = m(x).double()
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (prefix, (got - want).abs().max())
        # averaging A and B alone (the base left at W0) misses by the residual: the check above can fail
        a_bar, b_bar = sum(n[i] / 8 * a[i] for i in range(3)), sum(n[i] / 8 * b[i] for i in range(3))
        w_avg = w0[prefix] + scaling * ((b_bar @ a_bar).T if layout == "conv1d" else b_bar @ a_bar)
        assert not torch.allclose(x.double() @ (w_avg if layout == "conv1d" else w_avg.T) + bias, want, atol=1e-2)


def test_exact_through_a_real_peft_model_llama(micro_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from fedit.config import LoraConfig
    from fedit.model.lora import attach_lora

    base = AutoModelForCausalLM.from_pretrained(str(micro_model_dir), dtype=torch.float32)
    peft_model = attach_lora(base, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)  # all-linear: q/o square, k/v/mlp not
    facts = model_facts(peft_model)
    assert {m.scaling for m in facts.modules.values()} == {2.0}  # lora.alpha / lora.r
    assert any(m.weight == "model.layers.0.self_attn.q_proj.weight" for m in facts.modules.values())
    _check_exact_through(peft_model, "linear")


def test_exact_through_a_gpt2_conv1d_model() -> None:
    pytest.importorskip("transformers.models.gpt2")
    from transformers import GPT2Config, GPT2LMHeadModel

    from fedit.config import LoraConfig
    from fedit.model.lora import attach_lora

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "fan_in_fan_out is set to False but the target module is Conv1D"
        peft_model = attach_lora(base, LoraConfig(r=2, alpha=6, dropout=0.0, targets=["c_attn", "c_proj"]), seed=0)
    facts = model_facts(peft_model)
    assert {m.scaling for m in facts.modules.values()} == {3.0}
    weights = {m.weight for m in facts.modules.values()}
    assert weights == {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                       "transformer.h.0.mlp.c_proj.weight"}  # (16, 48), (16, 16), (64, 16): stored (in, out)
    _check_exact_through(peft_model, "conv1d")
