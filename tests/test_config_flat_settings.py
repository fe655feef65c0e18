"""`config.flat_settings`: every setting as a Flower run-config value (bool, int, float, str), read back exactly by
`parse_setting`, for defaults and for values that do not survive the plain comma forms."""

from __future__ import annotations

import pytest

from fedit.config import UNSET, Config, flat_settings, parse_setting, setting_types


def _typed(key: str, value: object) -> object:
    return parse_setting(key, value) if isinstance(value, str) else value


def _value(cfg: Config, key: str) -> object:
    section, _, name = key.partition(".")
    if section == "strategy" and name != "name":
        strategy, _, sub = name.partition(".")
        return getattr(cfg.strategy.settings(strategy), sub)
    return getattr(getattr(cfg, section), name)


AWKWARD = {
    "lora.targets": ["q_proj", "v,proj", " k_proj"],  # a comma and a space inside items: a TOML array
    "data.fields": {"instruction": "question=text", "response": "a,b", "context": ""},  # inline table
    "run.faults": ["nan@1:0", "slow@*:1=2"],
    "data.test_source": "tests/held out.jsonl",
    "model.quantization": None,
    "run.eval_limit": 7,
    "client.local_epochs": None,
    "client.lr": 1.2345678901234567e-4,
    "model.name": "  a name with spaces ",
    "strategy.name": "fedadam",
    "strategy.fedadam.tau": 1e-9,
    "strategy.fedprox.mu": 0.5,
}


@pytest.mark.parametrize("cfg", [Config(), Config().override(AWKWARD),
                                 Config().override({"lora.targets": ["none"], "data.fields": {"{k": "v"}}),
                                 Config().override({"lora.targets": UNSET, "run.faults": [], "data.fields": {}})],
                         ids=["defaults", "awkward", "none-like", "empty"])
def test_every_key_round_trips_exactly(cfg: Config) -> None:
    tables = set(cfg.strategy.tables)
    flat = flat_settings(cfg)
    assert set(flat) == set(setting_types())
    assert set(cfg.strategy.tables) == tables  # reading every strategy's keys adds no table to cfg
    for key, value in flat.items():
        assert type(value) in (bool, int, float, str), key
        back = _typed(key, value)
        want = _value(cfg, key)
        assert (back is UNSET) if want is None else (back == want and type(back) is type(want)), (key, value)
    rebuilt = Config().override({k: _typed(k, v) for k, v in flat.items()})
    assert flat_settings(rebuilt) == flat
    assert rebuilt.strategy.settings() == cfg.strategy.settings() and rebuilt.strategy.name == cfg.strategy.name


def test_forms_users_read() -> None:
    flat = flat_settings(Config().override({"lora.targets": ["q_proj", "v_proj"],
                                            "data.fields": {"instruction": "q", "response": "a"}}))
    assert flat["lora.targets"] == "q_proj,v_proj" and flat["data.fields"] == "instruction=q,response=a"
    assert flat["run.eval_limit"] == "none" and flat["run.faults"] == "" and flat["run.rounds"] == 16
    assert flat["strategy.fedadam.tau"] == 0.001 and flat["strategy.name"] == "fedavg"
    assert flat_settings(Config().override({"lora.targets": ["none"]}))["lora.targets"] == '["none"]'
