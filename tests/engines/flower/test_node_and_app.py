"""Node-config parsing, node data layout, and the Flower app directory (validated by Flower's own `flwr build`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import tomllib

pytest.importorskip("flwr")

from fedit.config import Config  # noqa: E402
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
    assert config_from_run_config(flwr_app["config"]).to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="unknown Flower run-config"):
        write_app(tmp_path / "bad", cfg, {"rounds": 3})
    env = dict(os.environ) | FLOWER_ENV | {"FLWR_HOME": str(tmp_path / "home")}
    res = subprocess.run([_bin("flwr"), "build", "--app", str(app)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert list(tmp_path.glob("*.fab")), res.stdout
