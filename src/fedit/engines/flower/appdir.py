"""Write a Flower app directory (pyproject.toml with [tool.flwr.app] components and config) for a fedit run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from fedit import __version__
from fedit.config import Config
from fedit.engines.flower.protocol import RUN_CONFIG_DEFAULTS

SERVER_APP = "fedit.engines.flower.server_app:app"
CLIENT_APP = "fedit.engines.flower.client_app:app"

README = """# fedit Flower app

Written by `fedit flower app`. The ServerApp runs fedit's round loop (sampling, strategy, checkpoints,
evaluation); the ClientApp trains the logical clients a SuperNode hosts, read from its `--node-config data-dir`.
Both come from the installed `fedit[flower]` package, so every host needs it installed (same version).

    flwr run . <connection> --stream          # connection: a [superlink.<name>] table in $FLWR_HOME/config.toml

Run settings live under [tool.flwr.app.config]; override any with `flwr run --run-config 'round-timeout=600'`.
See docs/deployment.md in the fedit repository.
"""


def app_pyproject(cfg: Config, settings: dict[str, Any] | None = None, name: str = "fedit-run") -> dict[str, Any]:
    """The pyproject.toml content; `settings` override RUN_CONFIG_DEFAULTS (fedit-config is always the config)."""
    run_config = dict(RUN_CONFIG_DEFAULTS)
    run_config.update(settings or {})
    unknown = sorted(set(run_config) - set(RUN_CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown Flower run-config keys {unknown}")
    run_config["fedit-config"] = cfg.to_toml()
    return {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": name,
            "version": "1.0.0",
            "description": "fedit federated instruction tuning run (written by `fedit flower app`)",
            "license": "Apache-2.0",
            "dependencies": [f"fedit[flower]=={__version__}"],
        },
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {
                "app": {
                    "publisher": "fedit",
                    "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
                    "config": run_config,
                },
            },
        },
    }


def write_app(out: str | Path, cfg: Config, settings: dict[str, Any] | None = None, name: str = "fedit-run") -> Path:
    """Write `out/pyproject.toml` and `out/README.md`; returns the directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = tomli_w.dumps(app_pyproject(cfg, settings, name), multiline_strings=True)
    (out / "pyproject.toml").write_text(text, encoding="utf-8")
    (out / "README.md").write_text(README, encoding="utf-8")
    return out
