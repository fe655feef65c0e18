"""SCAFFOLD (option II) through its real ClientPlan / ClientSession hooks and its aggregate: rounds by hand, the
quadratic where FedAvg stalls, the SGD equivalence with the paper's step, and c = mean of the c_i in a real run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from fedit import pipeline
from fedit.config import Config
from fedit.engines.base import RoundOutcome
from fedit.errors import AggregationError, ConfigError
from fedit.model.lora import load_adapter_params
from fedit.server.collect import RoundCollector
from fedit.server.sampling import sample_clients
from fedit.strategies import FedAvg, RoundContext, Strategy
from fedit.strategies.scaffold import Scaffold, ScaffoldConfig, ScaffoldSession
from fedit.types import ClientTask, ClientUpdate, Params


class Slots:
    """What a session needs of AdapterSlots: `.params`, live parameters by payload key."""

    def __init__(self, params: Params) -> None:
        self.params = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}


def client_round(strategy: Strategy, task: ClientTask, local: Params, h: float, a: float, lrs: list[float],
                 optimizer: type = torch.optim.SGD) -> tuple[Params, Params, Params | None]:
    """One client's local training on f(w) = h/2 (w - a)^2 the way train_task drives a session: start, each step's
    loss (+ penalty), optimizer step with that step's lr, after_step(slots, lr), then finish(start, trained)."""
    slots = Slots(task.params)
    session = strategy.client_plan().session(task, local)
    session.start(slots)  # type: ignore[arg-type]
    params = list(slots.params.values())
    opt = optimizer(params, lr=lrs[0])
    for lr in lrs:
        loss = sum(0.5 * h * ((p - a) ** 2).sum() for p in params)
        term = session.penalty(slots)  # type: ignore[arg-type]
        if term is not None:
            loss = loss + term
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        session.after_step(slots, lr)  # type: ignore[arg-type]
    trained = {k: p.detach().clone() for k, p in slots.params.items()}
    return session.finish(dict(task.params), trained)


def federate(strategy: Strategy, h: tuple[float, ...], a: tuple[float, ...], n: tuple[int, ...], lr: float, k: int,
             rounds: int, x0: float = 1.0) -> tuple[list[float], list[float], dict[int, Params]]:
    """Full participation on scalar quadratics; returns x after each round, c after each round (SCAFFOLD), and
    every client's local state at the end."""
    g: Params = {"w": torch.tensor([x0])}
    state = strategy.init_state(g, len(h))
    local: dict[int, Params] = {i: {} for i in range(len(h))}
    xs, cs = [], []
    for r in range(1, rounds + 1):
        ctx = RoundContext(r, 0, len(h), tuple(range(len(h))))
        ups = []
        for i, task in sorted(strategy.configure(ctx, g, state).items()):
            up, extras, new = client_round(strategy, task, local[i], h[i], a[i], [lr] * k)
            ups.append(ClientUpdate(i, up, n[i], {"loss": 0.0}, extras))
            if new is not None:
                local[i] = new
        agg = strategy.aggregate(ctx, g, ups, state)
        g, state = agg.params, agg.state
        xs.append(float(g["w"]))
        cs.append(float(state["c.w"]) if "c.w" in state else 0.0)
    return xs, cs, local


