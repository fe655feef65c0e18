"""The run config a Flower app carries, read back into the fedit config: dotted keys as `flwr run --run-config`
overrides them, errors naming the key, the old `fedit-config` apps, and the resume guard for overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args  # noqa: E402

from fedit.config import Config  # noqa: E402
from fedit.engines.flower.appdir import app_pyproject  # noqa: E402
from fedit.engines.flower.protocol import (  # noqa: E402
    RUN_CONFIG_DEFAULTS,
    config_from_run_config,
    fedit_settings,
)
from fedit.errors import CheckpointError, ConfigError  # noqa: E402

CFG = Config().override({"run.rounds": 5, "lora.r": 4, "lora.targets": ["q_proj", "v_proj"],
                         "data.fields": {"instruction": "q"}, "strategy.fedprox.mu": 0.2})


def _run_config(cfg: Config, overrides: str = "") -> dict:
    """The run config the ServerApp gets: the app's config flattened and fused with `--run-config`, as Flower
    does it (flwr.common.config, the functions the SuperLink and `flwr run` call)."""
    defaults = flatten_dict(app_pyproject(cfg)["tool"]["flwr"]["app"]["config"])
    return fuse_dicts(defaults, parse_config_args([overrides] if overrides else None), check_keys=True)


def test_the_app_config_reads_back_as_the_config() -> None:
    rc = _run_config(CFG)
    assert set(RUN_CONFIG_DEFAULTS) <= set(rc) and "fedit-config" not in rc
    back = config_from_run_config(rc)
    # the same config.toml: a changed other strategy's table is kept, the untouched ones are not added
    assert back.to_dict() == CFG.to_dict() and sorted(back.strategy.tables) == ["fedavg", "fedprox"]
    assert config_from_run_config(fedit_settings(rc)).to_dict() == CFG.to_dict()  # what the node worker gets


def test_run_config_overrides() -> None:
    rc = _run_config(CFG, "run.rounds=1 client.lr=0.001 lora.targets='k_proj' run.eval_limit=3 "
                          "strategy.name='fedadam' strategy.fedadam.tau=0.01 data.fields='response=a'")
    cfg = config_from_run_config(rc)
    assert cfg.run.rounds == 1 and cfg.client.lr == 0.001 and cfg.lora.targets == ["k_proj"]
    assert cfg.run.eval_limit == 3 and cfg.data.fields == {"response": "a"}
    assert cfg.strategy.name == "fedadam" and cfg.strategy.settings().tau == 0.01
    assert cfg.lora.r == 4  # not overridden: the app's value
    assert config_from_run_config(_run_config(CFG.override({"run.eval_limit": 3}), "run.eval_limit='none'")
                                  ).run.eval_limit is None
    assert config_from_run_config(_run_config(CFG, "client.lr=1")).client.lr == 1.0  # TOML's int for a float


@pytest.mark.parametrize(("overrides", "message"), [
    ("client.lr='fast'", r"^Flower run config: client\.lr: expected a number, got 'fast'$"),
    ("run.rounds=1.5", r"^Flower run config: run\.rounds: expected an integer, got 1\.5$"),
    ("run.rounds=0", r"^Flower run config: run\.rounds: got 0, expected an integer >= 1$"),
    ("client.lr='none'", r"^Flower run config: client\.lr: this setting must be set"),
    ("strategy.name='fedadm'", r"^Flower run config: strategy\.name: got 'fedadm', expected one of: fedadagrad"),
    ("lora.targets=3", r"^Flower run config: lora\.targets: expected a list of strings, got 3$"),
])
def test_bad_values_name_their_key(overrides: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_run_config(_run_config(CFG, overrides))


def test_keys_flower_would_pass_but_fedit_does_not_know() -> None:
    rc = _run_config(CFG)  # a hand-edited pyproject.toml: Flower passes whatever the app's config has
    with pytest.raises(ConfigError, match=r"^Flower run config: unknown setting 'client\.learning_rate'; "
                                          r"did you mean .*client\.lr"):
        config_from_run_config(rc | {"client.learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"^Flower run config: unknown setting 'client\.learning_rate'"):
        config_from_run_config(rc | {"client.learning_rate": "0.1"})
    with pytest.raises(ConfigError, match=r"unknown key 'round-timeot'; did you mean round-timeout"):
        config_from_run_config(rc | {"round-timeot": 3.0})
    with pytest.raises(ValueError, match="not present"):  # and Flower refuses overrides of keys the app lacks
        _run_config(CFG, "client.learning_rate=0.1")


def test_apps_from_before_the_dotted_keys_still_run() -> None:
    legacy = {k: v for k, v in RUN_CONFIG_DEFAULTS.items()} | {"fedit-config": CFG.to_toml()}
    assert config_from_run_config(legacy).to_dict() == CFG.to_dict()
    with pytest.raises(ConfigError, match=r"fedit-config \(Flower run config\): lora.r"):
        config_from_run_config(legacy | {"fedit-config": "[lora]\nr = 0\n"})
    with pytest.raises(ConfigError, match="both fedit-config and dotted settings.*`fedit flower app`"):
        config_from_run_config(_run_config(CFG) | {"fedit-config": CFG.to_toml()})
    with pytest.raises(ConfigError, match="no fedit settings.*`fedit flower app`"):
        config_from_run_config(dict(RUN_CONFIG_DEFAULTS))


def test_a_resume_override_goes_through_the_resume_check(tmp_path: Path) -> None:
    from fedit.pipeline import check_resume_config

    CFG.save(tmp_path / "config.toml")
    check_resume_config(tmp_path, config_from_run_config(_run_config(CFG, "run.rounds=9 run.eval_limit=2")))
    with pytest.raises(CheckpointError, match=r"client\.lr: saved 0\.003, now 0\.01"):
        check_resume_config(tmp_path, config_from_run_config(_run_config(CFG, "run.rounds=9 client.lr=0.01")))
