"""Checkpoints and resume: 2 rounds + resume to 3 == 3 rounds, bit for bit; also after SIGKILL mid-round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit import pipeline
from fedit.config import Config
from fedit.errors import CheckpointError
from fedit.model.lora import load_adapter_params


def small_config(model_dir: Path, data: Path, out: Path, rounds: int, strategy: str = "fedadam",
                 steps: int = 2) -> Config:
    return Config().override({
        "model.name": str(model_dir), "data.source": str(data), "partition.test_size": 2, "model.device": "cpu",
        "partition.clients": 4, "run.fraction": 0.5,
        "run.rounds": rounds, "run.out": str(out), "client.local_steps": steps, "client.batch_size": 4,
        "client.micro_batch_size": 2, "client.lr": 1e-2, "strategy.name": strategy, "run.eval_limit": 8,
        "run.max_new_tokens": 4, "lora.r": 4,
    })


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_bit_identical_and_checkpoints_are_complete(micro_model_dir: Path, small_data_file: Path,
                                                              tmp_path: Path) -> None:
    full = pipeline.run(small_config(micro_model_dir, small_data_file, tmp_path / "full", 3))
    part = pipeline.run(small_config(micro_model_dir, small_data_file, tmp_path / "part", 2))
    assert not same(full.final_params, part.final_params)
    resumed = pipeline.run(small_config(micro_model_dir, small_data_file, tmp_path / "part", 3),
                           resume=tmp_path / "part")
    assert same(full.final_params, resumed.final_params)  # strategy state (FedAdam m, v), sampling, data order
    assert same(load_adapter_params(tmp_path / "full" / "final"), load_adapter_params(tmp_path / "part" / "final"))
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    full_rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["sampled"] for r in rows] == [r["sampled"] for r in full_rows]
    r1 = rows[1]
    payload = sum(v.numel() * v.element_size() for v in full.final_params.values())
    assert r1["bytes_down"] == payload * len(r1["sampled"]) and r1["bytes_up"] == payload * len(r1["replied"])
    for key in ("train_loss", "examples", "tokens", "train_seconds", "aggregate_seconds", "checkpoint_seconds"):
        assert key in r1
    ev = json.loads((tmp_path / "part" / "eval.json").read_text())
    assert set(ev["mean"]) >= {"base_score", "final_score", "base_loss", "final_loss"}


@pytest.mark.parametrize("strategy", ["scaffold", "fedyogi"])
def test_resume_is_bit_identical_with_server_and_client_state(strategy: str, micro_model_dir: Path,
                                                              small_data_file: Path, tmp_path: Path) -> None:
    """2 rounds + resume + 1 == 3 rounds for a strategy with server state (FedYogi's m, v, t; SCAFFOLD's c, N)
    and, for SCAFFOLD, per-client state (each c_i, saved with the round that produced it)."""
    full = pipeline.run(small_config(micro_model_dir, small_data_file, tmp_path / "full", 3, strategy))
    part = pipeline.run(small_config(micro_model_dir, small_data_file, tmp_path / "part", 2, strategy))
    resumed = pipeline.run(small_config(micro_model_dir, small_data_file, tmp_path / "part", 3, strategy),
                           resume=tmp_path / "part")
    assert not same(full.final_params, part.final_params)
    assert same(full.final_params, resumed.final_params)
    rows = {d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("full", "part")}
    assert [r["sampled"] for r in rows["part"]] == [r["sampled"] for r in rows["full"]]
    assert [r.get("train_loss") for r in rows["part"]] == [r.get("train_loss") for r in rows["full"]]
    if strategy == "scaffold":  # c_i of clients sampled before the resume are read back, not restarted at zero
        sampled = [set(r["sampled"]) for r in rows["full"][1:]]
        assert sampled[2] & (sampled[0] | sampled[1]), "round 3 must re-sample a client of rounds 1-2"
        newest: dict[int, dict[str, torch.Tensor]] = {}  # c = (1/N) sum of every client's newest c_i, after resume
        for r in (1, 2, 3):
            for f in (tmp_path / "part" / f"round_{r:04d}" / "clients").glob("*.safetensors"):
                newest[int(f.stem)] = load_file(str(f))
        state = load_file(str(tmp_path / "part" / "round_0003" / "state" / "strategy.safetensors"))
        for k in [k[2:] for k in state if k.startswith("c.")]:
            mean = sum(ci[k].to(torch.float64) for ci in newest.values()) / 4
            torch.testing.assert_close(state[f"c.{k}"].to(torch.float64), mean, rtol=1e-5, atol=1e-6)


def test_refuses_non_empty_out_and_foreign_resume(micro_model_dir: Path, small_data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not empty and is not a fedit output directory"):
        pipeline.run(small_config(micro_model_dir, small_data_file, out, 1))
    assert (out / "keep.txt").exists()
    with pytest.raises(CheckpointError, match="not a fedit run directory"):
        pipeline.run(small_config(micro_model_dir, small_data_file, out, 1), resume=out)
    done = tmp_path / "done"
    pipeline.run(small_config(micro_model_dir, small_data_file, done, 1))
    other = small_config(micro_model_dir, small_data_file, done, 2).override({"partition.clients": 3})
    with pytest.raises(CheckpointError, match="partition.clients: saved 4, now 3"):
        pipeline.run(other, resume=done)
    changed = tmp_path / "changed.jsonl"  # same settings, other records: the fingerprint tells
    changed.write_text(small_data_file.read_text().replace("Answer 1 ", "Answer one "))
    moved = small_config(micro_model_dir, changed, done, 2)
    (done / "config.toml").write_text(moved.to_toml())
    with pytest.raises(CheckpointError, match="data differs"):
        pipeline.run(moved, resume=done)


@pytest.mark.slow
def test_sigkill_mid_round_then_resume(micro_model_dir: Path, small_data_file: Path, tmp_path: Path) -> None:
    ref = pipeline.run(small_config(micro_model_dir, small_data_file, tmp_path / "ref", 3, steps=12))
    cfg = small_config(micro_model_dir, small_data_file, tmp_path / "killed", 3, steps=12)
    cfg_file = tmp_path / "run.toml"
    cfg.save(cfg_file)
    proc = subprocess.Popen([sys.executable, "-m", "fedit.cli", "run", "--config", str(cfg_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "killed" / "round_0001" / "metrics.json").exists():
            assert proc.poll() is None, "run ended before round 1 was saved"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # round 2 is now in progress
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (tmp_path / "killed" / "round_0003").exists()
    resumed = pipeline.run(cfg, resume=tmp_path / "killed")
    assert same(ref.final_params, resumed.final_params)
    assert not list((tmp_path / "killed").glob(".tmp-*"))


def test_data_on_nodes_view_needs_no_training_data() -> None:
    """A Flower server with `data.source = "nodes"` knows only client ids and the public held-out set."""
    from fedit.pipeline import data_on_nodes

    cfg = Config().override({"data.source": "nodes"})
    view = data_on_nodes(cfg, [2, 0, 1])
    assert view.client_records == [[], [], []] and view.test == []
    assert view.fingerprint == data_on_nodes(cfg, [0, 1, 2]).fingerprint
    assert view.fingerprint != data_on_nodes(cfg, [0, 1, 2, 3]).fingerprint
