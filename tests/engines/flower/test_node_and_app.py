"""Node-config parsing, node data layout, and the Flower app directory (validated by Flower's own `flwr build`)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from fedit.config import Config, tomllib  # noqa: E402 - tomllib, or tomli on 3.10
from fedit.engines.flower.appdir import CLIENT_APP, SERVER_APP, write_app  # noqa: E402
from fedit.engines.flower.launcher import FLOWER_ENV, _bin, write_node_data  # noqa: E402
from fedit.engines.flower.node import client_files, parse_client_ids  # noqa: E402
from fedit.engines.flower.protocol import config_from_run_config  # noqa: E402
from fedit.errors import ConfigError, DataError  # noqa: E402


def test_parse_client_ids() -> None:
    assert parse_client_ids("0,2, 5") == [0, 2, 5]
    assert parse_client_ids("1-3,7") == [1, 2, 3, 7]
    assert parse_client_ids([4, 1]) == [1, 4]
    assert parse_client_ids("all") is None and parse_client_ids(None) is None
    with pytest.raises(ConfigError, match="clients"):
        parse_client_ids("a,b")


def test_node_data_holds_only_its_clients(tmp_path: Path, records) -> None:
    parts = [records[i::5] for i in range(5)]
    dirs = write_node_data(parts, 2, tmp_path)
    assert sorted(client_files({"data-dir": str(dirs[0])})) == [0, 2, 4]
    assert sorted(client_files({"data-dir": str(dirs[1])})) == [1, 3]
    assert sorted(client_files({"data-dir": str(dirs[0]), "clients": "2"})) == [2]
    with pytest.raises(DataError, match=r"no file for client\(s\) \[1\]"):
        client_files({"data-dir": str(dirs[0]), "clients": "1,2"})
    with pytest.raises(ConfigError, match="data-dir"):
        client_files({})


def test_app_dir_carries_the_config_and_builds_with_flwr(tmp_path: Path) -> None:
    cfg = Config().override({"run.rounds": 5, "lora.r": 4, "data.fields": {"instruction": "q"}})
    app = write_app(tmp_path / "app", cfg, {"num-clients": 8, "round-timeout": 30.0})
    doc = tomllib.loads((app / "pyproject.toml").read_text())
    flwr_app = doc["tool"]["flwr"]["app"]
    assert flwr_app["components"] == {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}
    assert flwr_app["config"]["num-clients"] == 8 and flwr_app["config"]["round-timeout"] == 30.0
    assert flwr_app["config"]["run"]["rounds"] == 5 and flwr_app["config"]["lora"]["r"] == 4
    assert "fedit-config" not in flwr_app["config"]
    from flwr.common.config import flatten_dict  # the run config the apps get, as Flower makes it

    assert config_from_run_config(flatten_dict(flwr_app["config"])).to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="unknown Flower run-config"):
        write_app(tmp_path / "bad", cfg, {"rounds": 3})
    env = dict(os.environ) | FLOWER_ENV | {"FLWR_HOME": str(tmp_path / "home")}
    res = subprocess.run([_bin("flwr"), "build", "--app", str(app)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert list(tmp_path.glob("*.fab")), res.stdout


# ---- the node's train-and-report loop: lazy per-client data, faults, deadlines ----------------------------------
RUN = "0123abcd"  # a run id, as the server sends it


def _tasks(clients: list[int], params: dict, state_round: int = 0) -> dict:
    """The same task for every client, as the server's default `configure` makes it."""
    from fedit.types import ClientTask

    task = ClientTask(params, config={"state_round": state_round})
    return dict.fromkeys(clients, task)


