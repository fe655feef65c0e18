"""FedAvgM, FedAdagrad and FedYogi (FedOpt base) against values computed by hand, one and two rounds, two clients of
different sizes (n = 1 and n = 3). Every expected value below is written as the arithmetic that gives it."""

from __future__ import annotations

import math

import pytest
import torch

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.strategies import FedAdam, FedAvg, RoundContext, build_strategy
from fedit.strategies.fedadagrad import FedAdagrad, FedAdagradConfig
from fedit.strategies.fedadam import FedAdamConfig
from fedit.strategies.fedavgm import FedAvgM, FedAvgMConfig
from fedit.strategies.fedyogi import FedYogi, FedYogiConfig
from fedit.types import ClientUpdate

CTX = RoundContext(round=1, seed=0, num_clients=2, sampled=(0, 1))
G = {"s": torch.tensor([1.0])}  # x_0 = 1


def two(lo: float, hi: float) -> list[ClientUpdate]:
    """Client 0 (n=1) returns lo, client 1 (n=3) returns hi: the weighted mean is (lo + 3 hi) / 4."""
    return [ClientUpdate(0, {"s": torch.tensor([lo])}, 1), ClientUpdate(1, {"s": torch.tensor([hi])}, 3)]


def rounds(strategy, offsets: list[tuple[float, float]]) -> list:
    """Run len(offsets) rounds from G; in each, the clients return x_t + lo and x_t + hi."""
    params, state, out = G, strategy.init_state(G, 2), []
    for lo, hi in offsets:
        x = float(params["s"])
        agg = strategy.aggregate(CTX, params, two(x + lo, x + hi), state)
        params, state = agg.params, agg.state
        out.append(agg)
    return out


# Round 1: clients 1.5 (n=1), 2.5 (n=3): mean (1.5 + 7.5) / 4 = 2.25, delta_1 = 1.25.
# Round 2: clients x_1 - 0.25 (n=1), x_1 + 0.75 (n=3): delta_2 = (-0.25 + 2.25) / 4 = 0.5.
R12 = [(0.5, 1.5), (-0.25, 0.75)]


# -- FedAvgM -----------------------------------------------------------------------------------------------------

def test_fedavgm_two_rounds_by_hand() -> None:
    r1, r2 = rounds(FedAvgM(FedAvgMConfig(server_lr=1.0, momentum=0.9)), R12)
    # round 1: g = -1.25, v_1 = 0.9 * 0 + g = -1.25, x_1 = 1 - 1 * (-1.25) = 2.25 (FedAvg's mean)
    assert r1.params["s"].item() == pytest.approx(2.25, abs=1e-6)
    assert r1.state["v.s"].item() == pytest.approx(-1.25, abs=1e-6)
    # round 2: g = -0.5, v_2 = 0.9 * (-1.25) - 0.5 = -1.625, x_2 = 2.25 + 1.625 = 3.875
    # (OpenFedLLM's EMA form would give m = 0.9 * 1.25 + 0.1 * 0.5 = 1.175, x_2 = 3.425)
    assert r2.state["v.s"].item() == pytest.approx(-1.625, abs=1e-6)
    assert r2.params["s"].item() == pytest.approx(3.875, abs=1e-6)
    assert int(r2.state["t"]) == 2


def test_fedavgm_nesterov_two_rounds_by_hand_and_as_torch_sgd() -> None:
    r1, r2 = rounds(FedAvgM(FedAvgMConfig(server_lr=1.0, momentum=0.9, nesterov=True)), R12)
    # round 1: v_1 = -1.25, direction g + 0.9 v_1 = -1.25 - 1.125 = -2.375, x_1 = 1 + 2.375 = 3.375
    assert r1.params["s"].item() == pytest.approx(3.375, abs=1e-6)
    # round 2: g = -0.5, v_2 = -1.125 - 0.5 = -1.625, direction -0.5 + 0.9 * (-1.625) = -1.9625,
    # x_2 = 3.375 + 1.9625 = 5.3375
    assert r2.state["v.s"].item() == pytest.approx(-1.625, abs=1e-6)
    assert r2.params["s"].item() == pytest.approx(5.3375, abs=1e-6)
    # the same two steps with torch.optim.SGD(nesterov=True) fed the pseudo-gradient -delta
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.9, nesterov=True)
    for delta in (1.25, 0.5):
        w.grad = torch.tensor([-delta])
        opt.step()
    assert w.item() == pytest.approx(r2.params["s"].item(), abs=1e-6)
    plain = rounds(FedAvgM(FedAvgMConfig(server_lr=1.0, momentum=0.9)), R12)[1].params["s"].item()
    assert plain == pytest.approx(3.875, abs=1e-6)  # the option changes the result


