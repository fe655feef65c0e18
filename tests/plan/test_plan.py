"""The dry-run planner: its adapter, bytes and tokens equal what a real run builds and records; it reports what the
length limit does; `fedit run --dry-run` refuses what a run refuses and creates no run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedit import pipeline
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.plan import make_plan
from fedit.plan.model import find_weights, model_shape
from fedit.types import payload_bytes


def fedit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


def micro_cfg(micro_model_dir: Path, data: Path, **extra) -> Config:
    """The micro model on 80 records, 4 iid clients of 20, 2 per round, one epoch in batches of 4 (5 steps)."""
    cfg = Config().override({
        "model.name": str(micro_model_dir), "data.source": str(data), "partition.clients": 4,
        "partition.scheme": "iid", "partition.test_size": 0, "run.rounds": 1, "run.clients_per_round": 2,
        "client.local_epochs": 1.0, "client.batch_size": 4, "client.micro_batch_size": 2, "lora.r": 4,
        "model.device": "cpu", **extra,
    })
    cfg.client.local_steps = None  # epochs, as `fedit run --local-epochs 1` sets them
    return cfg


@pytest.mark.parametrize("lora", [{}, {"lora.targets": ["auto"], "lora.r": 4}, {"lora.targets": ["q_proj", "up_proj"]}])
@pytest.mark.parametrize("model", ["tiny", "micro"])
def test_adapter_params_equal_attach_lora(model: str, lora: dict, micro_model_dir: Path) -> None:
    cfg = Config().override({"model.name": "tiny" if model == "tiny" else str(micro_model_dir), **lora})
    shape = model_shape(cfg, torch.float32)
    real = pipeline.build_model(cfg).trainer.slots.get()
    assert shape.adapter_params == sum(t.numel() for t in real.values()) > 0
    assert {k: (tuple(t.shape), t.dtype) for k, t in shape.payload.items()} == \
        {k: (tuple(t.shape), t.dtype) for k, t in real.items()}
    assert payload_bytes(shape.payload) == payload_bytes(real)
    assert len(shape.lora) * 2 == len(real)
    base = pipeline.build_model(cfg).model.get_base_model()
    assert shape.params == sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)


def test_adapter_params_of_a_conv1d_model(tmp_path: Path) -> None:
    """GPT-2 (Conv1D layers, fused c_attn): the skeleton still matches the real model's adapter."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from fedit.model.lora import AdapterSlots, attach_lora

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)).save_pretrained(
        tmp_path / "gpt2")
    cfg = Config().override({"model.name": str(tmp_path / "gpt2"), "lora.targets": ["auto"], "lora.r": 2})
    shape = model_shape(cfg, torch.float32)
    real = AdapterSlots(attach_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2"), cfg.lora, 0)).get()
    assert shape.adapter_params == sum(t.numel() for t in real.values()) == 2 * 2 * (32 + 96)  # c_attn: 32 -> 96
    assert [(m.d_in, m.d_out) for m in shape.lora] == [(32, 96), (32, 96)]
    assert {m.fan_in_fan_out for m in shape.facts.modules.values()} == {True}


@pytest.mark.parametrize("strategy", ["fedavg", "ffa", "scaffold"])
def test_bytes_and_tokens_per_round_equal_a_real_run(strategy: str, micro_model_dir: Path, small_data_file: Path,
                                                     tmp_path: Path) -> None:
    cfg = micro_cfg(micro_model_dir, small_data_file, **{"strategy.name": strategy, "run.out": str(tmp_path / "r")})
    plan = make_plan(cfg, timed_steps=0)
    assert not (tmp_path / "r").exists()
    result = pipeline.run(cfg)
    m = result.rounds[0].metrics
    assert plan.sampled[0] == result.rounds[0].sampled
    assert (plan.bytes_down, plan.bytes_up) == (m["bytes_down"], m["bytes_up"])
    # one epoch of 20 examples in batches of 4: every example once, so the expected tokens are the real ones
    for cid, client in m["clients"].items():
        load = plan.clients[int(cid)]
        assert (load.steps, load.examples_per_round) == (client["steps"], client["examples"]) == (5, 20)
        assert load.tokens_per_round == client["tokens"]
    assert plan.round_tokens()[0] == m["tokens"]
    lengths = json.loads((tmp_path / "r" / "partition" / "lengths.json").read_text())
    assert lengths == plan.lengths.to_dict()  # the run counts with the same code as the plan


def test_plan_reports_truncation_and_warns(micro_model_dir: Path, small_data_file: Path) -> None:
    plan = make_plan(micro_cfg(micro_model_dir, small_data_file, **{"data.cutoff_len": 56}), timed_steps=0)
    total = plan.lengths.total
    assert total.examples == 80 and total.truncated > 4 and total.dropped > 4 and total.kept > 40
    d = plan.to_dict()
    assert d["lengths"]["warning"].startswith("WARNING: data.cutoff_len=56")
    assert plan.memory.notes[0].startswith("longest micro-batch: 2 x 56 tokens")
    assert d["memory"]["total"] > d["memory"]["components"]["process"] > 0
    assert d["memory"]["total_checkpointing"] < d["memory"]["total"]
    assert json.loads(json.dumps(d)) == d  # plain JSON
    ok = make_plan(micro_cfg(micro_model_dir, small_data_file), timed_steps=0)
    assert ok.lengths.total.affected == 0 and ok.lengths.warning() is None and not ok.notes
    none_left = make_plan(micro_cfg(micro_model_dir, small_data_file, **{"data.cutoff_len": 24}), timed_steps=0)
    assert none_left.lengths.total.dropped == 80 and len(none_left.notes) == 4  # every client would fail
    assert none_left.time_note.startswith("not estimated")


def test_plan_refuses_what_a_run_refuses(micro_model_dir: Path, small_data_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lora.targets"):
        make_plan(micro_cfg(micro_model_dir, small_data_file, **{"lora.targets": ["nope_proj"]}), timed_steps=0)
    with pytest.raises(ConfigError, match="run.clients_per_round"):
        make_plan(micro_cfg(micro_model_dir, small_data_file, **{"run.clients_per_round": 9}), timed_steps=0)
    with pytest.raises(ConfigError, match="model.name"):
        make_plan(micro_cfg(tmp_path / "no-such-model", small_data_file), timed_steps=0)
    with pytest.raises(ConfigError, match="4bit"):
        make_plan(micro_cfg(micro_model_dir, small_data_file, **{"model.quantization": "4bit"}), timed_steps=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(Exception, match="not empty"):
        make_plan(micro_cfg(micro_model_dir, small_data_file, **{"run.out": str(tmp_path / "full")}), timed_steps=0)


def test_weights_absent_means_no_time_estimate(micro_model_dir: Path, small_data_file: Path, tmp_path: Path) -> None:
    bare = tmp_path / "config-only"
    bare.mkdir()
    for f in micro_model_dir.iterdir():
        if "safetensors" not in f.name:
            shutil.copy(f, bare / f.name)
    assert find_weights(str(bare))[0] is None and find_weights(str(micro_model_dir))[0] == str(micro_model_dir)
    plan = make_plan(micro_cfg(bare, small_data_file))
    assert plan.timing is None and plan.time_note.startswith("not estimated: weights not loaded")
    timed = make_plan(micro_cfg(micro_model_dir, small_data_file))
    assert timed.timing is not None and timed.timing.steps == 3 and timed.seconds_per_round is not None
    assert plan.shape.adapter_params == timed.shape.adapter_params  # the plan itself needs no weights


@pytest.mark.parametrize("model", ["default", "hub-style"])
def test_dry_run_cli_creates_no_run_directory(model: str, micro_model_dir: Path, tmp_path: Path) -> None:
    args = [] if model == "default" else ["--model", str(micro_model_dir)]
    t0 = time.perf_counter()
    p = fedit("run", "--dry-run", "--json", "plan.json", "--out", "run", *args, cwd=tmp_path)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    print(f"fedit run --dry-run ({model}): {wall:.1f}s wall")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["plan.json"]  # no run/, no runs/
    assert "plan: estimated peak memory" in p.stdout and "no run directory was created" in p.stdout
    d = json.loads((tmp_path / "plan.json").read_text())
    assert d["time"]["estimated"] and d["adapter"]["params"] > 0 and d["clients"]["count"] == 10
    assert wall < 60  # loose: docs/deployment.md gives the measured figure (the target is < 10 s)


def test_dry_run_cli_errors(micro_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    def run(*args: str) -> str:
        r = CliRunner().invoke(app, ["run", *args], env={"COLUMNS": "200"})
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        return r.output

    assert "--json: only with --dry-run" in run("--json", str(tmp_path / "p.json"), "--model", str(micro_model_dir))
    assert "lora.targets" in run("--dry-run", "--model", str(micro_model_dir), "--lora-targets", "nope_proj")
    assert "run.clients_per_round" in run("--dry-run", "--model", str(micro_model_dir), "--clients-per-round", "11")
    assert not (tmp_path / "p.json").exists()


def test_dry_run_of_a_resume_checks_it_and_touches_nothing(micro_model_dir: Path, small_data_file: Path,
                                                           tmp_path: Path) -> None:
    from fedit.errors import CheckpointError

    out = tmp_path / "r"
    cfg = micro_cfg(micro_model_dir, small_data_file, **{"run.out": str(out)})
    cfg.client.local_steps = 2  # (a None local_steps is not written to config.toml, so resume would differ)
    pipeline.run(cfg)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    plan = make_plan(cfg.override({"run.rounds": 2}), resume=out, timed_steps=0)
    assert len(plan.sampled) == 2
    with pytest.raises(CheckpointError, match="client.lr"):
        make_plan(cfg.override({"client.lr": 0.5}), resume=out, timed_steps=0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
