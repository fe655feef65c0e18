"""The real loopback deployment: 1 SuperLink, 2 SuperNodes, 4 logical clients; the adapter equals the simulator's.

Every process is started in its own process group and stopped by its PID, with bounded waits, also when a test
fails (the launcher's context manager, and again in the fixture finalizer).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from fedit import pipeline  # noqa: E402
from fedit.config import Config  # noqa: E402
from fedit.engines.flower.launcher import LoopbackDeployment, run_flower  # noqa: E402
from fedit.errors import ClientError  # noqa: E402

pytestmark = pytest.mark.flower


@pytest.fixture
def deployments():
    """Collects the deployments a test starts; stops them again (idempotent, bounded) whatever the outcome."""
    deps: list[LoopbackDeployment] = []
    yield deps
    for d in deps:
        d.stop()


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group? Orphans reparented to PID 1 may linger as zombies."""
    import psutil

    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


@pytest.fixture(scope="module")
def flower_cfg(micro_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2]))
    from conftest import make_records

    root = tmp_path_factory.mktemp("flower")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in make_records(40)))
    return Config().override({
        "model.name": str(micro_model_dir), "data.source": str(data), "data.cutoff_len": 64,
        "partition.clients": 4, "partition.scheme": "iid", "partition.test_size": 1,
        "run.rounds": 2, "run.clients_per_round": 3, "run.nodes": 2, "run.eval_generate": False,
        "client.local_steps": 2, "client.batch_size": 4, "client.micro_batch_size": 2, "run.out": str(root / "x"),
    })


@pytest.fixture(scope="module")
def simulated(flower_cfg: Config, tmp_path_factory: pytest.TempPathFactory):
    return pipeline.run(flower_cfg.override({"run.out": str(tmp_path_factory.mktemp("sim") / "run")}))


def _layout(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _check_equal(result, simulated) -> None:
    assert [r.round for r in result.rounds] == [r.round for r in simulated.rounds]
    assert [r.replied for r in result.rounds] == [r.replied for r in simulated.rounds]
    assert result.final_params.keys() == simulated.final_params.keys()
    for k, v in simulated.final_params.items():
        assert torch.equal(result.final_params[k], v), k  # bit for bit
    run, sim = Path(result.run_dir), Path(simulated.run_dir)
    assert _layout(run) == _layout(sim)
    assert (run / "final" / "adapter_model.safetensors").read_bytes() == \
        (sim / "final" / "adapter_model.safetensors").read_bytes()
    assert json.loads((run / "run.json").read_text()) == json.loads((sim / "run.json").read_text())


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_loopback_run_equals_simulator(flower_cfg, simulated, deployments, tmp_path, tls) -> None:
    cfg = flower_cfg.override({"run.out": str(tmp_path / "run")})
    t0 = time.perf_counter()
    result = run_flower(cfg, tls=tls, on_deploy=deployments.append, log=lambda m: None)
    wall = time.perf_counter() - t0
    print(f"\nflower loopback ({'tls' if tls else 'insecure'}): {wall:.1f}s; round seconds "
          f"{[round(r.metrics['round_seconds'], 2) for r in result.rounds]} vs simulator "
          f"{[round(r.metrics['round_seconds'], 2) for r in simulated.rounds]}")
    _check_equal(result, simulated)
    (dep,) = deployments
    assert len(dep.procs) == 5  # superlink + 2 x (supernode, worker)
    assert dep.tls == tls and (dep.certs != {}) == tls
    for name, proc in dep.procs.items():  # stopped by the launcher, process groups included
        assert proc.poll() is not None, name
        assert not _group_alive(proc.pid), name
    assert not dep.work.exists()  # the private FLWR_HOME and node data are removed after a good run


def test_unreachable_min_clients_stops_with_a_clear_error_and_stays_resumable(flower_cfg, deployments,
                                                                               tmp_path) -> None:
    # client 3's file on node 1 is empty: that node cannot load its data, so it fails every round (clients 1
    # and 3 are dropped, with the retry), and min_clients 4 of 4 cannot be met
    cfg = flower_cfg.override({"run.out": str(tmp_path / "run"), "run.clients_per_round": 4, "run.min_clients": 4,
                               "run.rounds": 1})
    import fedit.engines.flower.launcher as launcher

    real = launcher.write_node_data

    def broken(client_records, nodes, root):
        dirs = real(client_records, nodes, root)
        (dirs[1] / "client_003.jsonl").write_text("")  # client 3 has no examples on its node
        return dirs

    launcher.write_node_data = broken
    try:
        with pytest.raises(ClientError, match=r"only 2 of 4 sampled clients replied") as e:
            run_flower(cfg, on_deploy=deployments.append, log=lambda m: None, round_timeout=60)
    finally:
        launcher.write_node_data = real
    assert "resume" in str(e.value)
    run = tmp_path / "run"
    assert (run / "round_0000" / "metrics.json").is_file() and not (run / "round_0001").exists()
    for name, proc in deployments[0].procs.items():
        assert proc.poll() is not None and not _group_alive(proc.pid), name
