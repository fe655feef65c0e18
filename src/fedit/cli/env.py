"""`fedit env`: versions, devices, CPU bf16 units, CUDA and installed extras, for bug reports."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedit.cli.common import user_errors


def env_command(
    json_out: Path = typer.Option(None, "--json", help="Also write it as JSON to this file."),
) -> None:
    """What fedit runs with here: paste this into a bug report."""
    _env(json_out)


@user_errors
def _env(json_out: Path | None) -> None:
    from fedit.atomic import write_text
    from fedit.env import as_text, collect

    info = collect()
    typer.echo(as_text(info))
    if json_out is not None:
        write_text(json_out, json.dumps(info, indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.command("env")(env_command)
