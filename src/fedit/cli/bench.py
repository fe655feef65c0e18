"""`fedit bench`: front door to the benchmarks (throughput, round overhead, Shepherd-style baseline, scale, bytes)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedit.cli.common import console, user_errors

CHOICES = ("throughput", "round_overhead", "shepherd", "scale", "payload", "dtype", "flower")  # = suite.BENCHMARKS


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)


@user_errors
def bench_command(
    quick: bool = typer.Option(False, "--quick", help="a few-minutes version of every benchmark"),
    smoke: bool = typer.Option(False, "--smoke", help="seconds-long run on a random micro model: checks the "
                               "benchmarks work, measures nothing meaningful"),
    json_out: Path | None = typer.Option(None, "--json", help="write every result to this JSON file"),
    model: str = typer.Option("auto", help="auto (the shipped tiny base), micro, or a model path/name"),
    data: str | None = typer.Option(None, help="the Shepherd-split Dolly directory "
                                    "(default: $FEDIT_BENCH_DATA or ../shared/data/dolly-15k-shepherd-10; "
                                    "synthetic records when absent)"),
    only: list[str] | None = typer.Option(None, "--only", help=f"run only these: {', '.join(CHOICES)}"),
    threads: int | None = typer.Option(None, help="torch CPU threads (1 is often fastest on a busy shared CPU)"),
) -> None:
    """Measure fedit against baselines; prints medians and ratios as tables, and JSON with --json."""
    from fedit.bench.common import set_threads, write_json
    from fedit.bench.suite import run_suite
    from fedit.errors import ConfigError

    bad = sorted(set(only or []) - set(CHOICES))
    if bad:
        raise ConfigError(f"--only: unknown benchmark {bad[0]!r}; expected one of {', '.join(CHOICES)}")
    set_threads(threads)
    res = run_suite(quick=quick or smoke, smoke=smoke, model=model, data=data, only=only or None)
    if json_out:
        write_json(json_out, res)
        console.print(f"results written to {json_out}")