def test_first_round_by_hand() -> None:
    """algorithms.md B test 2, recomputed: h = 1, a = (0, 4), x_0 = 1, lr 0.1, K = 2, equal sizes, N = 2.
    client 0: g = y - 0: y = 1 - 0.1 * 1 = 0.9, y = 0.9 - 0.1 * 0.9 = 0.81;   c_0 = (1 - 0.81) / (2 * 0.1) = 0.95
    client 1: g = y - 4: y = 1 + 0.1 * 3 = 1.3, y = 1.3 + 0.1 * 2.7 = 1.57;   c_1 = (1 - 1.57) / 0.2 = -2.85
    server:   x = 1 + (-0.19 + 0.57) / 2 = 1.19;  c = 0 + (0.95 - 2.85) / 2 = -0.95"""
    s = Scaffold()
    g = {"w": torch.tensor([1.0])}
    state = s.init_state(g, 2)
    assert float(state["c.w"]) == 0.0 and int(state["num_clients"]) == 2
    ctx = RoundContext(1, 0, 2, (0, 1))
    tasks = s.configure(ctx, g, state)
    assert tasks[0] is tasks[1] and torch.equal(tasks[0].extras["w"], torch.zeros(1))  # c goes down as extras
    ys, ups, cis = [], [], []
    for i, a in ((0, 0.0), (1, 4.0)):
        up, extras, new = client_round(s, tasks[i], {}, 1.0, a, [0.1, 0.1])
        ys.append(float(up["w"]))
        cis.append(float(new["w"]))
        assert float(extras["w"]) == pytest.approx(float(new["w"]), abs=1e-6)  # delta_c_i = c_i+ - 0
        ups.append(ClientUpdate(i, up, 2, {"loss": 0.0}, extras))
    assert ys == pytest.approx([0.81, 1.57], abs=1e-6)
    assert cis == pytest.approx([0.95, -2.85], abs=1e-5)
    agg = s.aggregate(ctx, g, ups, state)
    assert float(agg.params["w"]) == pytest.approx(1.19, abs=1e-6)
    assert float(agg.state["c.w"]) == pytest.approx(-0.95, abs=1e-5)
    assert agg.metrics["c_norm"] == pytest.approx(0.95, abs=1e-5)


def test_two_rounds_by_hand_with_sizes_1_and_3() -> None:
    """h = 1, a = (0, 4), x_0 = 1, lr 0.1, K = 2, n = (1, 3), N = 2.
    round 1: y = (0.81, 1.57), c_i = (0.95, -2.85) (as above); x_1 = 1 + (1 * -0.19 + 3 * 0.57) / 4 = 1.38;
             c_1 = (0.95 - 2.85) / 2 = -0.95
    round 2, client 0: c - c_0 = -1.9; y <- y - 0.1 (y - 1.9) = 0.9 y + 0.19: 1.38 -> 1.432 -> 1.4788;
             c_0+ = 0.95 + 0.95 + (1.38 - 1.4788) / 0.2 = 1.9 - 0.494 = 1.406
    round 2, client 1: c - c_1 = 1.9; y <- y - 0.1 (y - 4 + 1.9) = 0.9 y + 0.21: 1.38 -> 1.452 -> 1.5168;
             c_1+ = -2.85 + 0.95 + (1.38 - 1.5168) / 0.2 = -1.9 - 0.684 = -2.584
    server:  x_2 = 1.38 + (1 * 0.0988 + 3 * 0.1368) / 4 = 1.38 + 0.1273 = 1.5073
             c_2 = -0.95 + ((1.406 - 0.95) + (-2.584 + 2.85)) / 2 = -0.95 + 0.361 = -0.589 = (1.406 - 2.584) / 2"""
    xs, cs, local = federate(Scaffold(), (1.0, 1.0), (0.0, 4.0), (1, 3), 0.1, 2, 2)
    assert xs == pytest.approx([1.38, 1.5073], abs=1e-5)
    assert cs == pytest.approx([-0.95, -0.589], abs=1e-5)
    assert [float(local[0]["w"]), float(local[1]["w"])] == pytest.approx([1.406, -2.584], abs=1e-5)


