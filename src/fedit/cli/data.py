"""`fedit data ...`: look at and export data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.table import Table

from fedit.cli.common import console, one_of, parse_kv, print_invalid, user_errors

app = typer.Typer(help="Inspect and export instruction data.", no_args_is_help=True)


@app.command("export")
def export_command(
    source: str = typer.Argument(..., help="'builtin' or any data source."),
    out: Path = typer.Option(..., help="Output JSONL file."),
    split: str = typer.Option("both", help="builtin: train | test | both"),
) -> None:
    """Write records as JSONL (one Record per line); for `builtin`, the suite's train and/or test items."""
    _export(source, out, split)


@user_errors
def _export(source: str, out: Path, split: str) -> None:
    if source == "builtin":
        from fedit.data.builtin import export_builtin

        n = export_builtin(out, split=split)
    else:
        from fedit.data.sources import load_records, write_records

        records = load_records(source)
        write_records(out, records)
        n = len(records)
    console.print(f"wrote {n} records to {out}")


@app.command("inspect")
def inspect_command(
    source: str = typer.Argument(..., help="Any data source `fedit run --data` accepts."),
    format: str = typer.Option("auto", "--format"),
    field: list[str] = typer.Option(None, "--field"),
    on_invalid: str = typer.Option("error", help="Bad rows: error (stop at the first, naming file/line/field) | "
                                                 "skip (drop them and report what was dropped)."),
) -> None:
    """Load data with the same loader as training and show counts per category and an example."""
    _inspect(source, format, field, on_invalid)


@user_errors
def _inspect(source: str, format: str, field: list[str] | None, on_invalid: str) -> None:
    from fedit.data.invalid import ON_INVALID, InvalidRows
    from fedit.data.sources import load_records

    one_of(on_invalid, "--on-invalid", ON_INVALID)
    report = InvalidRows()
    records = load_records(source, format=format, field_map=parse_kv(field, "--field"), on_invalid=on_invalid,
                           report=report)
    counts = Counter(r.category or "(none)" for r in records)
    t = Table(title=f"{source}: {len(records)} records")
    t.add_column("category")
    t.add_column("records", justify="right")
    for cat, n in sorted(counts.items()):
        t.add_row(cat, str(n))
    console.print(t)
    if records:
        console.print(records[0].to_dict())
    if on_invalid == "skip":
        print_invalid(report)
