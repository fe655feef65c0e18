"""Shared CLI pieces: the console, user-error handling, config assembly from flags, and the rich progress reporter."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from fedit.errors import FeditError


class LogConsole(Console):
    """A rich console that never hard-wraps text when its output is not a terminal (a log file, a pipe, CI).

    Rich wraps at 80 columns when it cannot ask a terminal for its width, so one error line came out as two in logs.
    Decided at each print (tests swap the streams); tables keep their layout either way.
    """

    @property  # type: ignore[override]
    def soft_wrap(self) -> bool:
        return self._soft_wrap or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap = value


console = LogConsole(stderr=False)
err_console = LogConsole(stderr=True)


def print_error(message: object) -> None:
    """One `error: ...` line on stderr; the message is text, never rich markup (paths and data may hold [ ])."""
    err_console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print FeditError (and a few common user mistakes) as one clear line and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FeditError as e:
            print_error(e)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished rounds are saved; continue with --resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class OneLineErrors(TyperGroup):
    """The root command group: a usage error (a bad option value, an unknown option, a missing one) is one
    `error: ...` line naming the option and the command's --help, exit code 2, like every other fedit error, instead
    of typer's boxed panel (which is also hard-wrapped at 80 columns in logs)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as e:
            if type(e).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
                print_error(usage_message(e))
            sys.exit(e.exit_code)
        except click.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_message(e: click.ClickException) -> str:
    ctx = getattr(e, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    return " ".join(e.format_message().split()) + hint


def print_invalid(report: Any) -> None:
    """What `--on-invalid skip` dropped (a `fedit.data.invalid.InvalidRows`): a count per reason, first locations."""
    for line in report.lines():
        console.print(f"[yellow]{escape(line)}[/]", highlight=False)


def config_table(d: dict[str, dict[str, Any]], title: str = "resolved config") -> Table:
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("setting")
    t.add_column("value")
    for section, values in d.items():
        for k, v in values.items():
            t.add_row(f"{section}.{k}", str(v))
    return t


class RichReporter:
    """Progress bars for rounds and for the current client's steps; one log line per round."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
            disable=not sys.stdout.isatty(),
        )
        self._rounds: Any = None
        self._client: Any = None
        self._client_id: int | None = None

    def __enter__(self) -> RichReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def round_start(self, round_idx: int, total_rounds: int, sampled: list[int]) -> None:
        if self._rounds is None:
            self._rounds = self.progress.add_task("rounds", total=total_rounds, completed=round_idx - 1, info="")
        self.progress.update(self._rounds, info=f"round {round_idx}: clients {sampled}")

    def client_step(self, client_id: int, step: int, total: int, loss: float) -> None:
        if self._client is None:
            self._client = self.progress.add_task("client", total=total, info="")
        if client_id != self._client_id:
            self._client_id = client_id
            self.progress.reset(self._client, total=total)
        self.progress.update(self._client, completed=step, description=f"client {client_id}",
                             info=f"loss {loss:.3f}")

    def round_end(self, round_idx: int, metrics: dict[str, Any]) -> None:
        if self._rounds is not None:
            self.progress.update(self._rounds, completed=round_idx)
        ev = metrics.get("eval", {}).get("mean", {})
        extra = f"  eval score {ev['score']:.3f}" if "score" in ev else ""
        self.progress.console.print(
            f"round {round_idx}: loss {metrics['train_loss']:.4f}  clients {metrics['replied']}  "
            f"{metrics['tokens']} tok  {metrics['train_seconds']:.1f}s train  "
            f"{metrics['aggregate_seconds'] * 1000:.1f}ms agg  "
            f"{metrics['checkpoint_seconds'] * 1000:.1f}ms ckpt{extra}",
            highlight=False,
        )

    def log(self, message: str) -> None:
        self.progress.console.print(f"[yellow]{escape(message)}[/]", highlight=False)


def parse_kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise FeditError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def one_of(value: str, option: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise FeditError(f"{option}: got {value!r}, expected one of: {', '.join(choices)}")
    return value


def existing_path(p: Path | None, what: str) -> Path | None:
    if p is not None and not p.exists():
        raise FeditError(f"{what}: {p} does not exist")
    return p
