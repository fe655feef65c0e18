"""Each strategy against numbers computed by hand."""

from __future__ import annotations

import pytest
import torch

from fedit.config import StrategyConfig
from fedit.errors import AggregationError, ConfigError
from fedit.strategies import FedAdam, FedAvg, FedProx, build_strategy
from fedit.types import ClientUpdate


def upd(cid: int, n: int, a: list[float], b: list[float]) -> ClientUpdate:
    return ClientUpdate(cid, {"x.lora_A.weight": torch.tensor(a), "x.lora_B.weight": torch.tensor(b)}, n)


GLOBAL = {"x.lora_A.weight": torch.tensor([0.0, 0.0]), "x.lora_B.weight": torch.tensor([1.0, 1.0])}


def test_fedavg_weights_by_examples_and_averages_a_and_b_separately() -> None:
    s = FedAvg()
    params, state = s.aggregate(GLOBAL, [upd(0, 1, [1.0, 2.0], [0.0, 4.0]), upd(1, 3, [5.0, 6.0], [4.0, 0.0])], {})
    # A: (1*[1,2] + 3*[5,6]) / 4 = [4, 5]; B: (1*[0,4] + 3*[4,0]) / 4 = [3, 1]
    assert torch.allclose(params["x.lora_A.weight"], torch.tensor([4.0, 5.0]))
    assert torch.allclose(params["x.lora_B.weight"], torch.tensor([3.0, 1.0]))
    assert state == {}


def test_fedavg_keeps_dtype_and_does_not_mutate_inputs() -> None:
    g = {k: v.to(torch.bfloat16) for k, v in GLOBAL.items()}
    u = [ClientUpdate(0, {k: v.clone() + 1 for k, v in g.items()}, 2)]
    before = {k: v.clone() for k, v in g.items()}
    params, _ = FedAvg().aggregate(g, u, {})
    assert all(v.dtype == torch.bfloat16 for v in params.values())
    assert all(torch.equal(g[k], before[k]) for k in g)


def test_fedadam_one_step_by_hand() -> None:
    s = FedAdam(eta=0.1, beta1=0.9, beta2=0.99, tau=0.001)
    state = s.init_state(GLOBAL)
    params, state = s.aggregate(GLOBAL, [upd(0, 1, [2.0, 0.0], [1.0, 1.0])], state)
    # delta_A = [2, 0]; m = 0.1*delta = [0.2, 0]; v = 0.01*delta^2 = [0.04, 0]
    # w = 0 + 0.1 * m / (sqrt(v) + 0.001) = [0.1*0.2/0.201, 0]
    assert torch.allclose(params["x.lora_A.weight"], torch.tensor([0.1 * 0.2 / 0.201, 0.0]))
    assert torch.allclose(state["m.x.lora_A.weight"], torch.tensor([0.2, 0.0]))
    assert torch.allclose(state["v.x.lora_A.weight"], torch.tensor([0.04, 0.0]))
    # B did not change: delta 0 -> parameters unchanged
    assert torch.allclose(params["x.lora_B.weight"], GLOBAL["x.lora_B.weight"])


def test_fedadam_second_step_uses_state() -> None:
    s = FedAdam(eta=0.1, beta1=0.5, beta2=0.5, tau=0.01)
    p1, st = s.aggregate(GLOBAL, [upd(0, 1, [2.0, 0.0], [1.0, 1.0])], s.init_state(GLOBAL))
    # step 1: delta_A = [2, 0], m = [1, 0], v = [2, 0] -> A = [0.1 * 1 / (sqrt(2) + 0.01), 0];
    # delta_B = 0, m = v = 0 -> B = 1 + 0.1 * 0 / (0 + 0.01) = [1, 1] (finite because tau > 0)
    w1 = 0.1 / (2**0.5 + 0.01)
    assert torch.allclose(p1["x.lora_A.weight"], torch.tensor([w1, 0.0]))
    assert torch.equal(p1["x.lora_B.weight"], torch.tensor([1.0, 1.0]))
    p2, st2 = s.aggregate(p1, [ClientUpdate(0, {"x.lora_A.weight": torch.tensor([w1, 0.0]),
                                                "x.lora_B.weight": torch.tensor([1.0, 1.0])}, 1)], st)
    # step 2: delta = 0, m_A = [0.5, 0], v_A = [1, 0] -> A = [w1 + 0.1 * 0.5 / (1 + 0.01), 0]; B unchanged
    assert torch.allclose(p2["x.lora_A.weight"], torch.tensor([w1 + 0.05 / 1.01, 0.0]))
    assert torch.equal(p2["x.lora_B.weight"], torch.tensor([1.0, 1.0]))
    assert torch.allclose(st2["m.x.lora_A.weight"], torch.tensor([0.5, 0.0]))
    assert torch.allclose(st2["v.x.lora_A.weight"], torch.tensor([1.0, 0.0]))
    assert all(bool(torch.isfinite(t).all()) for t in [*p2.values(), *st2.values()])


def test_fedadam_tau_and_betas_are_validated() -> None:
    from fedit.config import Config

    with pytest.raises(ConfigError, match=r"strategy.tau: got 0.0, expected a number > 0"):
        Config().override({"strategy.tau": 0.0})
    for key, value in (("strategy.beta1", 1.0), ("strategy.beta2", -0.1)):
        with pytest.raises(ConfigError, match=rf"{key}: got {value}, expected a number in \[0, 1\)"):
            Config().override({key: value})


def test_strategies_refuse_non_finite_updates() -> None:
    nan = upd(2, 1, [float("nan"), 0.0], [1.0, 1.0])
    for s in (FedAvg(), FedAdam(), FedProx()):
        with pytest.raises(AggregationError, match=r"client 2: x.lora_A.weight has 1 non-finite value"):
            s.aggregate(GLOBAL, [upd(0, 1, [1.0, 1.0], [1.0, 1.0]), nan], s.init_state(GLOBAL))


def test_fedprox_aggregates_like_fedavg_and_adds_proximal_term() -> None:
    updates = [upd(0, 2, [1.0, 1.0], [1.0, 1.0]), upd(1, 2, [3.0, 3.0], [1.0, 3.0])]
    a, _ = FedAvg().aggregate(GLOBAL, updates, {})
    b, _ = FedProx(mu=0.5).aggregate(GLOBAL, updates, {})
    assert all(torch.equal(a[k], b[k]) for k in a)
    term = FedProx(mu=0.5).client_objective()
    assert term is not None and FedAvg().client_objective() is None

    class Slots:  # the objective only needs `.params`
        params = {k: torch.nn.Parameter(v + 1.0) for k, v in GLOBAL.items()}

    term.start(GLOBAL, Slots())  # type: ignore[arg-type]
    # each of 4 elements is 1 away: 0.5 * mu * 4 = 1.0
    assert term.penalty(Slots()).item() == pytest.approx(1.0)  # type: ignore[arg-type]


def test_errors_are_clear() -> None:
    with pytest.raises(AggregationError, match="no client updates"):
        FedAvg().aggregate(GLOBAL, [], {})
    bad = ClientUpdate(3, {"x.lora_A.weight": torch.zeros(3), "x.lora_B.weight": torch.zeros(2)}, 1)
    with pytest.raises(AggregationError, match="client 3.*shape"):
        FedAvg().aggregate(GLOBAL, [bad], {})
    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'.*fedadam, fedavg, fedprox"):
        build_strategy(StrategyConfig(name="fedsgd"))
