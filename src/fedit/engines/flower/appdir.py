"""Write a Flower app directory (pyproject.toml with [tool.flwr.app] components and config) for a fedit run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from fedit import __version__
from fedit.config import Config, flat_settings
from fedit.engines.flower.protocol import RUN_CONFIG_DEFAULTS

SERVER_APP = "fedit.engines.flower.server_app:app"
CLIENT_APP = "fedit.engines.flower.client_app:app"

README = """# fedit Flower app

Written by `fedit flower app`. The ServerApp runs fedit's round loop (sampling, strategy, checkpoints,
evaluation); the ClientApp trains the logical clients a SuperNode hosts, read from its `--node-config data-dir`.
Both come from the installed `fedit[flower]` package, so every host needs it installed (same version).

    flwr run . <connection> --stream          # connection: a [superlink.<name>] table in $FLWR_HOME/config.toml

[tool.flwr.app.config] in pyproject.toml holds every setting of the run; override any of them for one run with
`flwr run . <connection> --run-config "KEY=VALUE KEY=VALUE"` (TOML values: strings in quotes):

- fedit's settings, by their dotted keys: `run.rounds=5`, `client.lr=0.001`, `lora.r=8`,
  `strategy.name='fedadam'`, `strategy.fedadam.tau=0.01` (every strategy's keys are there; only the selected
  strategy's are used). Lists and tables are strings: `lora.targets='q_proj,v_proj'`,
  `data.fields='instruction=question,response=answer'`; an optional setting is unset with `'none'`
  (`run.eval_limit='none'`).
- the Flower-side settings (no dot): `out`, `resume`, `overwrite`, `num-clients`, `min-nodes`,
  `discovery-timeout`, `round-timeout`, `round-grace`, `round-retries`, `poll-interval` (and `node-data`, used by
  `--engine flower-sim` only).

Flower refuses a key the app does not have; fedit checks every value (a bad one fails the run with a message naming
its key, in the ServerApp's log). A resumed run (`resume=true`) may change only what `fedit run --resume` may
change. See docs/deployment.md in the fedit repository.
"""


def app_pyproject(cfg: Config, settings: dict[str, Any] | None = None, name: str = "fedit-run") -> dict[str, Any]:
    """The pyproject.toml content: [tool.flwr.app.config] holds the Flower-side settings (`settings` over
    RUN_CONFIG_DEFAULTS) and every fedit setting of `cfg` under its dotted key, as nested tables (`[...config.run]
    rounds = 16`), which Flower flattens back to `run.rounds`."""
    run_config: dict[str, Any] = dict(RUN_CONFIG_DEFAULTS)
    run_config.update(settings or {})
    unknown = sorted(set(run_config) - set(RUN_CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown Flower run-config keys {unknown}")
    for key, value in flat_settings(cfg).items():
        *tables, last = key.split(".")
        node = run_config
        for t in tables:
            node = node.setdefault(t, {})
        node[last] = value
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
