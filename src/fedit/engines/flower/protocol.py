"""What the ServerApp, the ClientApps and the launcher agree on: run-config keys, defaults, the fedit config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomllib

from fedit.config import Config
from fedit.errors import ConfigError

# [tool.flwr.app.config] keys (Flower run config); every one can be overridden with `flwr run --run-config`.
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "fedit-config": "",  # the whole fedit run config, as TOML text
    "out": "",  # run directory on the SuperLink host ("" = run.out of the fedit config)
    "resume": False,  # continue the run in `out` from its last complete round
    "overwrite": False,  # replace a non-empty `out`
    "num-clients": 0,  # logical clients expected across all nodes (0 = every id the nodes report)
    "min-nodes": 1,  # wait for this many SuperNodes before the first round
    "discovery-timeout": 300.0,  # seconds to wait for the nodes and their clients
    "round-timeout": 3600.0,  # seconds a round waits for replies; late nodes are dropped for the round
    "round-retries": 1,  # re-send a round's failed clients this many times when fewer than min_clients replied
    "poll-interval": 0.2,  # seconds between the ServerApp's pulls for replies (Flower's own helper sleeps 3 s)
    "error-file": "",  # where the ServerApp writes the reason it failed (read by the loopback launcher)
}


def config_from_run_config(run_config: Mapping[str, Any]) -> Config:
    text = str(run_config.get("fedit-config", ""))
    if not text:
        raise ConfigError("Flower run config has no fedit-config; write the app with `fedit flower app`")
    try:
        return Config.from_dict(tomllib.loads(text), where="fedit-config (Flower run config)")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"fedit-config (Flower run config): invalid TOML: {e}") from None


def run_setting(run_config: Mapping[str, Any], key: str) -> Any:
    value = run_config.get(key, RUN_CONFIG_DEFAULTS[key])
    default = RUN_CONFIG_DEFAULTS[key]
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, (int, float)):
        return type(default)(value)
    return str(value)
