"""`--engine flower-sim`: fedit's ServerApp and ClientApp on Flower's Simulation Engine (Ray backend).

The settings are checked before any run directory exists; one real run (Ray starts in ~30 s on 2 cores, so only
one) of 2 virtual SuperNodes, 4 logical clients, 2 rounds gives the simulator's adapters bit for bit at one torch
thread per client, as the loopback deployment does (test_loopback.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from fedit.config import Config  # noqa: E402
from fedit.engines.flower.node import virtual_node_config  # noqa: E402
from fedit.errors import ConfigError, FeditError  # noqa: E402


@pytest.mark.parametrize(("settings", "message"), [
    ({"run.client_cpus": 0}, "run.client_cpus: got 0.0, expected a number > 0"),
    ({"run.client_cpus": float("nan")}, "run.client_cpus: expected a finite number, got nan"),
    ({"run.client_gpus": -0.5}, "run.client_gpus: got -0.5, expected a number >= 0"),
])
def test_bad_client_resources_are_refused(settings, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config().override(settings)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpus_without_cuda_fail_before_a_run_directory_exists(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from fedit.engines.flower.sim import run_flower_sim

    out = tmp_path / "run"
    cfg = Config().override({"run.out": str(out)})
    with pytest.raises(ConfigError, match="run.client_gpus: got 1.0, but this machine has no CUDA GPU"):
        run_flower_sim(cfg.override({"run.client_gpus": 1}))
    with pytest.raises(ConfigError, match="model.device: got 'cuda'.*run.client_gpus = 0"):
        run_flower_sim(cfg.override({"model.device": "cuda"}))
    assert not out.exists()


def test_a_refused_resume_and_a_taken_run_directory_fail_before_ray_starts(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from fedit.engines.flower.sim import run_flower_sim
    from fedit.errors import CheckpointError

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(FeditError, match="not empty|non-empty|exists"):
        run_flower_sim(Config().override({"run.out": str(taken)}))
    saved = tmp_path / "saved"
    saved.mkdir()
    Config().save(saved / "config.toml")
    with pytest.raises(CheckpointError, match="client.lr: saved 0.003, now 0.5"):
        run_flower_sim(Config().override({"run.out": str(saved), "client.lr": 0.5}), resume=saved)
    assert sorted(p.name for p in saved.iterdir()) == ["config.toml"]


def test_a_missing_ray_is_named_with_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r'needs Flower.s Simulation Engine \(ray not installed\): pip install '
                                          r'"fedit\[flower-sim\]"'):
        Config().override({"run.engine": "flower-sim"})


@pytest.mark.parametrize(("flags", "needle"), [
    (["--client-cpus", "0"], "run.client_cpus: got 0.0, expected a number > 0"),
    (["--client-gpus", "-1"], "run.client_gpus: got -1.0, expected a number >= 0"),
    (["--engine", "flower-sim", "--client-cpus", "4096"], "run.client_cpus: got 4096.0, but this machine has"),
])
def test_the_cli_refuses_bad_client_resources_before_a_run_directory_exists(tmp_path: Path, flags, needle) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    pytest.importorskip("ray")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "--out", str(out), *flags], env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.stdout
    assert needle in " ".join((r.stdout + r.stderr).split()) and "Traceback" not in r.stdout
    assert not out.exists()


def test_more_cpus_per_client_than_the_machine_has_are_refused() -> None:
    pytest.importorskip("ray")
    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match=f"run.client_cpus: got {cpus + 1}.0, but this machine has {cpus} CPU"):
        Config().override({"run.engine": "flower-sim", "run.client_cpus": cpus + 1})
    Config().override({"run.engine": "flower-sim", "run.client_cpus": 0.5})  # fractions: more processes than cores


def test_client_resources_are_resumable_like_the_engine() -> None:
    from fedit.config import RESUMABLE

    assert {"run.engine", "run.nodes", "run.client_cpus", "run.client_gpus"} <= RESUMABLE


def test_a_virtual_node_reads_its_clients_from_its_partition_directory(tmp_path: Path) -> None:
    assert virtual_node_config({"partition-id": 1, "num-partitions": 2}, str(tmp_path)) == {
        "partition-id": 1, "num-partitions": 2, "data-dir": str(tmp_path / "node_1")}
    given = {"partition-id": 1, "data-dir": "/data/mine"}  # a SuperNode's own data-dir wins
    assert virtual_node_config(given, str(tmp_path)) == given
    assert virtual_node_config({"data-dir": "/d"}, "") == {"data-dir": "/d"}  # loopback/real nodes: unchanged


@pytest.mark.slow
@pytest.mark.flower
def test_flower_sim_run_equals_simulator(micro_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import sys

    sys.path[:0] = [str(Path(__file__).parents[2]), str(Path(__file__).parent)]
    from conftest import make_records
    from test_loopback import _check_equal, _simulate

    from fedit.engines.flower.sim import run_flower_sim

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in make_records(40)))
    cfg = Config().override({
        "model.name": str(micro_model_dir), "data.source": str(data), "data.cutoff_len": 64,
        "partition.clients": 4, "partition.scheme": "iid", "partition.test_size": 1,
        "run.rounds": 2, "run.clients_per_round": 3, "run.nodes": 2, "run.eval_generate": False,
        "client.local_steps": 2, "client.batch_size": 4, "client.micro_batch_size": 2,
    })
    simulated = _simulate(cfg.override({"run.out": str(tmp_path / "sim")}))
    lines: list[str] = []
    pythonpath = os.environ.get("PYTHONPATH")
    result = run_flower_sim(cfg.override({"run.out": str(tmp_path / "run"), "run.engine": "flower-sim"}),
                            threads=1, log=lines.append)
    _check_equal(result, simulated)
    # Flower's Ray backend writes sys.path into PYTHONPATH; left there, a later subprocess of another Python (the
    # vLLM venv's, in tests/serve/test_vllm.py) imported this interpreter's torch and failed
    assert os.environ.get("PYTHONPATH") == pythonpath
    assert any("2 virtual SuperNodes, 4 clients, 1 CPU / 0 GPU per ClientApp process, 1 torch thread" in line
               for line in lines), lines
    assert not [p for p in Path("/tmp").glob("fedit-flower-sim-*") if (p / "app").exists()
                and str(tmp_path / "run") in (p / "app" / "pyproject.toml").read_text()]  # work dir removed


def test_scoped_env_puts_back_what_the_block_set_in_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedit.engines.flower.sim import scoped_env

    monkeypatch.setenv("PYTHONPATH", "/user/own")
    monkeypatch.delenv("FEDIT_TEST_SCOPED", raising=False)
    with scoped_env({"FEDIT_TEST_SCOPED": "1"}):
        assert os.environ["FEDIT_TEST_SCOPED"] == "1"
        os.environ["PYTHONPATH"] = "/site-packages:/user/own"  # what flwr's init_ray does
    assert os.environ["PYTHONPATH"] == "/user/own" and "FEDIT_TEST_SCOPED" not in os.environ
    monkeypatch.delenv("PYTHONPATH")
    with scoped_env({}):
        os.environ["PYTHONPATH"] = "/site-packages"
    assert "PYTHONPATH" not in os.environ
