"""Each strategy against numbers computed by hand (contract v2: aggregate(ctx, global, updates, state))."""

from __future__ import annotations

import pytest
import torch

from fedit.config import Config
from fedit.errors import AggregationError, ConfigError
from fedit.strategies import STRATEGIES, FedAdam, FedAvg, FedProx, RoundContext, build_strategy
from fedit.strategies.fedadam import FedAdamConfig
from fedit.strategies.fedprox import FedProxConfig, ProximalSession
from fedit.types import ClientTask, ClientUpdate

CTX = RoundContext(round=1, seed=0, num_clients=2, sampled=(0, 1))


def upd(cid: int, n: int, a: list[float], b: list[float]) -> ClientUpdate:
    return ClientUpdate(cid, {"x.lora_A.weight": torch.tensor(a), "x.lora_B.weight": torch.tensor(b)}, n)


GLOBAL = {"x.lora_A.weight": torch.tensor([0.0, 0.0]), "x.lora_B.weight": torch.tensor([1.0, 1.0])}


def test_fedavg_weights_by_examples_and_averages_a_and_b_separately() -> None:
    s = FedAvg()
    out = s.aggregate(CTX, GLOBAL, [upd(0, 1, [1.0, 2.0], [0.0, 4.0]), upd(1, 3, [5.0, 6.0], [4.0, 0.0])], {})
    # A: (1*[1,2] + 3*[5,6]) / 4 = [4, 5]; B: (1*[0,4] + 3*[4,0]) / 4 = [3, 1]
    assert torch.allclose(out.params["x.lora_A.weight"], torch.tensor([4.0, 5.0]))
    assert torch.allclose(out.params["x.lora_B.weight"], torch.tensor([3.0, 1.0]))
    assert out.state == {} and out.metrics == {} and out.base_delta is None


def test_fedavg_keeps_dtype_and_does_not_mutate_inputs() -> None:
    g = {k: v.to(torch.bfloat16) for k, v in GLOBAL.items()}
    u = [ClientUpdate(0, {k: v.clone() + 1 for k, v in g.items()}, 2)]
    before = {k: v.clone() for k, v in g.items()}
    out = FedAvg().aggregate(CTX, g, u, {})
    assert all(v.dtype == torch.bfloat16 for v in out.params.values())
    assert all(torch.equal(g[k], before[k]) for k in g)


def test_fedadam_one_step_by_hand() -> None:
    s = FedAdam(FedAdamConfig(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.001))
    state = s.init_state(GLOBAL, 2)
    out = s.aggregate(CTX, GLOBAL, [upd(0, 1, [2.0, 0.0], [1.0, 1.0])], state)
    # delta_A = [2, 0]; m = 0.1*delta = [0.2, 0]; v = 0.01*delta^2 = [0.04, 0]
    # w = 0 + 0.1 * m / (sqrt(v) + 0.001) = [0.1*0.2/0.201, 0]
    assert torch.allclose(out.params["x.lora_A.weight"], torch.tensor([0.1 * 0.2 / 0.201, 0.0]))
    assert torch.allclose(out.state["m.x.lora_A.weight"], torch.tensor([0.2, 0.0]))
    assert torch.allclose(out.state["v.x.lora_A.weight"], torch.tensor([0.04, 0.0]))
    assert int(out.state["t"]) == 1
    assert torch.allclose(out.params["x.lora_B.weight"], GLOBAL["x.lora_B.weight"])  # delta 0: unchanged


def test_fedadam_second_step_uses_state() -> None:
    s = FedAdam(FedAdamConfig(server_lr=0.1, beta1=0.5, beta2=0.5, tau=0.01))
    one = s.aggregate(CTX, GLOBAL, [upd(0, 1, [2.0, 0.0], [1.0, 1.0])], s.init_state(GLOBAL, 2))
    # step 1: delta_A = [2, 0], m = [1, 0], v = [2, 0] -> A = [0.1 * 1 / (sqrt(2) + 0.01), 0];
    # delta_B = 0, m = v = 0 -> B = 1 + 0.1 * 0 / (0 + 0.01) = [1, 1] (finite because tau > 0)
    w1 = 0.1 / (2**0.5 + 0.01)
    assert torch.allclose(one.params["x.lora_A.weight"], torch.tensor([w1, 0.0]))
    assert torch.equal(one.params["x.lora_B.weight"], torch.tensor([1.0, 1.0]))
    two = s.aggregate(CTX, one.params, [ClientUpdate(0, {"x.lora_A.weight": torch.tensor([w1, 0.0]),
                                                         "x.lora_B.weight": torch.tensor([1.0, 1.0])}, 1)], one.state)
    # step 2: delta = 0, m_A = [0.5, 0], v_A = [1, 0] -> A = [w1 + 0.1 * 0.5 / (1 + 0.01), 0]; B unchanged
    assert torch.allclose(two.params["x.lora_A.weight"], torch.tensor([w1 + 0.05 / 1.01, 0.0]))
    assert torch.equal(two.params["x.lora_B.weight"], torch.tensor([1.0, 1.0]))
    assert torch.allclose(two.state["m.x.lora_A.weight"], torch.tensor([0.5, 0.0]))
    assert torch.allclose(two.state["v.x.lora_A.weight"], torch.tensor([1.0, 0.0]))
    assert int(two.state["t"]) == 2
    assert all(bool(torch.isfinite(t.float()).all()) for t in [*two.params.values(), *two.state.values()])


