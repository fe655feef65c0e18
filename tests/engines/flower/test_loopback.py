"""The real loopback deployment: 1 SuperLink, 2 SuperNodes, 4 logical clients; the adapter equals the simulator's.

Both sides run with one torch thread per training process (the simulator in this process, each node's worker),
which is what the bit-for-bit guarantee needs. Faults are injected through `run.faults` (fedit.faults) and real
process kills. Every process is started in its own process group and stopped by its PID, with bounded waits, also
when a test fails (the launcher's context manager, and again in the fixture finalizer).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
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
    """Collects the deployments a test starts; stops them again (idempotent, bounded) whatever the outcome, and
    removes their work directories (kept by the launcher after a failed run, for its logs)."""
    import shutil

    deps: list[LoopbackDeployment] = []
    yield deps
    for d in deps:
        d.stop()
        shutil.rmtree(d.work, ignore_errors=True)


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


def _simulate(cfg: Config):
    """The simulator's run at one torch thread (the Flower side pins one per node worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pipeline.run(cfg)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def simulated(flower_cfg: Config, tmp_path_factory: pytest.TempPathFactory):
    return _simulate(flower_cfg.override({"run.out": str(tmp_path_factory.mktemp("sim") / "run")}))


def _layout(root: Path) -> list[str]:
    """The run directory's files, without the clients' own state, which the simulator keeps with each round and
    Flower nodes keep beside their data."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent.name != "clients")


def _check_equal(result, simulated) -> None:
    assert [r.round for r in result.rounds] == [r.round for r in simulated.rounds]
    assert [r.replied for r in result.rounds] == [r.replied for r in simulated.rounds]
    assert result.final_params.keys() == simulated.final_params.keys()
    for k, v in simulated.final_params.items():
        assert torch.equal(result.final_params[k], v), k  # bit for bit
    run, sim = Path(result.run_dir), Path(simulated.run_dir)
    assert _layout(run) == _layout(sim)
    for f in _layout(sim):  # every adapter, strategy state and base delta of every round, and final/
        if f.endswith(".safetensors"):
            assert (run / f).read_bytes() == (sim / f).read_bytes(), f
    run_info, sim_info = (json.loads((d / "run.json").read_text()) for d in (run, sim))
    assert run_info.pop("run_id") != sim_info.pop("run_id")  # each run its own id (nodes key client state by it)
    assert run_info == sim_info


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_loopback_run_equals_simulator(flower_cfg, simulated, deployments, tmp_path, tls) -> None:
    cfg = flower_cfg.override({"run.out": str(tmp_path / "run")})
    t0 = time.perf_counter()
    result = run_flower(cfg, tls=tls, threads=1, on_deploy=deployments.append, log=lambda m: None)
    wall = time.perf_counter() - t0
    print(f"\nflower loopback ({'tls' if tls else 'insecure'}): {wall:.1f}s; round seconds "
          f"{[round(r.metrics['round_seconds'], 2) for r in result.rounds]} vs simulator "
          f"{[round(r.metrics['round_seconds'], 2) for r in simulated.rounds]}")
    _check_equal(result, simulated)
    (dep,) = deployments
    assert len(dep.procs) == 7  # superlink + 2 x (supernode, its resident ClientApp, worker)
    assert dep.tls == tls and (dep.certs != {}) == tls
    for name, proc in dep.procs.items():  # stopped by the launcher, process groups included
        assert proc.poll() is not None, name
        assert not _group_alive(proc.pid), name
    assert not dep.work.exists()  # the private FLWR_HOME and node data are removed after a good run


@pytest.mark.parametrize("strategy", ["scaffold", "fedex"])
def test_loopback_equals_simulator_with_client_state_and_a_base_delta(flower_cfg, deployments, tmp_path,
                                                                      strategy) -> None:
    """SCAFFOLD: c_i in each node's state store, c down and delta c_i up as extras, 3 rounds of 3 of 4 clients (so
    clients skip rounds and come back to their saved state); FedEx-LoRA: the cumulative base delta sent to the
    nodes, which set W0 + delta before training. Both bit for bit equal to the simulator."""
    cfg = flower_cfg.override({"strategy.name": strategy, "run.rounds": 3, "run.seed": 2})
    sim = _simulate(cfg.override({"run.out": str(tmp_path / "sim")}))
    result = run_flower(cfg.override({"run.out": str(tmp_path / "run")}), threads=1, on_deploy=deployments.append,
                        log=lambda m: None)
    _check_equal(result, sim)
    # seed 2 samples [0, 1, 3], [0, 1, 2], [0, 1, 3]: client 3 skips round 2 and comes back to its round-1 state
    assert [r.sampled for r in sim.rounds] == [[0, 1, 3], [0, 1, 2], [0, 1, 3]]
    if strategy == "scaffold":  # the simulator checkpoints the c_i; the Flower run left them on the nodes
        assert list(Path(sim.run_dir).glob("round_*/clients/*.safetensors"))
        assert not list(Path(result.run_dir).glob("round_*/clients/*.safetensors"))
    else:
        assert (Path(result.run_dir) / "final" / "fedit_base_delta.safetensors").is_file()


def test_unreachable_min_clients_stops_with_a_clear_error_and_stays_resumable(flower_cfg, deployments,
                                                                               tmp_path) -> None:
    # client 3's file on node 1 is empty: client 3 fails (also on the retry), alone ("3 of 4": its neighbour
    # client 1 on the same node trains), and min_clients 4 of 4 cannot be met
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
        with pytest.raises(ClientError, match=r"only 3 of 4 sampled clients sent a usable update") as e:
            run_flower(cfg, on_deploy=deployments.append, log=lambda m: None, round_timeout=60)
    finally:
        launcher.write_node_data = real
    assert "resume" in str(e.value)
    run = tmp_path / "run"
    assert (run / "round_0000" / "metrics.json").is_file() and not (run / "round_0001").exists()
    for name, proc in deployments[0].procs.items():
        assert proc.poll() is not None and not _group_alive(proc.pid), name


def _rounds(run: Path) -> dict[int, dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {m["round"]: m for m in map(json.loads, lines) if m["round"] >= 1}


@pytest.mark.slow
def test_faulty_clients_and_a_hung_node_cost_only_themselves(flower_cfg, deployments, tmp_path) -> None:
    # node 0 hosts clients 0 and 2, node 1 clients 1 and 3 (client c on node c % 2); every round samples all 4
    faults = ["crash@1:0", "slow@1:3=3", "nan@2:1", "lie@2:2", "hang@3:1"]
    cfg = flower_cfg.override({"run.out": str(tmp_path / "run"), "run.rounds": 3, "run.clients_per_round": 4,
                               "run.min_clients": 2, "run.faults": faults})
    result = run_flower(cfg, threads=1, round_timeout=300.0, round_grace=15.0, on_deploy=deployments.append,
                        log=lambda m: None)
    rounds = _rounds(tmp_path / "run")
    print("\n" + "\n".join(f"round {r}: {m['round_seconds']:.1f}s, replied {m['replied']}, failed {m['failed']}"
                           for r, m in rounds.items()))
    r1, r2, r3 = rounds[1], rounds[2], rounds[3]
    assert r1["replied"] == [1, 2, 3] and list(r1["failed"]) == ["0"]
    assert "InjectedFault" in r1["failed"]["0"] and "crash@1:0" in r1["failed"]["0"]
    assert r1["round_seconds"] >= 3.0  # client 3 was slow, and was waited for
    assert r2["replied"] == [0, 3] and sorted(r2["failed"]) == ["1", "2"]
    assert "update rejected" in r2["failed"]["1"] and "non-finite" in r2["failed"]["1"]
    assert "update rejected" in r2["failed"]["2"] and "claims 1000000000 examples" in r2["failed"]["2"]
    # round 3: node 1 holds its message (hang); the round ends at min_clients replies plus the grace period
    assert r3["replied"] == [0, 2] and sorted(r3["failed"]) == ["1", "3"]
    for c in ("1", "3"):
        assert r3["failed"][c].startswith("node ") and "did not reply within the round's grace period" in \
            r3["failed"][c]
    assert r3["round_seconds"] < 100.0  # the round timeout is 300 s
    for k, t in result.final_params.items():
        assert torch.isfinite(t).all(), k
    # ... and it is exactly the run in which those clients simply failed (the simulator, one thread, crashes)
    crashed = ["crash@1:0", "crash@2:1", "crash@2:2", "crash@3:1", "crash@3:3"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = pipeline.run(cfg.override({"run.out": str(tmp_path / "plain"), "run.faults": crashed}))
    finally:
        torch.set_num_threads(threads)
    for k, v in plain.final_params.items():
        assert torch.equal(result.final_params[k], v), k
    for name, proc in deployments[0].procs.items():
        assert proc.poll() is not None and not _group_alive(proc.pid), name


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_run_completes(flower_cfg, simulated, deployments, tmp_path) -> None:
    # round 2 samples clients 1, 2, 3; client 2 (node 0) is slow, so node 0's worker is mid-request when killed:
    # the ClientApp trains that message in-process (cold path), the launcher restarts the worker
    cfg = flower_cfg.override({"run.out": str(tmp_path / "run"), "run.faults": ["slow@2:2=4"]})
    killed: list[int] = []

    def kill_mid_round(dep: LoopbackDeployment) -> None:
        log = dep.logs / "node_0-worker.log"
        give_up = time.monotonic() + 400
        while time.monotonic() < give_up and not killed:
            if log.is_file() and "round 2: training" in log.read_text(errors="replace"):
                proc = dep.procs["node_0-worker"]
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
            time.sleep(0.1)

    def on_deploy(dep: LoopbackDeployment) -> None:
        deployments.append(dep)
        threading.Thread(target=kill_mid_round, args=(dep,), daemon=True).start()

    result = run_flower(cfg, threads=1, round_grace=120.0, on_deploy=on_deploy, log=lambda m: None)
    (dep,) = deployments
    assert killed and any("node_0-worker restarted" in e for e in dep.events), dep.events
    assert dep.procs["node_0-worker"].pid != killed[0]
    rounds = _rounds(tmp_path / "run")
    assert rounds[2]["replied"] == [1, 2, 3] and rounds[2]["failed"] == {}
    for k, v in simulated.final_params.items():  # the cold path trains exactly as the worker does
        assert torch.equal(result.final_params[k], v), k
    assert all(math.isfinite(m["train_loss"]) for m in rounds.values())
    for name, proc in dep.procs.items():
        assert proc.poll() is not None and not _group_alive(proc.pid), name
