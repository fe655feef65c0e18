"""`fedit data ...`: look at and export data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from fedit.cli.common import console, one_of, parse_kv, print_invalid, user_errors
from fedit.config import DataConfig, ModelConfig
from fedit.data.lengths import WARN_SHARE, LengthCounts, LengthReport
from fedit.data.records import Record
from fedit.errors import ConfigError

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
    source: str = typer.Argument(..., help="Any data source `fedit run --data` accepts (a partition directory from "
                                           "`fedit partition` is also counted per client)."),
    format: str = typer.Option("auto", "--format"),
    field: list[str] = typer.Option(None, "--field"),
    on_invalid: str = typer.Option("error", help="Bad rows: error (stop at the first, naming file/line/field) | "
                                                 "skip (drop them and report what was dropped)."),
    cutoff_len: int = typer.Option(DataConfig().cutoff_len, help="Max tokens per example, as `fedit run "
                                                                 "--cutoff-len`: what it truncates and drops."),
    model: str = typer.Option(ModelConfig().name, help="Whose tokenizer counts the tokens: 'tiny', a local path or "
                                                       "a hub name (only the tokenizer is loaded)."),
    template: str = typer.Option(DataConfig().template, help="auto | alpaca | alpaca-short | chat"),
    train_on_inputs: bool = typer.Option(DataConfig().train_on_inputs, "--train-on-inputs/--no-train-on-inputs"),
) -> None:
    """Load data with the same loader as training; show counts per category (per client for a partition directory),
    how many examples `--cutoff-len` truncates and drops, and an example."""
    _inspect(source, format, field, on_invalid, cutoff_len, model, template, train_on_inputs)


@user_errors
def _inspect(source: str, format: str, field: list[str] | None, on_invalid: str, cutoff_len: int, model: str,
             template: str, train_on_inputs: bool) -> None:
    from fedit.data.invalid import ON_INVALID, InvalidRows
    from fedit.data.sources import load_records
    from fedit.data.templates import TEMPLATES

    one_of(on_invalid, "--on-invalid", ON_INVALID)
    one_of(template, "--template", ("auto", *TEMPLATES.names()))
    if cutoff_len < 8:
        raise ConfigError(f"--cutoff-len: got {cutoff_len}, expected an integer >= 8 (as data.cutoff_len)")
    report = InvalidRows()
    fmap = parse_kv(field, "--field")
    clients = _partition_clients(source, format, fmap, on_invalid, report)
    records = ([r for part in clients for r in part] if clients is not None else
               load_records(source, format=format, field_map=fmap, on_invalid=on_invalid, report=report))
    by_cat, by_client = _count_lengths(records, clients, cutoff_len, model, template, train_on_inputs)
    console.print(lengths_table(by_cat, f"{source}: {len(records)} records, by category"))
    if by_client is not None:
        console.print(lengths_table(by_client, f"{source}: {len(clients or [])} clients"))
    if (warning := (by_client or by_cat).warning()) is not None:  # one line: per client for a partition
        console.print(f"[yellow]{escape(warning)}[/]", highlight=False)
    if records:
        console.print(records[0].to_dict())
    if on_invalid == "skip":
        print_invalid(report)


def _partition_clients(source: str, format: str, fmap: dict[str, str], on_invalid: str,
                       report: Any) -> list[list[Record]] | None:
    """The clients' records of a partition directory (`fedit partition`'s client_NNN.jsonl), else None."""
    from fedit.data.sources import load_records
    from fedit.pipeline import is_partition_dir, partition_client_files

    if not is_partition_dir(source):
        return None
    return [load_records(f, format="dolly", on_invalid=on_invalid, report=report)
            for f in partition_client_files(source)]


def _count_lengths(records: list[Record], clients: list[list[Record]] | None, cutoff_len: int, model: str,
                   template: str, train_on_inputs: bool) -> tuple[LengthReport, LengthReport | None]:
    """What the cutoff does, per category and (for a partition) per client, counted by training's own tokenizer."""
    from fedit.data.templates import get_template
    from fedit.data.tokenize import tokenize_records
    from fedit.model.load import load_tokenizer

    tok = load_tokenizer(model)
    tpl = get_template(template, tok)

    # each record is tokenized once, in its (client, category) group; the groups add up to both tables
    parts = clients if clients is not None else [records]
    groups: dict[tuple[int, str], list[Record]] = {}
    for i, part in enumerate(parts):
        for r in part:
            groups.setdefault((i, r.category or "(none)"), []).append(r)
    cats: dict[str, LengthCounts] = {}
    per_client: dict[str, LengthCounts] = {str(i): LengthCounts() for i in range(len(parts))}
    for (i, cat), recs in groups.items():
        counts = tokenize_records(recs, tpl, tok, cutoff_len, train_on_inputs, DataConfig().add_eos).counts \
            or LengthCounts()
        cats.setdefault(cat, LengthCounts())
        cats[cat] += counts
        per_client[str(i)] += counts
    by_cat = LengthReport(cutoff_len, dict(sorted(cats.items())), kind="category")
    return by_cat, (LengthReport(cutoff_len, per_client) if clients is not None else None)


def lengths_table(report: LengthReport, title: str, max_rows: int = 20) -> Table:
    """Per group (client or category): examples, kept, truncated and dropped by the cutoff, tokens kept; a total row.
    With more than `max_rows` groups, the most affected ones are shown."""
    t = Table(title=f"{title} (cutoff_len {report.cutoff_len})")
    t.add_column(report.kind, no_wrap=True)
    for name in ("n", "trunc", "drop", "tokens", "labels", "max"):
        t.add_column(name, justify="right")
    t.caption = ("n examples; trunc: kept but cut at the cutoff; drop: no trainable token left (not trained on); "
                 "tokens, labels: what is kept; max: longest example after/before the cutoff")
    items = list(report.groups.items())
    if len(items) > max_rows:
        items = sorted(items, key=lambda kv: -kv[1].affected_share)[:max_rows]
    flagged = set(report.flagged())

    def row(name: str, c: LengthCounts, total: bool = False) -> list[str]:
        warn = name in flagged or (total and c.affected_share > WARN_SHARE)
        style = " ".join(s for s, on in (("bold", total), ("yellow", warn)) if on)

        def cell(v: object) -> str:
            return f"[{style}]{escape(str(v))}[/]" if style else escape(str(v))

        return [cell(name), str(c.examples), cell(c.truncated), cell(c.dropped), str(c.tokens), str(c.label_tokens),
                f"{c.longest}/{c.longest_full}"]

    for name, c in items:
        t.add_row(*row(name, c))
    hidden = len(report.groups) - len(items)
    t.add_row(*row(f"total{f' ({hidden} more not shown)' if hidden else ''}", report.total, total=True))
    return t


def print_run_lengths(run_dir: Path) -> None:
    """A run's truncated/dropped examples per client (its partition/lengths.json, written by the simulator before
    round 1) and the >5% warning again; nothing when the run did not count them (a Flower run's nodes tokenize)."""
    import json

    path = Path(run_dir) / "partition" / "lengths.json"
    if not path.is_file():
        return
    report = LengthReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    console.print(lengths_table(report, "examples per client after the length limit"))
    if (warning := report.warning()) is not None:
        console.print(f"[yellow]{escape(warning)}[/]", highlight=False)