def test_fedavgm_server_lr_scales_the_step() -> None:
    (r1,) = rounds(FedAvgM(FedAvgMConfig(server_lr=0.5, momentum=0.9)), R12[:1])
    assert r1.params["s"].item() == pytest.approx(1 + 0.5 * 1.25, abs=1e-6)  # x_1 = 1 - 0.5 * (-1.25) = 1.625


def test_fedavgm_without_momentum_and_lr_1_is_fedavg() -> None:
    m = FedAvgM(FedAvgMConfig(server_lr=1.0, momentum=0.0))
    assert rounds(m, R12)[1].params["s"].item() == 2.75  # exact: 2.25, then 2.25 + 0.5
    gen = torch.Generator().manual_seed(0)
    params = {"a.lora_A.weight": torch.randn(4, 8, generator=gen), "a.lora_B.weight": torch.zeros(8, 4)}
    fa, state = dict(params), m.init_state(params, 2)
    for r in range(1, 4):
        ups = [ClientUpdate(c, {k: v + torch.randn(v.shape, generator=gen) * (c + 1) for k, v in fa.items()}, n)
               for c, n in ((0, 1), (1, 3))]
        avg = FedAvg().aggregate(CTX, fa, ups, {}).params
        agg = m.aggregate(CTX, fa, ups, state)
        for k in params:  # x + (mean - x) in float32 vs the mean itself: equal to rounding
            torch.testing.assert_close(agg.params[k], avg[k], rtol=0, atol=1e-6, msg=f"round {r} {k}")
        fa, state = agg.params, agg.state


# -- FedAdagrad --------------------------------------------------------------------------------------------------

def test_fedadagrad_two_rounds_by_hand() -> None:
    s = FedAdagrad()  # defaults: eta 1e-2, beta1 0, tau 1e-3, v_0 = tau^2 = 1e-6
    assert s.init_state(G, 2).keys() == {"t", "v.s"}  # no m with beta1 = 0
    assert s.init_state(G, 2)["v.s"].item() == pytest.approx(1e-6, rel=1e-6)
    r1, r2 = rounds(s, R12)
    # round 1: m = delta = 1.25, v_1 = 1e-6 + 1.5625 = 1.562501,
    # x_1 = 1 + 0.01 * 1.25 / (sqrt(1.562501) + 1e-3) = 1 + 0.0125 / 1.2510004 = 1.0099920032
    assert r1.state["v.s"].item() == pytest.approx(1.562501, abs=2e-7)  # v_0 = 0 would give 1.5625
    assert r1.params["s"].item() == pytest.approx(1 + 0.0125 / (math.sqrt(1.562501) + 1e-3), abs=1e-7)
    # round 2: delta = 0.5, v_2 = 1.562501 + 0.25 = 1.812501, sqrt = 1.3462916,
    # x_2 = x_1 + 0.01 * 0.5 / 1.3472916 = x_1 + 0.0037111491 = 1.0137031524
    assert r2.state["v.s"].item() == pytest.approx(1.812501, abs=2e-7)
    assert r2.params["s"].item() == pytest.approx(1.0099920032 + 0.005 / (math.sqrt(1.812501) + 1e-3), abs=1e-7)
    assert r2.state.keys() == {"t", "v.s"}


def test_fedadagrad_momentum_and_v_init_by_hand() -> None:
    r1, r2 = rounds(FedAdagrad(FedAdagradConfig(beta1=0.5)), R12)
    # round 1: m_1 = 0.5 * 1.25 = 0.625, x_1 = 1 + 0.01 * 0.625 / 1.2510004 = 1.0049960016
    assert r1.state["m.s"].item() == pytest.approx(0.625, abs=1e-7)
    assert r1.params["s"].item() == pytest.approx(1 + 0.00625 / (math.sqrt(1.562501) + 1e-3), abs=1e-7)
    # round 2: m_2 = 0.5 * 0.625 + 0.5 * 0.5 = 0.5625, x_2 = x_1 + 0.01 * 0.5625 / 1.3472916 = 1.0091710444
    assert r2.state["m.s"].item() == pytest.approx(0.5625, abs=1e-7)
    assert r2.params["s"].item() == pytest.approx(1.0049960016 + 0.005625 / (math.sqrt(1.812501) + 1e-3), abs=1e-7)
    zero = FedAdagrad(Config().override({"strategy.name": "fedadagrad",
                                         "strategy.fedadagrad.v_init": 0.0}).strategy.settings())
    assert zero.init_state(G, 2)["v.s"].item() == 0.0
    assert rounds(zero, R12[:1])[0].state["v.s"].item() == 1.5625  # 0 + 1.25^2, exact