def test_partial_participation_divides_by_all_clients_and_server_lr_scales_x() -> None:
    """N = 4, one client replies with y = 3 (x = 1) and delta_c = 0.8: x = 1 + 0.5 * (3 - 1) = 2 with eta_g 0.5,
    c = 0.1 + 0.8 / 4 = 0.3 (NVFlare's c + mean(delta_c) would give 0.9)."""
    s = Scaffold(ScaffoldConfig(server_lr=0.5))
    g = {"w": torch.tensor([1.0])}
    state = s.init_state(g, 4) | {"c.w": torch.tensor([0.1])}
    ctx = RoundContext(3, 0, 4, (2,))
    agg = s.aggregate(ctx, g, [ClientUpdate(2, {"w": torch.tensor([3.0])}, 5, {"loss": 0.0},
                                            {"w": torch.tensor([0.8])})], state)
    assert float(agg.params["w"]) == 2.0
    assert float(agg.state["c.w"]) == pytest.approx(0.3, abs=1e-7)
    assert int(agg.state["num_clients"]) == 4 and float(state["c.w"]) == pytest.approx(0.1)  # input not mutated
    with pytest.raises(AggregationError, match="made for 4 clients, this run has 5"):
        s.aggregate(RoundContext(3, 0, 5, (2,)), g, [ClientUpdate(2, {"w": torch.tensor([3.0])}, 5, {},
                                                                  {"w": torch.tensor([0.8])})], state)


def test_scaffold_reaches_the_optimum_where_fedavg_stalls() -> None:
    """f_i = h_i/2 (w - a_i)^2, h = (1, 3), a = (0, 4), equal sizes, SGD lr 0.1, K = 5, x_0 = 1.
    The optimum of (f_0 + f_1) / 2 is x* = (1 * 0 + 3 * 4) / (1 + 3) = 3.
    FedAvg: K steps give y_i - a_i = r_i (x - a_i), r_i = (1 - 0.1 h_i)^5: r_0 = 0.9^5 = 0.59049, r_1 = 0.7^5 =
    0.16807; its fixed point x = mean(y_i) solves x = sum_i (1 - r_i) a_i / sum_i (1 - r_i) = 0.83193 * 4 /
    (0.40951 + 0.83193) = 3.32772 / 1.24144 = 2.680532 (contraction mean(r_i) = 0.379 per round): it stalls there.
    SCAFFOLD: with c_i = h_i (x* - a_i) and c = mean(c_i) = 0, each client's corrected gradient
    h_i (y - a_i) - c_i + c = h_i (y - x*) vanishes at y = x*, so x* is its fixed point; it reaches it."""
    r0, r1 = 0.9 ** 5, 0.7 ** 5
    stall = (1 - r1) * 4 / ((1 - r0) + (1 - r1))
    assert stall == pytest.approx(2.680532, abs=1e-6)
    fedavg, _, _ = federate(FedAvg(), (1.0, 3.0), (0.0, 4.0), (1, 1), 0.1, 5, 300)
    scaffold, cs, local = federate(Scaffold(), (1.0, 3.0), (0.0, 4.0), (1, 1), 0.1, 5, 300)
    assert fedavg[-1] == pytest.approx(stall, abs=1e-5)
    assert scaffold[-1] == pytest.approx(3.0, abs=1e-5)
    assert abs(fedavg[-1] - 3.0) > 0.3
    # at the fixed point c_i = grad f_i(x*) = h_i (3 - a_i) = (3, -3), and c = 0
    assert [float(local[0]["w"]), float(local[1]["w"])] == pytest.approx([3.0, -3.0], abs=1e-4)
    assert cs[-1] == pytest.approx(0.0, abs=1e-5)


def test_with_unequal_sizes_scaffold_optimises_the_uniform_mean() -> None:
    """What the uniform c implies (see the docstring): h = (1, 1), a = (0, 4), n = (1, 3). FedAvg's fixed point
    (r_0 = r_1 = 0.9^2 = 0.81) is the example-weighted x = (0.19 * 3 * 4) / (0.19 * 4) = 3; SCAFFOLD's corrected
    clients follow (1/N) sum_i grad f_i, so it goes to the uniform optimum (0 + 4) / 2 = 2."""
    fedavg, _, _ = federate(FedAvg(), (1.0, 1.0), (0.0, 4.0), (1, 3), 0.1, 2, 400)
    scaffold, _, _ = federate(Scaffold(), (1.0, 1.0), (0.0, 4.0), (1, 3), 0.1, 2, 400)
    assert fedavg[-1] == pytest.approx(3.0, abs=1e-4)
    assert scaffold[-1] == pytest.approx(2.0, abs=1e-4)


