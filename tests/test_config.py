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


def test_strategy_tables_legacy_keys_and_strategy_opt(tmp_path: Path) -> None:
    from fedit.cli.run import run_overrides

    p = tmp_path / "c.toml"
    p.write_text('[strategy]\nname = "fedadam"\n[strategy.fedadam]\ntau = 0.01\n[strategy.fedprox]\nmu = 0.5\n')
    cfg = Config.from_file(p)
    assert cfg.strategy.settings().tau == 0.01 and cfg.strategy.settings("fedprox").mu == 0.5
    assert Config.from_toml(cfg.to_toml()) == cfg
    # switching keeps the other table; a flag sets the selected strategy's setting
    switched = cfg.override({"strategy.name": "fedprox", "strategy.mu": 0.7})
    assert switched.strategy.settings().mu == 0.7 and switched.strategy.settings("fedadam").tau == 0.01
    with pytest.raises(ConfigError, match=r"strategy.mu: strategy 'fedadam' has no setting 'mu'; its settings: "):
        cfg.override({"strategy.mu": 0.7})
    # config v1 (older runs): flat keys go to the selected strategy; unused v1 defaults are dropped, others refused
    v1 = tmp_path / "v1.toml"
    v1.write_text('[strategy]\nname = "fedprox"\nserver_lr = 0.01\nbeta1 = 0.9\nbeta2 = 0.99\ntau = 0.001\nmu = 0.3\n')
    assert Config.from_file(v1).strategy.settings().mu == 0.3
    v1.write_text('[strategy]\nname = "fedavg"\nmu = 0.3\n')
    with pytest.raises(ConfigError, match=r"strategy.mu: not a setting of strategy 'fedavg'"):
        Config.from_file(v1)
    v1.write_text('[strategy]\nname = "fedavg"\n[strategy.nosuch]\nx = 1\n')
    with pytest.raises(ConfigError, match=r"\[strategy.nosuch\]: no strategy is called 'nosuch'"):
        Config.from_file(v1)
    # --strategy-opt values are typed like TOML values
    over = run_overrides({"strategy": "fedadam", "strategy_opt": ["bias_correction=true", "server_lr=0.05"]})
    got = Config().override(over).strategy.settings()
    assert got.bias_correction is True and got.server_lr == 0.05
    with pytest.raises(ConfigError, match="strategy.fedadam.bias_correction: expected true or false"):
        Config().override(run_overrides({"strategy": "fedadam", "strategy_opt": ["bias_correction=maybe"]}))
    a, b = Config(), Config().override({"strategy.name": "fedadam", "strategy.fedadam.tau": 0.01})
    assert ("strategy.fedadam.tau", None, 0.01) in a.differences(b)


def test_an_unset_setting_that_defaults_to_a_value_survives_the_saved_toml() -> None:
    """`--local-epochs` unsets client.local_steps (default 20); the saved config.toml must read back unset, or a
    resumed run would train 20 steps instead of the epochs it started with."""
    cfg = Config().override({"client.local_epochs": 2.0})
    cfg.client.local_steps = None
    text = cfg.to_toml()
    assert 'local_steps = "none"' in text
    back = Config.from_toml(text)
    assert (back.client.local_steps, back.client.local_epochs) == (None, 2.0)
    assert back.differences(cfg) == []
    assert "eval_limit" not in Config().to_toml()  # unset by default: simply left out, as before