# -- FedYogi -----------------------------------------------------------------------------------------------------

# Round 1 as above (delta_1 = 1.25); round 2: clients x_1 - 0.2 (n=1), x_1 + 0.2 (n=3): delta_2 = 0.4 / 4 = 0.1.
Y12 = [(0.5, 1.5), (-0.2, 0.2)]


def test_fedyogi_two_rounds_by_hand() -> None:
    r1, r2 = rounds(FedYogi(), Y12)  # defaults: eta 1e-2, beta1 0.9, beta2 0.99, tau 1e-3, v_0 = 1e-6
    # round 1: m_1 = 0.1 * 1.25 = 0.125; v_0 = 1e-6 < delta^2 = 1.5625, so sign = -1 and
    # v_1 = 1e-6 + 0.01 * 1.5625 = 0.015626; x_1 = 1 + 0.01 * 0.125 / (0.12500400 + 1e-3) = 1.0099203200
    assert r1.state["m.s"].item() == pytest.approx(0.125, abs=1e-7)
    assert r1.state["v.s"].item() == pytest.approx(0.015626, rel=1e-6)
    assert r1.params["s"].item() == pytest.approx(1 + 0.00125 / (math.sqrt(0.015626) + 1e-3), abs=1e-7)
    # round 2: m_2 = 0.9 * 0.125 + 0.1 * 0.1 = 0.1225; delta^2 = 0.01 < v_1, so sign = +1 and
    # v_2 = 0.015626 - 0.01 * 0.01 = 0.015526; x_2 = x_1 + 0.01 * 0.1225 / (sqrt(0.015526) + 1e-3) = 1.0196732430
    assert r2.state["m.s"].item() == pytest.approx(0.1225, rel=1e-6)
    assert r2.state["v.s"].item() == pytest.approx(0.015526, rel=1e-6)
    assert r2.params["s"].item() == pytest.approx(1.0099203200 + 0.001225 / (math.sqrt(0.015526) + 1e-3), abs=1e-7)


def test_fedyogi_equals_fedadam_at_round_1_with_v0_zero_then_differs() -> None:
    yogi = FedYogi(FedYogiConfig(v_init=0.0))
    adam = FedAdam(FedAdamConfig())
    y1, y2 = rounds(yogi, Y12)
    a1, a2 = rounds(adam, Y12)
    # round 1 with v_0 = 0: Yogi v_1 = 0 - 0.01 * 1.5625 * sign(-1.5625) = 0.015625 = Adam's 0.99 * 0 + 0.01 * 1.5625
    for k in ("s",):
        torch.testing.assert_close(y1.params[k], a1.params[k], rtol=1e-7, atol=0)
    torch.testing.assert_close(y1.state["v.s"], a1.state["v.s"], rtol=1e-7, atol=0)
    assert y1.params["s"].item() == pytest.approx(1 + 0.00125 / 0.126, abs=1e-7)  # 1.0099206349
    # round 2 (delta = 0.1, delta^2 = 0.01 < v_1 = 0.015625):
    #   Yogi v_2 = 0.015625 - 0.01 * 0.01 = 0.015525,           x_2 = x_1 + 0.001225 / (0.1245994 + 1e-3) = 1.0196738695
    #   Adam v_2 = 0.99 * 0.015625 + 0.01 * 0.01 = 0.01556875,  x_2 = x_1 + 0.001225 / (0.1247748 + 1e-3) = 1.0196602650
    assert y2.state["v.s"].item() == pytest.approx(0.015525, rel=1e-6)
    assert a2.state["v.s"].item() == pytest.approx(0.01556875, rel=1e-6)
    assert y2.params["s"].item() == pytest.approx(1.0196738695, abs=1e-7)
    assert a2.params["s"].item() == pytest.approx(1.0196602650, abs=1e-7)


