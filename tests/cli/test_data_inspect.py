"""`fedit data inspect`: truncated/dropped counts per category and, for a partition directory, per client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedit.cli import app
from fedit.data.sources import load_records
from fedit.data.templates import get_template
from fedit.data.tokenize import tokenize_records
from fedit.model.load import load_tokenizer


def inspect(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["data", "inspect", *args], env={"COLUMNS": "200"})
    return r.exit_code, r.output


def row(output: str, title: str, name: str) -> list[str]:
    """The cells of row `name` in the table titled `title`."""
    table = output[output.index(title):]
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in {title!r}:\n{table}")


def test_counts_per_category_and_per_client(micro_model_dir: Path, small_data_file: Path, tmp_path: Path) -> None:
    part = tmp_path / "part"
    assert CliRunner().invoke(app, ["partition", "--data", str(small_data_file), "--clients", "2", "--scheme", "iid",
                                    "--test-size", "0", "--out", str(part)]).exit_code == 0
    code, out = inspect(str(part), "--model", str(micro_model_dir), "--cutoff-len", "56")
    assert code == 0, out
    tok = load_tokenizer(str(micro_model_dir))
    tpl = get_template("auto", tok)
    for cid in (0, 1):
        c = tokenize_records(load_records(part / f"client_{cid:03d}.jsonl"), tpl, tok, 56).counts
        assert c is not None
        assert row(out, "2 clients", str(cid))[1:4] == [str(c.examples), str(c.truncated), str(c.dropped)]
    recs = [r for r in load_records(small_data_file) if r.category == "open_qa"]
    c = tokenize_records(recs, tpl, tok, 56).counts
    assert c is not None and c.affected > 0
    assert row(out, "by category", "open_qa")[1:5] == [str(c.examples), str(c.truncated), str(c.dropped),
                                                         str(c.tokens)]
    assert "WARNING: data.cutoff_len=56" in out and "over 5% in client" in out


def test_no_warning_when_the_cutoff_keeps_everything(micro_model_dir: Path, small_data_file: Path) -> None:
    code, out = inspect(str(small_data_file), "--model", str(micro_model_dir))  # default --cutoff-len 256
    assert code == 0, out
    assert row(out, "by category", "total")[1:4] == ["80", "0", "0"] and "WARNING" not in out


@pytest.mark.parametrize(("args", "needle"), [(["--cutoff-len", "4"], "--cutoff-len: got 4"),
                                              (["--template", "vicuna"], "--template: got 'vicuna'")])
def test_bad_options_are_one_line_errors(args: list[str], needle: str, small_data_file: Path) -> None:
    code, out = inspect(str(small_data_file), *args)
    assert code == 2 and needle in out and "Traceback" not in out
