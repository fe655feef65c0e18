"""Two rounds by hand, two clients of sizes 1 and 3, for the strategies without server state (fedavg, fedprox, ffa,
fedex): round 2 starts from round 1's global and its result depends on nothing else (the state stays empty).
The server optimizers and SCAFFOLD have their two-round hand tests in test_server_optimizers.py, test_strategies.py
and test_scaffold.py."""

from __future__ import annotations

import pytest
import torch

from fedit.config import Config
from fedit.model.base_delta import LoraModule, ModelFacts
from fedit.strategies import RoundContext, build_strategy
from fedit.types import ClientUpdate

A, B = "base_model.model.m.lora_A.weight", "base_model.model.m.lora_B.weight"


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def ctx(r: int) -> RoundContext:
    return RoundContext(round=r, seed=0, num_clients=2, sampled=(0, 1))


# round 1: client 0 (n=1) A=[1,0] B=[2,0]^T, client 1 (n=3) A=[1,2] B=[0,4]^T
R1 = [({A: t([[1, 0]]), B: t([[2], [0]])}, 1), ({A: t([[1, 2]]), B: t([[0], [4]])}, 3)]
# round 2 (from round 1's global): client 0 A=[3,2] B=[1,1]^T, client 1 A=[3,2] B=[1,5]^T
R2 = [({A: t([[3, 2]]), B: t([[1], [1]])}, 1), ({A: t([[3, 2]]), B: t([[1], [5]])}, 3)]
G0 = {A: t([[1, 1]]), B: t([[0], [0]])}


def run_two(name: str) -> tuple:
    s = build_strategy(Config().override({"strategy.name": name}).strategy)
    if name == "fedex":
        s.bind_model(ModelFacts({"base_model.model.m": LoraModule("m.weight", 2.0, False)}))
    outs, g, state = [], G0, s.init_state(G0, 2)
    for r, ups in ((1, R1), (2, R2)):
        shared = set(s.expected_update(g)[0])
        updates = [ClientUpdate(i, {k: v for k, v in p.items() if k in shared}, n) for i, (p, n) in enumerate(ups)]
        out = s.aggregate(ctx(r), g, updates, state)
        outs.append(out)
        g, state = out.params, out.state
    return outs


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_and_fedprox_two_rounds(name: str) -> None:
    r1, r2 = run_two(name)
    # round 1: A = (1 [1,0] + 3 [1,2]) / 4 = [1, 1.5]; B = (1 [2,0] + 3 [0,4]) / 4 = [0.5, 3]
    assert torch.equal(r1.params[A], t([[1, 1.5]])) and torch.equal(r1.params[B], t([[0.5], [3]]))
    # round 2: A = [3, 2] (both clients); B = (1 [1,1] + 3 [1,5]) / 4 = [1, 4]
    assert torch.equal(r2.params[A], t([[3, 2]])) and torch.equal(r2.params[B], t([[1], [4]]))
    assert r1.state == {} and r2.state == {} and r2.base_delta is None


def test_ffa_two_rounds_keeps_a_and_averages_b() -> None:
    r1, r2 = run_two("ffa")
    assert r1.params[A] is G0[A] and r2.params[A] is G0[A]  # A never changes, never sent
    assert torch.equal(r1.params[B], t([[0.5], [3]])) and torch.equal(r2.params[B], t([[1], [4]]))


def test_fedex_two_rounds_residuals_by_hand() -> None:
    r1, r2 = run_two("fedex")
    # round 1: sum p B A = 1/4 [[2,0],[0,0]] + 3/4 [[0,0],[4,8]] = [[0.5,0],[3,6]];
    # B_bar A_bar = [0.5,3]^T [1,1.5] = [[0.5,0.75],[3,4.5]]; residual [[0,-0.75],[0,1.5]], times s = 2
    assert torch.allclose(r1.base_delta["m.weight"].double(), t([[0, -1.5], [0, 3]]))
    # round 2: A_k equal, so sum p B_k A = B_bar A: nothing to fold (the round loop adds this to round 1's delta)
    assert torch.allclose(r2.base_delta["m.weight"].double(), torch.zeros(2, 2, dtype=torch.float64))
    assert torch.equal(r2.params[A], t([[3, 2]])) and torch.equal(r2.params[B], t([[1], [4]]))
