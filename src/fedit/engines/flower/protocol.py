"""What the ServerApp, the ClientApps and the launcher agree on: run-config keys, defaults, the fedit config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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
    "round-timeout": 3600.0,  # the most seconds a round may take, retries included; late nodes are dropped
    # once min_clients updates are in (at t_min s), the rest get max(round-grace, t_min) s more, then are dropped
    "round-grace": 5.0,
    "round-retries": 1,  # re-send a round's failed clients this many times when fewer than min_clients replied
    "poll-interval": 0.2,  # seconds between the ServerApp's pulls for replies (Flower's own helper sleeps 3 s)
    "error-file": "",  # where the ServerApp writes the reason it failed (read by the loopback launcher)
}


def config_from_run_config(run_config: Mapping[str, Any]) -> Config:
    text = str(run_config.get("fedit-config", ""))
    if not text:
        raise ConfigError("Flower run config has no fedit-config; write the app with `fedit flower app`")
    return Config.from_toml(text, where="fedit-config (Flower run config)")


def run_setting(run_config: Mapping[str, Any], key: str) -> Any:
    """The run setting `key`, of its default's type; numbers must be finite and >= 0 (ConfigError otherwise)."""
    value = run_config.get(key, RUN_CONFIG_DEFAULTS[key])
    default = RUN_CONFIG_DEFAULTS[key]
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, (int, float)):
        try:
            number = type(default)(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or not math.isfinite(number) or number < 0:
            raise ConfigError(f"Flower run config {key}: got {value!r}, expected a finite number >= 0")
        return number
    return str(value)
