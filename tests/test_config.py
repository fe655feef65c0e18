"""Config: TOML loading, overrides, validation with named keys, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedit.config import Config
from fedit.errors import ConfigError


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = Config().override({"run.rounds": 7, "lora.targets": ["q_proj"], "data.fields": {"instruction": "q"}})
    p = tmp_path / "c.toml"
    cfg.save(p)
    back = Config.from_file(p)
    assert back == cfg
    assert back.run.rounds == 7 and back.lora.targets == ["q_proj"]


def test_file_then_flags(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[run]\nrounds = 4\nseed = 3\n[client]\nlr = 0.001\n")
    cfg = Config.from_file(p).override({"run.rounds": 9, "client.lr": None})
    assert (cfg.run.rounds, cfg.run.seed, cfg.client.lr) == (9, 3, 0.001)


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("[run]\nrounds = 0\n", r"run.rounds: got 0, expected an integer >= 1"),
        ("[run]\nround = 3\n", r"unknown setting 'run.round'|unknown setting run.'round'"),
        ("[client]\nbatch_size = 10\nmicro_batch_size = 4\n", r"client.batch_size: got 10, expected a multiple"),
        ("[run]\nfraction = 'half'\n", r"run.fraction: expected a number, got 'half'"),
        ("[partition]\nalpha = -1\n", r"partition.alpha: got -1.0, expected a number > 0"),
        ("[nonsense]\nx = 1\n", r"unknown setting 'nonsense'"),
        ("[run\n", r"invalid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        Config.from_file(p)


def test_unknown_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'run.nope'"):
        Config().override({"run.nope": 1})
    with pytest.raises(ConfigError, match="config file not found"):
        Config.from_file(tmp_path / "missing.toml")
