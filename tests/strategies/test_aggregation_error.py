"""The round metric `aggregation_error` = ||sum_k p_k B_k A_k - B_bar A_bar||_F / ||sum_k p_k B_k A_k||_F over all
modules, computed from r x r products: against hand values, a dense d_out x d_in computation, and in metrics.jsonl of
a run of every registered strategy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedit import pipeline
from fedit.config import Config
from fedit.strategies import STRATEGIES
from fedit.strategies._math import aggregation_error
from fedit.types import ClientUpdate


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def mod(name: str, a: list, b: list) -> dict[str, torch.Tensor]:
    return {f"{name}.lora_A.weight": t(a), f"{name}.lora_B.weight": t(b)}


def test_hand_values() -> None:
    g = mod("m", [[0, 0]], [[0], [0]]) | mod("n", [[0, 0]], [[0], [0]])
    # symmetric: sum p B A = I/2 (||.||^2 = 1/2), R = [[1,-1],[-1,1]]/4 (||.||^2 = 1/4): error = sqrt(1/2)
    sym = [ClientUpdate(0, mod("m", [[1, 0]], [[1], [0]]), 1), ClientUpdate(1, mod("m", [[0, 1]], [[0], [1]]), 1)]
    gm = {k: v for k, v in g.items() if k.startswith("m.")}
    assert aggregation_error(gm, sym) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    # asymmetric with n = (3, 1): sum p B A = [[3/4,3/4],[0,1/4]] (19/16), R = [[3/16,0],[-3/16,0]] (9/128)
    asym = [ClientUpdate(0, mod("m", [[1, 1]], [[1], [0]]), 3), ClientUpdate(1, mod("m", [[0, 1]], [[0], [1]]), 1)]
    assert aggregation_error(gm, asym) == pytest.approx(3 / math.sqrt(152), rel=1e-12)
    # both modules in one round, p = 1/2: m symmetric (1/2, 1/4), n asymmetric: sum p B A = [[1/2,1/2],[0,1/2]]
    # (3/4), R = [[1/4,0],[-1/4,0]] (1/8): error = sqrt((1/4 + 1/8) / (1/2 + 3/4)) = sqrt(3/10)
    both = [ClientUpdate(0, mod("m", [[1, 0]], [[1], [0]]) | mod("n", [[1, 1]], [[1], [0]]), 5),
            ClientUpdate(1, mod("m", [[0, 1]], [[0], [1]]) | mod("n", [[0, 1]], [[0], [1]]), 5)]
    assert aggregation_error(g, both) == pytest.approx(math.sqrt(0.3), rel=1e-12)
    # identical clients (or one client): nothing is left out
    assert aggregation_error(gm, [sym[0], ClientUpdate(1, sym[0].params, 4)]) == pytest.approx(0.0, abs=1e-7)
    assert aggregation_error(g, [ClientUpdate(0, {k: torch.zeros_like(v) for k, v in g.items()}, 1)]) == 0.0


def test_matches_a_dense_computation_with_unequal_weights() -> None:
    gen = torch.Generator().manual_seed(7)
    shapes = {"q": (6, 4), "v": (3, 8), "o": (5, 5)}  # (d_out, d_in), r = 3
    n = [1, 4, 7]
    g = {}
    for m, (d_out, d_in) in shapes.items():
        g[f"{m}.lora_A.weight"] = torch.zeros(3, d_in, dtype=torch.float64)
        g[f"{m}.lora_B.weight"] = torch.zeros(d_out, 3, dtype=torch.float64)
    ups = [ClientUpdate(i, {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in g.items()}, n[i])
           for i in range(3)]
    p = [x / 12 for x in n]
    num = den = 0.0
    for m in shapes:
        a = [u.params[f"{m}.lora_A.weight"] for u in ups]
        b = [u.params[f"{m}.lora_B.weight"] for u in ups]
        dense = sum(p[i] * (b[i] @ a[i]) for i in range(3))
        fedavg = sum(p[i] * b[i] for i in range(3)) @ sum(p[i] * a[i] for i in range(3))
        num += float(((dense - fedavg) ** 2).sum())
        den += float((dense ** 2).sum())
    want = math.sqrt(num / den)
    assert 0.05 < want < 2
    assert aggregation_error(g, ups) == pytest.approx(want, rel=1e-9)
    # uniform weights give another value: the metric weights by examples
    uniform = [ClientUpdate(u.client_id, u.params, 1) for u in ups]
    assert abs(aggregation_error(g, uniform) - want) > 1e-3


def test_a_tensor_not_sent_is_the_global_one() -> None:
    g = mod("m", [[1, 2]], [[0], [0]])
    ups = [ClientUpdate(0, {"m.lora_B.weight": t([[1], [0]])}, 1),
           ClientUpdate(1, {"m.lora_B.weight": t([[0], [3]])}, 2)]
    assert aggregation_error(g, ups) == pytest.approx(0.0, abs=1e-7)  # FFA-LoRA: (sum p B) A = sum p B A


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_run_reports_it(name: str, micro_model_dir: Path, small_data_file: Path,
                                       tmp_path: Path) -> None:
    cfg = Config().override({
        "model.name": str(micro_model_dir), "model.device": "cpu", "data.source": str(small_data_file),
        "partition.clients": 3, "partition.test_size": 2, "run.clients_per_round": 3, "run.rounds": 2,
        "run.out": str(tmp_path / "run"), "client.local_steps": 2, "client.batch_size": 4,
        "client.micro_batch_size": 2, "client.lr": 0.02, "lora.r": 4, "run.eval_limit": 2,
        "run.eval_generate": False, "strategy.name": name,
    })
    pipeline.run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        e = r["aggregation_error"]
        assert isinstance(e, float) and math.isfinite(e) and e >= 0
        if name == "ffa":  # A frozen: exact
            assert e < 1e-6
        elif name in ("fedavg", "fedex"):  # A and B both trained on three different clients
            assert e > 1e-4