def test_fedadam_bias_correction_by_hand() -> None:
    """Scalar x0 = 1, clients 1.5 (n=1) and 2.5 (n=3): delta = 1.25; eta 0.01, betas 0.9/0.99, tau 1e-3.
    t = 1: m_hat = m/(1-0.9) = 1.25, v_hat = v/(1-0.99) = 1.5625, x1 = 1 + 0.01 * 1.25/(1.25 + 0.001)."""
    g = {"s": torch.tensor([1.0])}
    ups = [ClientUpdate(0, {"s": torch.tensor([1.5])}, 1), ClientUpdate(1, {"s": torch.tensor([2.5])}, 3)]
    on = FedAdam(FedAdamConfig(server_lr=0.01, tau=1e-3, bias_correction=True))
    off = FedAdam(FedAdamConfig(server_lr=0.01, tau=1e-3))
    x_on = on.aggregate(CTX, g, ups, on.init_state(g, 2)).params["s"]
    x_off = off.aggregate(CTX, g, ups, off.init_state(g, 2)).params["s"]
    assert x_on.item() == pytest.approx(1.0099920064, abs=1e-7)
    assert x_off.item() == pytest.approx(1.0 + 0.01 * 0.125 / (0.125 + 1e-3), abs=1e-7)  # 1.0099206349


def test_fedadam_tau_and_betas_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"strategy.fedadam.tau: got 0.0, expected a number > 0"):
        Config().override({"strategy.name": "fedadam", "strategy.fedadam.tau": 0.0})
    for key, value in (("beta1", 1.0), ("beta2", -0.1)):
        with pytest.raises(ConfigError, match=rf"strategy.fedadam.{key}: got {value}, expected a number in \[0, 1\)"):
            Config().override({"strategy.name": "fedadam", f"strategy.fedadam.{key}": value})


def test_strategies_refuse_non_finite_updates() -> None:
    nan = upd(2, 1, [float("nan"), 0.0], [1.0, 1.0])
    for s in (FedAvg(), FedAdam(), FedProx()):
        with pytest.raises(AggregationError, match=r"client 2: x.lora_A.weight has 1 non-finite value"):
            s.aggregate(CTX, GLOBAL, [upd(0, 1, [1.0, 1.0], [1.0, 1.0]), nan], s.init_state(GLOBAL, 2))


def test_fedprox_aggregates_like_fedavg_and_its_term_and_gradient_by_hand() -> None:
    updates = [upd(0, 2, [1.0, 1.0], [1.0, 1.0]), upd(1, 2, [3.0, 3.0], [1.0, 3.0])]
    a = FedAvg().aggregate(CTX, GLOBAL, updates, {}).params
    b = FedProx(FedProxConfig(mu=0.5)).aggregate(CTX, GLOBAL, updates, {}).params
    assert all(torch.equal(a[k], b[k]) for k in a)
    session = FedProx(FedProxConfig(mu=0.5)).client_plan().session(ClientTask(GLOBAL), {})
    assert isinstance(session, ProximalSession)

    class Slots:  # the session only needs `.params`
        params = {k: torch.nn.Parameter(v + torch.tensor([1.0, 2.0])) for k, v in GLOBAL.items()}

    session.start(Slots())  # type: ignore[arg-type]
    term = session.penalty(Slots())  # type: ignore[arg-type]
    # each tensor is [1, 2] away: (mu / 2) * (1 + 4) * 2 tensors = 0.25 * 10 = 2.5
    assert term.item() == pytest.approx(2.5)
    term.backward()
    for p in Slots.params.values():  # gradient mu * (w - w_global) = 0.5 * [1, 2]
        assert torch.allclose(p.grad, torch.tensor([0.5, 1.0]))


def test_errors_are_clear() -> None:
    with pytest.raises(AggregationError, match="no client updates"):
        FedAvg().aggregate(CTX, GLOBAL, [], {})
    bad = ClientUpdate(3, {"x.lora_A.weight": torch.zeros(3), "x.lora_B.weight": torch.zeros(2)}, 1)
    with pytest.raises(AggregationError, match="client 3.*shape"):
        FedAvg().aggregate(CTX, GLOBAL, [bad], {})
    with pytest.raises(ConfigError, match="strategy.name: got 'fedsgd', expected one of: .*fedadam.*fedavg"):
        Config().override({"strategy.name": "fedsgd"})


def test_every_strategy_is_registered_with_its_config_table() -> None:
    for name in STRATEGIES.names():
        cfg = Config().override({"strategy.name": name})
        s = build_strategy(cfg.strategy)
        assert s.name == name and isinstance(s.cfg, STRATEGIES.get(name).config_class)
        assert f"[strategy.{name}]" in cfg.to_toml()
        assert Config.from_toml(cfg.to_toml()) == cfg  # the table round-trips through TOML


def test_round_context_rng_is_replayable_and_per_purpose() -> None:
    a, b = CTX.rng("noise").random(3), CTX.rng("noise").random(3)
    assert (a == b).all() and not (a == CTX.rng("sample").random(3)).all()
    other = RoundContext(round=2, seed=0, num_clients=2, sampled=(0, 1))
    assert not (a == other.rng("noise").random(3)).all()
