"""`on_invalid="skip"`: bad rows are dropped and counted per reason with their first locations; files that cannot be
parsed at all still stop the load; nothing valid left is a clear error. `"error"` stops at the first bad row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedit.data.invalid import InvalidRows
from fedit.data.sources import load_records
from fedit.errors import DataError

GOOD = {"instruction": "Name a fruit.", "response": "apple", "category": "open_qa"}


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _mixed_jsonl(path: Path) -> Path:
    good = json.dumps(GOOD)
    return _lines(path, [
        good,                                              # 1
        json.dumps({"instruction": "q"}),                  # 2 response missing
        '{"instruction": "q", "response": ',               # 3 malformed
        good,                                              # 4
        json.dumps({"instruction": 7, "response": "a"}),   # 5 instruction not a string
        '"just a string"',                                 # 6 not an object
        json.dumps({"instruction": "q2"}),                 # 7 response missing
        json.dumps({"instruction": "q", "response": " "}),  # 8 whitespace is data
        json.dumps({"instruction": "q3"}),                 # 9 response missing
        json.dumps({"instruction": "q4"}),                 # 10 response missing (beyond the first 3 kept)
    ])


def test_error_mode_stops_at_the_first_bad_row(tmp_path: Path) -> None:
    path = _mixed_jsonl(tmp_path / "m.jsonl")
    with pytest.raises(DataError, match=r"m\.jsonl line 2: field 'response' is missing"):
        load_records(path)
    with pytest.raises(DataError, match=r"m\.jsonl line 2: field 'response' is missing"):
        load_records(path, on_invalid="error")


def test_skip_drops_bad_rows_and_counts_them_per_reason(tmp_path: Path) -> None:
    path = _mixed_jsonl(tmp_path / "m.jsonl")
    report = InvalidRows()
    records = load_records(path, on_invalid="skip", report=report)
    assert [r.meta["line"] for r in records] == [1, 4, 8]
    assert records[2].response == " "
    assert report.total == 7
    d = report.to_dict()
    assert d["skipped"] == 7
    assert list(d["reasons"]) == ["field 'response' is missing", "field 'instruction' must be a string",
                                  "malformed JSON", "not a JSON object"]
    missing = d["reasons"]["field 'response' is missing"]
    assert missing["count"] == 4 and missing["first"] == [f"{path} line {n}" for n in (2, 7, 9)]
    assert d["reasons"]["malformed JSON"] == {"count": 1, "first": [f"{path} line 3"]}
    lines = report.lines()
    assert lines[0].startswith("skipped 7 invalid rows")
    assert f"4 x field 'response' is missing: {path} line 2, {path} line 7, {path} line 9, ..." in map(str.strip, lines)


def test_skip_detects_the_format_from_the_first_good_row(tmp_path: Path) -> None:
    path = _lines(tmp_path / "a.jsonl", ['{"oops": 1}', "[1, 2]", json.dumps({"instruction": "q", "output": "a"}),
                                         json.dumps({"instruction": "q", "response": "a"})])
    report = InvalidRows()
    records = load_records(path, on_invalid="skip", report=report)
    assert [(r.instruction, r.response) for r in records] == [("q", "a")]  # alpaca, from line 3
    assert report.counts == {"cannot detect the data format": 1, "not a JSON object": 1,
                             "field 'output' is missing": 1}


def test_skip_csv_ragged_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("instruction,response,category\nq1,a1,x\nq2,a2,x,extra\nq3\nq4,a4,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"r\.csv row 3: 4 values but the header has 3 columns"):
        load_records(path)
    report = InvalidRows()
    records = load_records(path, on_invalid="skip", report=report)
    assert [r.instruction for r in records] == ["q1", "q4"]
    assert report.to_dict()["reasons"] == {
        "field 'response' is missing": {"count": 1, "first": [f"{path} row 4"]},
        "more values than the header has columns": {"count": 1, "first": [f"{path} row 3"]},
    }


def test_skip_json_list_items(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text(json.dumps([GOOD, {"instruction": "q", "response": ["a"]}, "text", GOOD]), encoding="utf-8")
    report = InvalidRows()
    assert len(load_records(path, on_invalid="skip", report=report)) == 2
    assert report.locations == {"field 'response' must be a string": [f"{path} index 1"],
                                "not a JSON object": [f"{path} index 2"]}


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("t.json", '[{"instruction": "q", "response": "a"}, {"instruction": "q2", "resp', "malformed JSON"),
        ("e.jsonl", "", "empty"),
        ("h.csv", "question,answer\nq,a\n", "header row"),
    ],
)
def test_skip_still_stops_on_a_file_that_cannot_be_read(tmp_path: Path, name: str, content: str,
                                                        needle: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=needle):
        load_records(tmp_path / name, on_invalid="skip")


def test_skip_still_stops_on_utf16(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_bytes(json.dumps(GOOD).encode("utf-16"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_records(path, on_invalid="skip")


def test_nothing_valid_left_is_a_clear_error(tmp_path: Path) -> None:
    path = _lines(tmp_path / "bad.jsonl", ['{"instruction": "q"}', "{", '{"instruction": "q"}'])
    with pytest.raises(DataError) as e:
        load_records(path, format="dolly", on_invalid="skip")
    msg = str(e.value)
    assert msg.startswith(f"{path}: no valid records left: all 3 rows were invalid")
    assert "2 x field 'response' is missing; 1 x malformed JSON" in msg and f"{path} line 1" in msg
    with pytest.raises(DataError, match="2 x cannot detect the data format; 1 x malformed JSON"):
        load_records(path, on_invalid="skip")  # auto: no row shows which format the file is in


def test_skip_over_a_directory_names_each_file(tmp_path: Path) -> None:
    _lines(tmp_path / "a.jsonl", [json.dumps(GOOD), '{"instruction": "q"}'])
    _lines(tmp_path / "b.jsonl", ['{"instruction": "q"}', "nope"])  # nothing usable in this file alone
    report = InvalidRows()
    records = load_records(tmp_path, on_invalid="skip", report=report)
    assert len(records) == 1
    assert report.locations["field 'response' is missing"] == [f"{tmp_path / 'a.jsonl'} line 2"]
    assert report.locations["cannot detect the data format"] == [f"{tmp_path / 'b.jsonl'} line 1"]
    assert report.locations["malformed JSON"] == [f"{tmp_path / 'b.jsonl'} line 2"]


def test_reports_accumulate_over_loads_and_keep_a_few_locations(tmp_path: Path) -> None:
    path = _lines(tmp_path / "m.jsonl", [json.dumps(GOOD)] + ['{"instruction": "q"}'] * 5)
    report = InvalidRows(keep=2)
    load_records(path, on_invalid="skip", report=report)
    load_records(path, on_invalid="skip", report=report)
    assert report.counts == {"field 'response' is missing": 10}
    assert report.locations["field 'response' is missing"] == [f"{path} line 2", f"{path} line 3"]


def test_unknown_on_invalid_value(tmp_path: Path) -> None:
    path = _lines(tmp_path / "d.jsonl", [json.dumps(GOOD)])
    with pytest.raises(DataError, match="on_invalid: got 'ignore', expected 'error' or 'skip'"):
        load_records(path, on_invalid="ignore")


def test_data_inspect_reports_what_it_skipped(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    path = _mixed_jsonl(tmp_path / "m.jsonl")
    r = CliRunner().invoke(app, ["data", "inspect", str(path), "--on-invalid", "skip"])
    assert r.exit_code == 0, r.output
    out = r.stdout.splitlines()
    assert f"{path}: 3 records" in r.stdout
    assert "skipped 7 invalid rows (data.on_invalid = 'skip'):" in out
    assert f"  4 x field 'response' is missing: {path} line 2, {path} line 7, {path} line 9, ..." in out
    assert f"  1 x malformed JSON: {path} line 3" in out
    r = CliRunner().invoke(app, ["data", "inspect", str(path)])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {path} line 2: field 'response' is missing")
    r = CliRunner().invoke(app, ["data", "inspect", str(path), "--on-invalid", "drop"])
    assert r.exit_code == 2 and "--on-invalid: got 'drop', expected one of: error, skip" in r.stderr


def test_partition_reports_what_it_skipped(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    rows = [json.dumps({"instruction": f"q{i}", "response": f"a{i}", "category": "c"}) for i in range(12)]
    path = _lines(tmp_path / "p.jsonl", [rows[0], '{"instruction": "q"}', *rows[1:], "{oops"])
    out = tmp_path / "parts"
    args = ["partition", "--data", str(path), "--clients", "2", "--scheme", "iid", "--test-size", "2",
            "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and f"{path} line 2: field 'response' is missing" in r.stderr and not out.exists()
    r = CliRunner().invoke(app, [*args, "--on-invalid", "skip"])
    assert r.exit_code == 0, r.output
    assert "skipped 2 invalid rows (data.on_invalid = 'skip'):" in r.stdout
    assert f"1 x malformed JSON: {path} line 14" in r.stdout
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["sizes"]) == 10 and stats["invalid"]["skipped"] == 2
    assert stats["invalid"]["reasons"]["field 'response' is missing"] == {"count": 1, "first": [f"{path} line 2"]}
