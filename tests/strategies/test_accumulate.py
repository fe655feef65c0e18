"""Streaming aggregation (strategies/accumulate.py, the aggregation-error accumulator in strategies/_math.py):
exact sums independent of the order updates arrive in, values checked by hand and against exact rationals, FedAvg
and FedAdam streaming equal to their formulas, nothing of an update kept after it is folded in."""

from __future__ import annotations

import gc
import itertools
import weakref
from fractions import Fraction

import numpy as np
import pytest
import torch

from fedit.config import StrategyConfig
from fedit.errors import AggregationError
from fedit.strategies import build_strategy
from fedit.strategies._math import AggregationErrorAccumulator, aggregation_error
from fedit.strategies.accumulate import BufferingAccumulator, ExactSum
from fedit.strategies.base import RoundContext
from fedit.types import ClientUpdate


def test_exact_sum_by_hand_where_float64_loses_the_small_term() -> None:
    # 2^53 + 1 - 2^53: summed left to right in float64, 2^53 + 1 rounds to 2^53 and the 1 is lost
    big = float(2**53)
    assert (big + 1.0) - big == 0.0
    for order in itertools.permutations([big, 1.0, -big]):
        acc = ExactSum()
        for v in order:
            acc.add({"x": torch.tensor([v], dtype=torch.float64)})
        assert acc.total()["x"].item() == 1.0
        assert acc.weight == 3 and acc.count == 3


def test_weighted_mean_is_the_same_bits_in_every_order_and_matches_exact_rationals() -> None:
    gen = torch.Generator().manual_seed(0)
    # float32 values spanning 12 orders of magnitude, integer weights as examples counts
    values = [(torch.randn(64, generator=gen) * 10.0 ** float(e)).float() for e in (-6, -2, 0, 3, 6, 0)]
    ns = [1, 7, 3, 1000, 2, 5]
    means = []
    for order in itertools.islice(itertools.permutations(range(len(values))), 0, 720, 37):
        acc = ExactSum()
        for i in order:
            acc.add({"w": values[i]}, ns[i])
        means.append(acc.mean()["w"])
    assert all(torch.equal(m, means[0]) for m in means)
    n = sum(ns)
    for j in range(0, 64, 9):  # the exact mean, as a rational, rounded once to float64
        exact = sum(Fraction(float(values[i][j])) * ns[i] for i in range(len(values))) / n
        assert abs(Fraction(float(means[0][j])) - exact) <= abs(exact) * Fraction(2) ** -52


def _updates(k: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[ClientUpdate]]:
    gen = torch.Generator().manual_seed(seed)
    g = {"m.lora_A.weight": torch.randn(2, 5, generator=gen), "m.lora_B.weight": torch.randn(4, 2, generator=gen)}
    ups = [ClientUpdate(i, {key: v + torch.randn(v.shape, generator=gen) for key, v in g.items()}, 3 + 2 * i,
                        {"loss": 1.0}) for i in range(k)]
    return g, ups


def test_fedavg_streams_the_example_weighted_mean_in_any_order() -> None:
    g, ups = _updates(5)
    fedavg = build_strategy(StrategyConfig())
    ctx = RoundContext(1, 0, 5, tuple(range(5)))
    n = sum(u.num_examples for u in ups)
    results = []
    for order in (ups, ups[::-1], [ups[2], ups[0], ups[4], ups[1], ups[3]]):
        acc = fedavg.accumulator(ctx, g, {})
        assert acc.streaming
        for u in order:
            acc.add(u)
        results.append(acc.result().params)
    for key in g:
        assert all(torch.equal(r[key], results[0][key]) for r in results)
        by_hand = sum(u.params[key].double() * u.num_examples for u in ups) / n
        assert torch.allclose(results[0][key].double(), by_hand, atol=1e-6, rtol=0)
        assert results[0][key].dtype == g[key].dtype


def test_fedadam_steps_once_on_the_streamed_mean() -> None:
    g, ups = _updates(3, seed=1)
    cfg = StrategyConfig("fedadam")
    s = build_strategy(cfg)
    st = s.init_state(g, 3)
    agg = s.aggregate(RoundContext(1, 0, 3, (0, 1, 2)), g, ups, st)
    settings = cfg.settings()
    n = sum(u.num_examples for u in ups)
    for key in g:  # first step from m = v = 0, by hand: m = (1-b1) d, v = (1-b2) d^2, x + eta m / (sqrt(v) + tau)
        d = (sum(u.params[key].double() * u.num_examples for u in ups) / n - g[key].double()).float()
        m = (1 - settings.beta1) * d
        v = (1 - settings.beta2) * d * d
        want = g[key] + settings.server_lr * m / (v.sqrt() + settings.tau)
        assert torch.allclose(agg.params[key], want, atol=1e-6), key


def test_streaming_keeps_no_update_and_rejects_a_malformed_one() -> None:
    g, ups = _updates(3)
    acc = build_strategy(StrategyConfig()).accumulator(RoundContext(1, 0, 3, (0, 1, 2)), g, {})
    probes = []
    for u in ups:
        acc.add(u)
        probes.append(weakref.ref(u.params["m.lora_A.weight"]))
    del u, ups
    gc.collect()
    assert all(p() is None for p in probes)  # no tensor of any update survives its add
    bad = ClientUpdate(9, {"m.lora_A.weight": torch.zeros(2, 5)}, 1, {"loss": 1.0})
    with pytest.raises(AggregationError, match="client 9"):
        acc.add(bad)


def test_buffering_accumulator_hands_aggregate_the_updates_sorted_by_id() -> None:
    seen = []
    acc = BufferingAccumulator(lambda us: seen.extend(u.client_id for u in us) or "done")
    for cid in (4, 1, 3):
        acc.add(ClientUpdate(cid, {}, 1))
    assert acc.result() == "done" and seen == [1, 3, 4]


def _dense_error(g: dict[str, torch.Tensor], ups: list[ClientUpdate]) -> float:
    n = sum(u.num_examples for u in ups)
    a = [u.params["m.lora_A.weight"].double() for u in ups]
    b = [u.params["m.lora_B.weight"].double() for u in ups]
    p = [u.num_examples / n for u in ups]
    m = sum(pk * bk @ ak for pk, ak, bk in zip(p, a, b, strict=True))
    fedavg = sum(pk * bk for pk, bk in zip(p, b, strict=True)) @ sum(pk * ak for pk, ak in zip(p, a, strict=True))
    return float((m - fedavg).norm() / m.norm())


def test_aggregation_error_exact_and_sketched() -> None:
    g, ups = _updates(4, seed=3)
    want = _dense_error(g, ups)
    assert want > 0.05
    exact = AggregationErrorAccumulator(g)
    for u in ups[::-1]:
        exact.add(u)
    assert exact.exact and exact.result() == pytest.approx(want, rel=1e-12)
    assert aggregation_error(g, ups) == exact.result()  # the same value in id order
    # a budget too small for the dense 4 x 5 accumulator: a seeded sketch, an estimate, the same in any order
    sketched = [aggregation_error(g, order, budget_bytes=16, rng=np.random.default_rng(7)) for order in
                (ups, ups[::-1])]
    assert sketched[0] == sketched[1] and sketched[0] == pytest.approx(want, rel=0.35)
    assert not AggregationErrorAccumulator(g, budget_bytes=16).exact
    one = [ClientUpdate(0, dict(ups[0].params), 1, {"loss": 1.0})]
    assert aggregation_error(g, one) == pytest.approx(0.0, abs=1e-12)  # one client: averaging is exact