@pytest.fixture(scope="module")
def node(micro_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A node hosting clients 0..3 on the micro model; client 3's file is empty."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2]))
    from conftest import make_records

    from fedit.engines.flower.node import get_worker

    records = make_records(16)
    (d,) = write_node_data([records[i::4] for i in range(4)], 1, tmp_path_factory.mktemp("node"))
    (d / "client_003.jsonl").write_text("")
    cfg = Config().override({"model.name": str(micro_model_dir), "data.cutoff_len": 64, "client.local_steps": 1,
                             "client.batch_size": 2, "client.micro_batch_size": 2})
    node_config = {"data-dir": str(d)}
    worker = get_worker(cfg, node_config)
    return cfg, node_config, worker, worker.bundle.trainer.slots.get()


def test_discovery_and_the_worker_read_no_record_until_a_client_trains(node) -> None:
    from fedit.engines.flower.node import NodeWorker

    cfg, node_config, _, _ = node
    assert sorted(client_files(node_config)) == [0, 1, 2, 3]  # the empty file is listed: ids come from names
    fresh = NodeWorker(cfg, node_config)
    assert fresh.clients == [0, 1, 2, 3] and fresh._data == {}


def test_one_bad_client_file_fails_that_client_alone_every_round(node, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedit.data.sources as sources
    from fedit.engines.flower.node import train_clients

    cfg, node_config, worker, params = node
    worker._data.clear()
    loads: list[str] = []
    real = sources.load_records
    monkeypatch.setattr(sources, "load_records", lambda p, **kw: (loads.append(Path(p).name), real(p, **kw))[1])
    for r in (1, 2):
        report = train_clients(cfg, node_config, r, _tasks([0, 3], params), {}, RUN, time.time() + 60)
        assert [u.client_id for u in report.updates] == [0]
        assert list(report.failed) == [3] and "client_003.jsonl is empty" in report.failed[3]
    assert loads == ["client_000.jsonl", "client_003.jsonl"]  # each file read once; the error is kept too


def test_faults_are_applied_by_the_node_loop(node) -> None:
    from fedit.engines.flower.node import NodeHeld, train_clients

    cfg, node_config, worker, params = node
    faulty = cfg.override({"run.faults": ["crash@1:0", "nan@1:1", "lie@1:2=77", "slow@2:1=0.5", "hang@3:2"]})
    report = train_clients(faulty, node_config, 1, _tasks([0, 1, 2], params), {}, RUN, time.time() + 60)
    assert list(report.failed) == [0] and report.failed[0].startswith("InjectedFault: injected fault crash@1:0")
    by_id = {u.client_id: u for u in report.updates}
    assert torch.isnan(next(iter(by_id[1].params.values()))).any() and by_id[2].num_examples == 77
    t0 = time.perf_counter()
    report = train_clients(faulty, node_config, 2, _tasks([1], params), {}, RUN, time.time() + 60)
    assert time.perf_counter() - t0 >= 0.5 and [u.client_id for u in report.updates] == [1]
    deadline = time.time() + 0.3
    with pytest.raises(NodeHeld, match="held round 3 past its deadline"):  # the whole node holds the message
        train_clients(faulty, node_config, 3, _tasks([1, 2], params), {}, RUN, deadline)
    assert time.time() >= deadline + 1.0


def test_clients_not_started_before_the_deadline_are_reported(node) -> None:
    from fedit.engines.flower.node import train_clients

    cfg, node_config, worker, params = node
    report = train_clients(cfg, node_config, 1, _tasks([0, 1], params), {}, RUN, time.time() - 1)
    assert not report.updates and all("deadline passed" in r for r in report.failed.values())


# ---- per-client state on the node (SCAFFOLD's c_i) and the base delta ----------------------------------------------
def _scaffold_tasks(cfg: Config, params: dict, clients: list[int], state_round: int) -> dict:
    from fedit.server.rounds import with_state_round
    from fedit.strategies import build_strategy
    from fedit.strategies.base import RoundContext

    strategy = build_strategy(cfg.strategy)
    state = strategy.init_state(params, 4)
    tasks = strategy.configure(RoundContext(1, 0, 4, tuple(clients), RUN), params, state)
    return with_state_round(tasks, dict.fromkeys(clients, state_round))


def test_client_state_lives_on_the_node_by_round_and_survives_a_restart(node, tmp_path: Path) -> None:
    from fedit.engines.flower.node import NodeWorker, train_clients
    from fedit.engines.flower.state import NodeStateStore

    cfg, node_config, _, params = node
    node_config = node_config | {"state-dir": str(tmp_path / "state")}
    cfg = cfg.override({"strategy.name": "scaffold"})
    store = NodeStateStore(tmp_path / "state", RUN)
    r1 = train_clients(cfg, node_config, 1, _scaffold_tasks(cfg, params, [0], 0), {}, RUN, time.time() + 60)
    assert [u.client_id for u in r1.updates] == [0] and sorted(store.versions(0)) == [1]
    c1 = store.load(0, 1)
    assert c1 and any(bool(t.abs().sum()) for t in c1.values())  # c_0 after round 1: nonzero
    fresh = train_clients(cfg, node_config, 2, _scaffold_tasks(cfg, params, [0], 0), {}, RUN, time.time() + 60)
    with_state = train_clients(cfg, node_config, 2, _scaffold_tasks(cfg, params, [0], 1), {}, RUN, time.time() + 60)
    a, b = fresh.updates[0].params, with_state.updates[0].params
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the correction c - c_i used the saved c_i
    assert sorted(store.versions(0)) == [1, 2]  # round 2 may be rejected: the server may ask for round 1 again

    restarted = NodeWorker(cfg, node_config)  # a new process: nothing but the files on disk
    from fedit.engines.flower import node as node_module

    node_module._WORKERS.clear()
    node_module._WORKERS[cfg.to_toml() + repr(sorted(node_config.items()))] = restarted
    again = train_clients(cfg, node_config, 2, _scaffold_tasks(cfg, params, [0], 1), {}, RUN, time.time() + 60)
    assert all(torch.equal(again.updates[0].params[k], b[k]) for k in b)
    assert all(torch.equal(again.updates[0].extras[k], with_state.updates[0].extras[k])
               for k in with_state.updates[0].extras)

    lost = train_clients(cfg, node_config, 3, _scaffold_tasks(cfg, params, [0], 7), {}, RUN, time.time() + 60)
    assert not lost.updates and "holds the state of rounds [1, 2] only" in lost.failed[0]
    train_clients(cfg, node_config, 3, _scaffold_tasks(cfg, params, [0], 2), {}, RUN, time.time() + 60)
    assert sorted(store.versions(0)) == [2, 3]  # the server will never ask for round 1 again
    assert not list((tmp_path / "state" / RUN / "client_0").glob(".tmp-*"))


def test_the_node_sets_the_base_delta_before_training_and_restores_w0(node) -> None:
    from fedit.engines.flower.node import get_worker, train_clients
    from fedit.model.base_delta import model_facts

    cfg, node_config, _, params = node
    worker = get_worker(cfg, node_config)
    name = next(iter(model_facts(worker.bundle.trainer.model).modules.values())).weight
    weight = dict(worker.bundle.trainer.model.get_base_model().named_parameters())[
        name.replace(".weight", ".base_layer.weight")]
    w0 = weight.detach().clone()
    plain = train_clients(cfg, node_config, 1, _tasks([0], params), {}, RUN, time.time() + 60)
    delta = {name: torch.full_like(w0, 0.05, dtype=torch.float32)}
    moved = train_clients(cfg, node_config, 1, _tasks([0], params), delta, RUN, time.time() + 60)
    assert torch.equal(weight.detach(), (w0.float() + 0.05).to(w0.dtype))
    a, b = plain.updates[0].params, moved.updates[0].params
    assert any(not torch.equal(a[k], b[k]) for k in a)
    back = train_clients(cfg, node_config, 1, _tasks([0], params), {}, RUN, time.time() + 60)
    assert torch.equal(weight.detach(), w0) and all(torch.equal(back.updates[0].params[k], a[k]) for k in a)
    bad = train_clients(cfg, node_config, 1, _tasks([0, 1], params), {"no.such.weight": torch.zeros(1)}, RUN,
                        time.time() + 60)
    assert not bad.updates and all("base delta cannot be applied" in r for r in bad.failed.values())
