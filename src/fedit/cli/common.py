"""Shared CLI pieces: the console, user-error handling, config assembly from flags, and the rich progress reporter."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fedit.errors import FeditError

console = Console(stderr=False)
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print FeditError (and a few common user mistakes) as one clear line and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FeditError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished rounds are saved; continue with --resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


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
        self.progress.console.print(f"[yellow]{message}[/]", highlight=False)


def parse_kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise FeditError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def existing_path(p: Path | None, what: str) -> Path | None:
    if p is not None and not p.exists():
        raise FeditError(f"{what}: {p} does not exist")
    return p
