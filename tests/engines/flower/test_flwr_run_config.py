"""The real `flwr run APP <connection> --run-config "..."` against a loopback SuperLink and two SuperNodes.

The app made by `fedit flower app` (appdir.write_app) says 3 rounds, r 8, lr 3e-3; the overrides on the `flwr`
command line must be what the run trains with (config.toml, metrics, the adapter's shapes). One SuperNode trains
on its warm worker, the other in its ClientApp (cold path), so both ways of rebuilding the config from the run
config are used. Every process is started in its own process group and stopped by its PID, whatever the outcome.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedit.config import Config, tomllib  # noqa: E402 - tomllib, or tomli on 3.10
from fedit.engines.flower.appdir import write_app  # noqa: E402
from fedit.engines.flower.launcher import CONNECTION, LoopbackDeployment, write_node_data  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow]


@pytest.fixture
def deployment(tmp_path: Path):
    dep = LoopbackDeployment(tmp_path / "work")
    try:
        yield dep
    finally:
        dep.stop()  # SIGTERM, then SIGKILL, each process group we started, bounded waits
    alive = [name for name, proc in dep.procs.items() if proc.poll() is None]
    assert not alive, f"still running: {alive}"


def _flwr_run(dep: LoopbackDeployment, app: Path, overrides: str, timeout: float = 90.0) -> str:
    """`flwr run APP fedit-local --run-config OVERRIDES --stream`: what the user sees (stdout and stderr)."""
    try:
        res = dep.flwr("run", str(app), CONNECTION, "--run-config", overrides, "--stream", timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"flwr run did not finish in {timeout:.0f}s; logs in {dep.logs}") from e
    return res.stdout + res.stderr


def test_flwr_run_config_overrides_reach_the_run(micro_model_dir: Path, tmp_path: Path, deployment) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2]))
    from conftest import make_records

    from fedit.pipeline import prepare_data

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in make_records(24)))
    out = tmp_path / "run"
    cfg = Config().override({
        "model.name": str(micro_model_dir), "data.source": str(data), "data.cutoff_len": 64,
        "partition.clients": 2, "partition.scheme": "iid", "partition.test_size": 1, "lora.r": 8,
        "run.rounds": 3, "run.clients_per_round": 2, "run.eval_generate": False, "run.eval_limit": 4,
        "client.local_steps": 1, "client.batch_size": 2, "client.micro_batch_size": 2, "run.out": str(out),
    })
    dirs = write_node_data(prepare_data(cfg).client_records, 2, tmp_path / "nodes")
    app = write_app(tmp_path / "app", cfg, {"num-clients": 2, "min-nodes": 2, "discovery-timeout": 60.0,
                                            "round-timeout": 60.0})
    written = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert written["run"]["rounds"] == 3 and written["client"]["lr"] == 0.003 and written["lora"]["r"] == 8

    deployment.start_superlink()  # and the [superlink.fedit-local] connection in $FLWR_HOME/config.toml
    sock = deployment.work / "node_0.sock"
    deployment.start_worker("node_0", sock, threads=1)
    deployment.start_supernode("node_0", {"data-dir": str(dirs[0]), "worker": str(sock)}, threads=1)
    deployment.start_supernode("node_1", {"data-dir": str(dirs[1])}, threads=1)  # cold: trains in the ClientApp

    # a key the app does not have: Flower itself refuses the run (flwr 1.42 tells the user "Invalid run
    # configuration."; the SuperLink's log names the key), before any ServerApp starts
    seen = _flwr_run(deployment, app, "client.learning_rate=0.001")
    assert "Invalid run configuration" in seen and not out.exists(), seen
    assert "Key 'client.learning_rate' is not present" in (deployment.logs / "superlink.log").read_text()

    # a bad value for a key the app has: fedit refuses it in the ServerApp, one line naming the key, no run dir
    seen = _flwr_run(deployment, app, "client.lr='fast' run.rounds=1")
    status = deployment.run_status(int(re.search(r"started run (\d+)", seen).group(1)))[0]
    assert status == "finished:failed", status
    assert "Flower run config: client.lr: expected a number, got 'fast'" in seen, seen
    assert "Traceback" not in seen, seen
    assert not out.exists()

    trained_with = "lora.r=4 lora.targets='q_proj,v_proj'"
    seen = _flwr_run(deployment, app, f"run.rounds=1 client.lr=0.001 {trained_with}")
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["run"]["rounds"] == 1, seen
    assert saved["client"]["lr"] == 0.001 and saved["lora"]["r"] == 4
    assert saved["lora"]["targets"] == ["q_proj", "v_proj"]
    assert Config.from_file(out / "config.toml").differences(cfg) == [
        ("client.lr", 0.001, 0.003), ("lora.r", 4, 8), ("lora.targets", ["q_proj", "v_proj"], ["all-linear"]),
        ("run.rounds", 1, 3)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in rows if m["round"] >= 1]
    assert [m["round"] for m in trained] == [1] and trained[0]["replied"] == [0, 1], seen  # both nodes trained
    assert (out / "round_0001").is_dir() and not (out / "round_0002").exists()
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    from safetensors import safe_open

    with safe_open(str(out / "final" / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    assert shapes and all(s[0] == 4 for k, s in shapes.items() if "lora_A" in k)
    assert all(s[1] == 4 for k, s in shapes.items() if "lora_B" in k)
    assert all(".q_proj." in k or ".v_proj." in k for k in shapes)

    # resuming through the run config may change only what `fedit run --resume` may: lr is refused, by name
    seen = _flwr_run(deployment, app, f"resume=true {trained_with} run.rounds=2 client.lr=0.01")
    assert "cannot resume" in seen and "client.lr: saved 0.001, now 0.01" in seen, seen
    assert not (out / "round_0002").exists()
