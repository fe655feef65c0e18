"""The `fedit` command: thin Typer commands that build a config and call the library."""

from __future__ import annotations

import importlib

import typer

from fedit.cli import data as data_cli
from fedit.cli.common import OneLineErrors
from fedit.cli.run import partition_command, run_command

app = typer.Typer(
    name="fedit",
    help="Federated instruction tuning of LLMs with LoRA: simulate on one machine, deploy on Flower.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)
app.command("run")(run_command)
app.command("partition")(partition_command)
app.add_typer(data_cli.app, name="data")

# Command groups that live in their own modules; each registers itself on `app` with `register(app)`.
for _mod in ("fedit.cli.evaluate", "fedit.cli.serve", "fedit.cli.flower", "fedit.cli.bench", "fedit.cli.config",
             "fedit.cli.env"):
    try:
        importlib.import_module(_mod).register(app)
    except ModuleNotFoundError as e:  # a module not written yet, never a missing dependency of one that exists
        if e.name != _mod:
            raise


def main() -> None:
    app()