def test_with_sgd_the_post_step_correction_is_the_papers_step_bit_for_bit() -> None:
    """Three SGD steps with a schedule (0.5, 0.25, 0.125) on f = 1/2 ||w - a||^2 (g = w - a), every value a short
    binary fraction so each float32 operation is exact: the session's y <- SGD(y) - lr (c - c_i) must equal the
    paper's y <- y - lr (g - c_i + c) bit for bit (a wrong sign, factor, order or lr would not).
    Element 0: x = 1, a = 0, c - c_i = 0.25 - 0.5 = -0.25:
        y = 1 - 0.5 (1 - 0.25) = 0.625;  y = 0.625 - 0.25 (0.625 - 0.25) = 0.53125;
        y = 0.53125 - 0.125 (0.53125 - 0.25) = 0.49609375;
        L = 0.875, c_i+ = 0.5 - 0.25 + (1 - 0.49609375) / 0.875 = 0.25 + 0.5758928571 = 0.8258928571"""
    x = torch.tensor([1.0, -2.0, 0.5])
    a = torch.tensor([0.0, 4.0, -1.0])
    c = torch.tensor([0.25, -0.5, 1.0])
    c_i = torch.tensor([0.5, 0.75, -0.25])
    lrs = [0.5, 0.25, 0.125]
    s = Scaffold()
    task = ClientTask({"w": x}, {"w": c})
    slots = Slots(task.params)
    session = s.client_plan().session(task, {"w": c_i})
    assert isinstance(session, ScaffoldSession)
    session.start(slots)  # type: ignore[arg-type]
    opt = torch.optim.SGD(list(slots.params.values()), lr=lrs[0])
    paper = x.clone()
    for lr in lrs:
        w = slots.params["w"]
        (0.5 * ((w - a) ** 2).sum()).backward()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        session.after_step(slots, lr)  # type: ignore[arg-type]
        paper = paper - lr * ((paper - a) - c_i + c)
        assert torch.equal(slots.params["w"].detach(), paper)
    assert float(paper[0]) == 0.49609375
    up, extras, new = session.finish({"w": x}, {"w": slots.params["w"].detach().clone()})
    assert float(new["w"][0]) == pytest.approx(0.25 + (1 - 0.49609375) / 0.875, abs=1e-7)
    hand = c_i - c + (x - paper) / 0.875
    torch.testing.assert_close(new["w"], hand, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(extras["w"], hand - c_i, rtol=1e-6, atol=1e-7)


def test_with_sgd_on_random_values_the_two_forms_agree_to_rounding() -> None:
    """On arbitrary floats the two forms round differently ((y - lr g) - lr d vs y - lr (g + d)), so equality is
    to a few ulps, not bitwise."""
    gen = torch.Generator().manual_seed(1)
    x, a, c, c_i = (torch.randn(64, generator=gen) for _ in range(4))
    task = ClientTask({"w": x}, {"w": c})
    slots = Slots(task.params)
    session = Scaffold().client_plan().session(task, {"w": c_i})
    session.start(slots)  # type: ignore[arg-type]
    opt = torch.optim.SGD(list(slots.params.values()), lr=0.1)
    paper = x.clone()
    for _ in range(5):
        (0.5 * ((slots.params["w"] - a) ** 2).sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        session.after_step(slots, 0.1)  # type: ignore[arg-type]
        paper = paper - 0.1 * ((paper - a) - c_i + c)
    torch.testing.assert_close(slots.params["w"].detach(), paper, rtol=1e-6, atol=1e-6)


def test_adamw_correction_is_decoupled_and_sums_the_scheduled_lrs() -> None:
    """AdamW (torch's defaults: betas 0.9/0.999, eps 1e-8; weight decay 0) with lrs 0.1 then 0.05 on f = 1/2 w^2
    from x = 1, c = 1.5, c_i = -0.5 (c - c_i = 2):
    step 1: g = 1, m_hat = v_hat = 1: Adam moves 0.1 * 1 / (1 + 1e-8): y = 0.9; correction: y = 0.9 - 0.1 * 2 = 0.7
    step 2: g = 0.7, m = 0.9 * 0.1 + 0.1 * 0.7 = 0.16, v = 0.999 * 0.001 + 0.001 * 0.49 = 0.001489,
            m_hat / (sqrt(v_hat) + eps) = (0.16 / 0.19) / sqrt(0.001489 / 0.001999) = 0.842105 / 0.863060 = 0.975720;
            y = 0.7 - 0.05 * 0.975720 - 0.05 * 2 = 0.551214
    L = 0.1 + 0.05 = 0.15; c_i+ = -0.5 - 1.5 + (1 - 0.551214) / 0.15 = 0.991907; delta_c = 0.991907 + 0.5"""
    import math

    task = ClientTask({"w": torch.tensor([1.0])}, {"w": torch.tensor([1.5])})
    local = {"w": torch.tensor([-0.5])}
    up, extras, new = client_round(Scaffold(), task, local, 1.0, 0.0, [0.1, 0.05],
                                   optimizer=lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.0))
    adam2 = (0.16 / 0.19) / (math.sqrt(0.001489 / 0.001999) + 1e-8)
    y2 = 0.7 - 0.05 * adam2 - 0.05 * 2
    assert y2 == pytest.approx(0.551214, abs=1e-6)
    assert float(up["w"]) == pytest.approx(y2, abs=1e-6)
    assert float(new["w"]) == pytest.approx(-2.0 + (1 - y2) / 0.15, abs=1e-5)  # 0.991907
    assert float(extras["w"]) == pytest.approx(-2.0 + (1 - y2) / 0.15 + 0.5, abs=1e-5)


def test_expected_update_declares_the_extras_and_the_round_loop_checks_them() -> None:
    g = {"x.lora_A.weight": torch.zeros(2, 3), "x.lora_B.weight": torch.zeros(3, 2, dtype=torch.bfloat16)}
    s = Scaffold()
    params, extras = s.expected_update(g)
    assert params.keys() == extras.keys() == g.keys()
    assert all(extras[k].shape == g[k].shape and extras[k].dtype == torch.float32 for k in g)
    good = ClientUpdate(0, {k: v.clone() for k, v in g.items()}, 2, {"loss": 1.0},
                        {k: torch.zeros(v.shape) for k, v in g.items()})
    none = ClientUpdate(1, {k: v.clone() for k, v in g.items()}, 2, {"loss": 1.0})
    nan = ClientUpdate(2, {k: v.clone() for k, v in g.items()}, 2, {"loss": 1.0},
                       {k: torch.full(v.shape, float("nan")) for k, v in g.items()})
    ok: list[ClientUpdate] = []
    collect = RoundCollector(1, [0, 1, 2], params, extras, {}, None, [SimpleNamespace(add=ok.append)])
    collect.add_all(RoundOutcome([good, none, nan]).updates)
    failures = collect.failures({})
    assert [u.client_id for u in ok] == [0]
    assert "extras: adapter keys differ" in failures[1] and "missing 2" in failures[1]
    assert "extras:" in failures[2] and "non-finite" in failures[2]
    state = s.init_state(g, 3)
    assert state["c.x.lora_B.weight"].dtype == torch.float32  # c is float32 whatever the adapter's dtype
    with pytest.raises(AggregationError, match="client 1: extras"):
        s.aggregate(RoundContext(1, 0, 3, (0, 1)), g, [good, none], state)


def test_a_client_without_state_starts_from_zero_and_the_setting_is_validated() -> None:
    sess = ScaffoldSession({"w": torch.tensor([1.0])}, {})
    assert torch.equal(sess.c_i["w"], torch.zeros(1))
    with pytest.raises(ConfigError, match=r"strategy.scaffold.server_lr: got 0.0, expected a number > 0"):
        Config().override({"strategy.name": "scaffold", "strategy.scaffold.server_lr": 0.0})


def scaffold_config(model_dir: Path, data: Path, out: Path, rounds: int, **extra) -> Config:
    return Config().override({
        "model.name": str(model_dir), "data.source": str(data), "partition.test_size": 2, "model.device": "cpu",
        "partition.clients": 4, "run.fraction": 0.5, "run.rounds": rounds, "run.out": str(out),
        "client.local_steps": 2, "client.batch_size": 4, "client.micro_batch_size": 2, "client.lr": 1e-2,
        "client.lr_schedule": "cosine", "strategy.name": "scaffold", "run.eval_limit": 4,
        "run.eval_generate": False, "lora.r": 4, **extra,
    })


def test_c_is_the_mean_of_all_clients_c_i_after_every_round(micro_model_dir: Path, small_data_file: Path,
                                                            tmp_path: Path) -> None:
    """The real simulator on the micro model, 4 clients, 2 sampled per round, 4 rounds, one sampled client's update
    rejected (NaN) in round 2 (its c_i is not kept: it trains again from zero in round 3): after every round, c (the
    strategy state) equals (1/4) sum over all four clients of their newest saved c_i (zero for a client never
    accepted), read from the run directory's files."""
    base = scaffold_config(micro_model_dir, small_data_file, tmp_path / "x", 4, **{"run.seed": 3})
    # seed 3 samples [1, 2], [0, 2], [0, 3], [2, 3]: every client takes part, client 0 first in the faulted round
    assert [sample_clients(base.run, 4, r) for r in range(1, 5)] == [[1, 2], [0, 2], [0, 3], [2, 3]]
    victim = sample_clients(base.run, 4, 2)[0]
    cfg = base.override({"run.faults": [f"nan@2:{victim}"]})
    pipeline.run(cfg)
    run = tmp_path / "x"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert victim not in rows[2]["replied"] and victim in rows[2]["sampled"]
    assert not (run / "round_0002" / "clients" / f"{victim}.safetensors").exists()  # a rejected update's state
    newest: dict[int, dict[str, torch.Tensor]] = {}
    seen = set()
    for r in range(1, 5):
        d = run / f"round_{r:04d}"
        files = sorted((d / "clients").glob("*.safetensors"))
        assert sorted(int(f.stem) for f in files) == rows[r]["replied"]
        for f in files:
            newest[int(f.stem)] = load_file(str(f))
            seen.add(int(f.stem))
        state = load_file(str(d / "state" / "strategy.safetensors"))
        assert int(state["num_clients"]) == 4
        keys = [k[2:] for k in state if k.startswith("c.")]
        assert keys and all(set(ci) == set(keys) for ci in newest.values())
        for k in keys:
            mean = sum(ci[k].to(torch.float64) for ci in newest.values()) / 4  # absent clients: c_i = 0
            torch.testing.assert_close(state[f"c.{k}"].to(torch.float64), mean, rtol=1e-5, atol=1e-6)
        assert any(float(state[f"c.{k}"].abs().max()) > 1e-3 for k in keys)  # c is not trivially zero
    assert seen == {0, 1, 2, 3}
    a, b = list(newest.values())[:2]
    assert any(not torch.equal(a[k], b[k]) for k in a)  # clients' c_i differ
    # x and c down to each sampled client, y and delta_c up from each: twice FedAvg's payload each way
    adapter = load_adapter_params(run / "round_0001" / "adapter")
    both = sum(v.numel() * v.element_size() for v in adapter.values()) + sum(v.numel() * 4 for v in adapter.values())
    for r in range(1, 5):
        assert rows[r]["bytes_down"] == both * len(rows[r]["sampled"])
        assert rows[r]["bytes_up"] == both * len(rows[r]["sampled"])  # the rejected update crossed the wire too
