"""What the ServerApp, the ClientApps and the launcher agree on: run-config keys, defaults, the fedit config.

The run config (`[tool.flwr.app.config]`, as Flower flattens it) holds two kinds of keys: Flower-side settings
without a dot (RUN_CONFIG_DEFAULTS: where the run directory is, timeouts, ...) and every fedit setting as its dotted
key (`run.rounds`, `client.lr`, `strategy.fedadam.tau`; `config.flat_settings`), so `flwr run APP --run-config
"run.rounds=5 client.lr=0.001"` changes them: Flower only accepts overrides of keys the app already has.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from fedit.config import Config, parse_setting
from fedit.errors import ConfigError

# [tool.flwr.app.config] keys (Flower run config); every one can be overridden with `flwr run --run-config`.
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
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
    # Flower's Simulation Engine (--engine flower-sim): virtual node k reads its clients from <node-data>/node_k
    "node-data": "",
}
# Apps written by fedit before the dotted keys held the whole fedit config as one TOML string under this key.
LEGACY_KEY = "fedit-config"
WHERE = "Flower run config"


def fedit_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The fedit keys of a run config (everything but the Flower-side settings), as plain JSON-able values."""
    return {k: v for k, v in run_config.items() if k not in RUN_CONFIG_DEFAULTS}


def config_from_run_config(run_config: Mapping[str, Any]) -> Config:
    """The fedit config a run config describes (dotted keys over the defaults), validated; ConfigError naming the
    key for an unknown key or a bad value. An app from before the dotted keys (`fedit-config` only) still reads."""
    settings = fedit_settings(run_config)
    legacy = str(settings.pop(LEGACY_KEY, "") or "")
    if legacy and settings:
        raise ConfigError(f"{WHERE}: has both {LEGACY_KEY} and dotted settings ({', '.join(sorted(settings)[:3])}"
                          ", ...); write the app again with `fedit flower app`")
    if legacy:
        return Config.from_toml(legacy, where=f"{LEGACY_KEY} ({WHERE})")
    if not settings:
        raise ConfigError(f"{WHERE} has no fedit settings (run.rounds, client.lr, ...); write the app with "
                          "`fedit flower app`")
    for key in settings:
        if "." not in key:
            near = difflib.get_close_matches(key, sorted(RUN_CONFIG_DEFAULTS), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ConfigError(f"{WHERE}: unknown key {key!r}; {hint}Flower-side keys: "
                              f"{', '.join(RUN_CONFIG_DEFAULTS)}; fedit settings are SECTION.KEY")
    try:  # start from the selected strategy, so the defaults' fedavg table is not carried along
        typed = {k: _typed(k, v) for k, v in settings.items()}
        base = Config.from_dict({"strategy": {"name": typed["strategy.name"]}}, where=WHERE) \
            if "strategy.name" in typed else Config()
        return base.override(_without_default_tables(typed), where=WHERE)
    except ConfigError as e:  # an unknown key is named without the place
        raise (e if str(e).startswith(WHERE) else ConfigError(f"{WHERE}: {e}")) from None


def _typed(key: str, value: Any) -> Any:
    """A run-config value as the setting's type: strings through `parse_setting`, numbers and booleans as they are
    (Config.override checks those against the schema)."""
    if not isinstance(value, str):
        return value
    return parse_setting(key, value, where=WHERE)


def _without_default_tables(typed: dict[str, Any]) -> dict[str, Any]:
    """Drop the tables of strategies other than the selected one that hold only their defaults: the app writes every
    strategy's keys (so `--run-config "strategy.name='fedadam'"` finds them), the run's config.toml keeps the
    tables the user's config had plus any changed one."""
    import dataclasses

    from fedit.strategies import STRATEGIES

    selected = typed.get("strategy.name", "fedavg")
    groups: dict[str, dict[str, Any]] = {}
    for key, value in typed.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "strategy" and parts[1] != selected and parts[1] in STRATEGIES:
            groups.setdefault(parts[1], {})[parts[2]] = value
    out = dict(typed)
    for name, values in groups.items():
        defaults = dataclasses.asdict(STRATEGIES.get(name).config_class())
        if all(k in defaults and _same(v, defaults[k]) for k, v in values.items()):
            for k in values:
                del out[f"strategy.{name}.{k}"]
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


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
