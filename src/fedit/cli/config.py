"""`fedit config init | show | validate`: write, resolve and check run configurations."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from fedit.cli.common import console, user_errors
from fedit.errors import ConfigError

app = typer.Typer(help="Write, resolve and check run configurations (TOML).", no_args_is_help=True)


@app.command("init")
def init_command(
    out: Path = typer.Option(None, "--out", "-o", help="Write the TOML here (default: print it)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    strategy: str = typer.Option(None, help="Write this strategy's table live (default fedavg)."),
) -> None:
    """A commented TOML of every setting at its default: edit it, then `fedit run --config FILE`."""
    _init(out, overwrite, strategy)


@user_errors
def _init(out: Path | None, overwrite: bool, strategy: str | None) -> None:
    from fedit.atomic import write_text
    from fedit.config import Config
    from fedit.config_doc import commented_toml

    cfg = Config().override({"strategy.name": strategy}, where="--strategy")
    text = commented_toml(cfg)
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out}: the file exists; pass --overwrite to replace it")
    if out.exists() and not out.is_file():
        raise ConfigError(f"--out {out}: not a file")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the directory {out.parent} does not exist")
    write_text(out, text)
    console.print(f"wrote {out}: every setting with its default; run it with `fedit run --config {out}`")


def show_command(**options: Any) -> None:
    """The resolved config a `fedit run` with these options would use (defaults < --config file < flags < --set),
    as TOML; nothing is loaded or created."""
    _show(options)


@user_errors
def _show(options: dict[str, Any]) -> None:
    from fedit.cli.run import build_config, run_overrides

    overrides = run_overrides(options)
    overrides["run.out"] = options.get("out")
    cfg = build_config(options.get("config"), overrides)
    typer.echo(cfg.to_toml(), nl=False)


def _show_signature() -> inspect.Signature:
    from fedit.cli.run import run_command

    sig = inspect.signature(run_command, eval_str=True)
    drop = {"resume", "overwrite", "dry_run"}
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in drop])


# `fedit run`'s own options, read from its signature, so `show` resolves exactly what `run` would
_SIG = _show_signature()
show_command.__signature__ = _SIG  # type: ignore[attr-defined]
show_command.__annotations__ = {p.name: p.annotation for p in _SIG.parameters.values()}
app.command("show")(show_command)


@app.command("validate")
def validate_command(
    files: list[Path] = typer.Argument(..., help="TOML config files to check."),
    set_: list[str] = typer.Option(None, "--set", help="Overrides to apply before checking, SECTION.KEY=VALUE."),
) -> None:
    """Check config files as a run would before loading anything (types, ranges, names); exit 2 at the first bad
    file, naming the file and the key."""
    _validate(files, set_ or [])


@user_errors
def _validate(files: list[Path], assignments: list[str]) -> None:
    from fedit.config import Config, parse_assignment

    overrides = dict(parse_assignment(a) for a in assignments)
    for path in files:
        cfg = Config.from_file(path)
        if overrides:
            cfg = cfg.override(overrides, where=f"{path} with --set")
        changed = [k for k, _, _ in Config().differences(cfg) if k != "run.out"]
        console.print(f"ok: {path} ({len(changed)} setting{'s' * (len(changed) != 1)} differ from the defaults"
                      + (f": {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''})" if changed else ")"))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="config")