def test_fedyogi_and_fedadam_second_moments_agree_only_where_v_is_0_delta2_or_2delta2() -> None:
    """One step from a given v with delta = 1 per element and beta2 = 0.5 (every value exact in float32):
    Adam v' = 0.5 v + 0.5, Yogi v' = v - 0.5 sign(v - 1). Both move v towards delta^2 = 1; they differ except at
    v in {0, 1, 2} -- not 'exactly where delta^2 < v' (v = 0.25, 0.5 differ too; v = 2 does not)."""
    v0 = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0])
    adam_hand = torch.tensor([0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.5])
    yogi_hand = torch.tensor([0.5, 0.75, 1.0, 1.0, 1.0, 1.5, 3.5])
    g = {"s": torch.zeros(7)}
    ups = [ClientUpdate(0, {"s": torch.full((7,), -2.0)}, 1), ClientUpdate(1, {"s": torch.full((7,), 2.0)}, 3)]
    # delta = (-2 + 3 * 2) / 4 = 1 in every element
    out = {}
    for cls, cfg in ((FedYogi, FedYogiConfig(beta2=0.5)), (FedAdam, FedAdamConfig(beta2=0.5))):
        s = cls(cfg)
        state = s.init_state(g, 2) | {"v.s": v0.clone()}
        out[cls.name] = s.aggregate(CTX, g, ups, state).state["v.s"]
    assert torch.equal(out["fedadam"], adam_hand)
    assert torch.equal(out["fedyogi"], yogi_hand)
    same = out["fedadam"] == out["fedyogi"]
    assert same.tolist() == [True, False, False, True, False, True, False]
    assert torch.equal(torch.sign(out["fedadam"] - v0), torch.sign(out["fedyogi"] - v0))  # same direction


def test_fedyogi_bias_correction_two_rounds_by_hand() -> None:
    r1, r2 = rounds(FedYogi(FedYogiConfig(bias_correction=True)), Y12)
    # round 1 (t = 1): m_hat = 0.125 / 0.1 = 1.25, v_hat = 0.015626 / 0.01 = 1.5626,
    # x_1 = 1 + 0.01 * 1.25 / (sqrt(1.5626) + 1e-3) = 1 + 0.0125 / 1.25104 = 1.0099916869
    assert r1.params["s"].item() == pytest.approx(1 + 0.0125 / (math.sqrt(1.5626) + 1e-3), abs=1e-7)
    # round 2 (t = 2): m_hat = 0.1225 / (1 - 0.81) = 0.6447368, v_hat = 0.015526 / (1 - 0.9801) = 0.7802010,
    # x_2 = x_1 + 0.01 * 0.6447368 / (0.8832899 + 1e-3) = 1.0172826993
    assert r2.params["s"].item() == pytest.approx(1.0172826993, abs=1e-7)
    assert r2.state["m.s"].item() == pytest.approx(0.1225, rel=1e-6)  # the state keeps the uncorrected moments


# -- settings ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "expected"), [
    ("fedavgm.momentum", 1.0, r"a number in \[0, 1\)"),
    ("fedavgm.server_lr", 0.0, "a number > 0"),
    ("fedadagrad.tau", 0.0, "a number > 0"),
    ("fedadagrad.v_init", -1.0, "a number >= 0"),
    ("fedadagrad.beta1", 1.0, r"a number in \[0, 1\)"),
    ("fedyogi.beta2", 1.0, r"a number in \[0, 1\)"),
    ("fedyogi.v_init", -1e-9, "a number >= 0"),
    ("fedyogi.server_lr", -1.0, "a number > 0"),
])
def test_settings_are_validated(key: str, value: float, expected: str) -> None:
    name = key.split(".")[0]
    with pytest.raises(ConfigError, match=rf"strategy.{key}: got {value}, expected {expected}"):
        Config().override({"strategy.name": name, f"strategy.{key}": value})


def test_defaults_are_the_documented_ones() -> None:
    avgm = build_strategy(Config().override({"strategy.name": "fedavgm"}).strategy).cfg
    assert (avgm.server_lr, avgm.momentum, avgm.nesterov) == (0.1, 0.9, False)
    ada = build_strategy(Config().override({"strategy.name": "fedadagrad"}).strategy).cfg
    assert (ada.server_lr, ada.beta1, ada.tau, ada.v_init) == (1e-2, 0.0, 1e-3, 1e-6)
    yogi = build_strategy(Config().override({"strategy.name": "fedyogi"}).strategy).cfg
    assert (yogi.server_lr, yogi.beta1, yogi.beta2, yogi.tau, yogi.v_init, yogi.bias_correction) == (
        1e-2, 0.9, 0.99, 1e-3, 1e-6, False)
