"""FFA-LoRA (`ffa`): A frozen at the seeded init, only B trained and exchanged; exact aggregation; B's bytes only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from fedit.config import Config
from fedit.model.lora import load_adapter_params
from fedit.strategies import RoundContext
from fedit.strategies._math import aggregation_error
from fedit.strategies.ffa import FFALoRA
from fedit.types import ClientUpdate

CTX = RoundContext(round=1, seed=0, num_clients=3, sampled=(0, 1, 2))
A, B = "m.lora_A.weight", "m.lora_B.weight"


def test_ffa_averages_b_by_examples_and_returns_a_untouched() -> None:
    a = torch.tensor([[1.0, -2.0]])  # r = 1, d_in = 2
    g = {A: a, B: torch.zeros(2, 1)}
    ups = [ClientUpdate(0, {B: torch.tensor([[1.0], [2.0]])}, 1), ClientUpdate(1, {B: torch.tensor([[3.0], [0.0]])}, 3)]
    out = FFALoRA().aggregate(CTX, g, ups, {})
    # B = (1 * [1, 2] + 3 * [3, 0]) / 4 = [2.5, 0.5]
    assert torch.equal(out.params[B], torch.tensor([[2.5], [0.5]]))
    assert out.params[A] is a and torch.equal(a, torch.tensor([[1.0, -2.0]]))
    # s * B_new A = sum_k p_k s B_k A: [[2.5, -5], [0.5, -1]] = 1/4 [[1, -2], [2, -4]] + 3/4 [[3, -6], [0, 0]]
    assert torch.equal(out.params[B] @ a, torch.tensor([[2.5, -5.0], [0.5, -1.0]]))
    assert out.base_delta is None


def test_ffa_is_exact_on_random_matrices_fp64() -> None:
    gen = torch.Generator().manual_seed(3)
    shapes = {"p.q": (7, 5), "p.v": (3, 9)}  # (d_out, d_in) per module, r = 4
    g = {}
    for m, (d_out, d_in) in shapes.items():
        g[f"{m}.lora_A.weight"] = torch.randn(4, d_in, generator=gen, dtype=torch.float64)
        g[f"{m}.lora_B.weight"] = torch.zeros(d_out, 4, dtype=torch.float64)
    n = [2, 7, 11]
    ups = [ClientUpdate(i, {f"{m}.lora_B.weight": torch.randn(d, 4, generator=gen, dtype=torch.float64)
                            for m, (d, _) in shapes.items()}, n[i]) for i in range(3)]
    out = FFALoRA().aggregate(CTX, g, ups, {})
    for m in shapes:
        a = g[f"{m}.lora_A.weight"]
        assert torch.equal(out.params[f"{m}.lora_A.weight"], a)
        exact = sum(n[i] / 20 * ups[i].params[f"{m}.lora_B.weight"] @ a for i in range(3))
        assert torch.allclose(out.params[f"{m}.lora_B.weight"] @ a, exact, rtol=0, atol=1e-12)
    assert aggregation_error(g, ups) < 1e-7  # A is the global one for every client: nothing is left out


def test_ffa_plan_tasks_and_expected_updates_hold_b_only() -> None:
    keys = ["base_model.model.l.0.q_proj.lora_A.weight", "base_model.model.l.0.q_proj.lora_B.weight"]
    g = {k: torch.zeros(2, 2) for k in keys}
    s = FFALoRA()
    plan = s.client_plan()
    assert [plan.trainable(k) for k in keys] == [False, True] and [plan.shared(k) for k in keys] == [False, True]
    tasks = s.configure(CTX, g, {})
    assert set(tasks) == {0, 1, 2} and all(list(t.params) == keys[1:] for t in tasks.values())
    assert list(s.expected_update(g)[0]) == keys[1:]


def test_fedit_run_strategy_ffa_uploads_exactly_b(micro_model_dir: Path, small_data_file: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    Config().override({
        "model.name": str(micro_model_dir), "model.device": "cpu", "data.source": str(small_data_file),
        "partition.clients": 4, "partition.test_size": 2, "run.clients_per_round": 3, "run.rounds": 2,
        "client.local_steps": 2, "client.batch_size": 4, "client.micro_batch_size": 2, "client.lr": 0.02,
        "lora.r": 4, "run.eval_limit": 3, "run.max_new_tokens": 2,
    }).save(cfg)
    p = subprocess.run([sys.executable, "-m", "fedit.cli", "run", "--config", str(cfg), "--strategy", "ffa",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    init = load_adapter_params(out / "round_0000" / "adapter")
    final = load_adapter_params(out / "final")
    a_keys = [k for k in init if ".lora_A." in k]
    b_keys = [k for k in init if ".lora_B." in k]
    assert a_keys and len(a_keys) == len(b_keys)
    assert all(torch.equal(init[k], final[k]) for k in a_keys)  # A bitwise the seeded init after 2 rounds
    assert all(not torch.any(init[k]) for k in b_keys) and any(torch.any(final[k]) for k in b_keys)
    b_bytes = sum(init[k].numel() * 4 for k in b_keys)  # float32
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert len(r["sampled"]) == 3 and r["replied"] == r["sampled"]
        assert r["bytes_up"] == b_bytes * len(r["replied"])
        assert r["bytes_down"] == b_bytes * len(r["sampled"])
        assert 0.0 <= r["aggregation_error"] < 1e-6
    assert not (out / "final" / "fedit_base_delta.safetensors").exists()
