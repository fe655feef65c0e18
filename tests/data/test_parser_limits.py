"""Parser blowups end in a DataError naming the file (and line), never a RecursionError/ValueError traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedit.data.invalid import InvalidRows
from fedit.data.sources import load_records
from fedit.errors import DataError

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 100_000  # over Python 3.11's 4300-digit limit for int(str)
GOOD = json.dumps({"instruction": "q", "response": "a"})


def _raises(path: Path, *needles: str, **kwargs: object) -> str:
    with pytest.raises(DataError) as e:
        load_records(path, **kwargs)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg[:300]!r}"
    assert len(msg) < 1000  # the offending text is never echoed back whole
    return msg


def test_deeply_nested_json_list(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(DEEP, encoding="utf-8")
    _raises(path, str(path), "nested too deeply")


def test_deeply_nested_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text(GOOD + "\n" + DEEP + "\n", encoding="utf-8")
    _raises(path, f"{path} line 2", "nested too deeply")
    report = InvalidRows()
    assert len(load_records(path, on_invalid="skip", report=report)) == 1
    assert report.counts == {"JSON nested too deeply": 1}


def test_deeply_nested_object_in_a_field(tmp_path: Path) -> None:
    path = tmp_path / "deepfield.jsonl"
    path.write_text('{"instruction": "q", "response": ' + DEEP + "}\n", encoding="utf-8")
    _raises(path, f"{path} line 1", "nested too deeply")


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_integer_with_too_many_digits(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"huge{suffix}"
    row = '{"instruction": "q", "response": ' + HUGE_INT + "}"
    path.write_text(f"[{row}]" if suffix == ".json" else row + "\n", encoding="utf-8")
    _raises(path, str(path), "unreadable JSON value", "digits")


def test_messages_cell_nested_too_deeply(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('messages\n"' + DEEP + '"\n', encoding="utf-8")
    _raises(path, f"{path} row 2", "not a JSON list of turns")


def test_non_list_json_document(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    path.write_text('"text"', encoding="utf-8")
    _raises(path, str(path), "expected a JSON list of objects")


def test_huge_csv_cell_is_data(tmp_path: Path) -> None:
    """A 1 MB context cell is more than the csv module's default field limit (128 KiB); it is data, not an error."""
    path = tmp_path / "big.csv"
    path.write_text("instruction,context,response\nSummarise.," + "x" * 1_000_000 + ",short\n", encoding="utf-8")
    (record,) = load_records(path)
    assert len(record.context) == 1_000_000

