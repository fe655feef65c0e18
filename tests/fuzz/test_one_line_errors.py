"""An error is one line wherever the output goes: never hard-wrapped in a log or pipe, never a traceback, never
mangled as rich markup; usage errors (a bad option value, an unknown option) are one `error:` line too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedit.cli import app


def fedit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A real process with stdout/stderr on pipes (not a terminal) and no COLUMNS hint: what a log file gets."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "fedit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env=env)


def _long_missing_path(tmp_path: Path) -> Path:
    deep = tmp_path.joinpath(*[f"segment-{i:02d}-of-a-long-path" for i in range(8)])
    return deep / "no-such-data-file.jsonl"


def test_a_long_error_is_exactly_one_line_on_a_pipe(tmp_path: Path) -> None:
    missing = _long_missing_path(tmp_path)
    assert len(str(missing)) > 250
    p = fedit("data", "inspect", str(missing))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.endswith("\n"), p.stderr
    assert p.stderr.startswith(f"error: {missing}: file not found;")
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_a_long_error_is_one_line_in_process(tmp_path: Path) -> None:
    missing = _long_missing_path(tmp_path)
    r = CliRunner().invoke(app, ["data", "inspect", str(missing)])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"error: {missing}: file not found; expected a data file (.json, .jsonl, "
                                     ".ndjson, .csv, .parquet), a directory, a Hugging Face dataset name, or 'builtin'"]


@pytest.mark.parametrize("name", ["[/]x.jsonl", "[bold]x[/bold].jsonl", "[red.jsonl"])
def test_error_text_is_never_read_as_markup(tmp_path: Path, name: str) -> None:
    r = CliRunner().invoke(app, ["data", "inspect", str(tmp_path / name)])
    assert r.exit_code == 2 and r.exception is not None and isinstance(r.exception, SystemExit), r.exception
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: ") and name in line


def test_usage_errors_are_one_line_naming_the_option() -> None:
    p = fedit("run", "--rounds", "abc")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == ["error: Invalid value for '--rounds': 'abc' is not a valid integer. "
                                     "(see python -m fedit.cli run --help)"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "--rondos", "3"], ["No such option", "--rondos", "--rounds"]),
        (["partition", "--data", "x.jsonl"], ["Missing option", "--clients"]),
        (["data", "inspect"], ["Missing argument", "SOURCE"]),
        (["nonsense"], ["No such command", "nonsense"]),
        (["run", "--train-on-inputs=maybe"], ["--train-on-inputs"]),
    ],
)
def test_usage_errors_in_process(args: list[str], needles: list[str]) -> None:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: ")
    for needle in needles:
        assert needle in line


def test_no_arguments_still_prints_the_help() -> None:
    r = CliRunner().invoke(app, [])
    assert "Usage" in r.stdout and "run" in r.stdout
    r = CliRunner().invoke(app, ["data"])
    assert "inspect" in r.stdout


def test_help_and_success_exit_zero(tmp_path: Path) -> None:
    assert CliRunner().invoke(app, ["run", "--help"]).exit_code == 0
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "q", "response": "a"}\n', encoding="utf-8")
    r = CliRunner().invoke(app, ["data", "inspect", str(data)])
    assert r.exit_code == 0, r.output
