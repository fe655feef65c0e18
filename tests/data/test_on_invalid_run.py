"""data.on_invalid through a run: prepare_data counts what it dropped in the stats (partition/stats.json), the run
logs it, and the default ("error") still stops before any run directory exists."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedit.cli import app
from fedit.config import Config
from fedit.data.records import Record
from fedit.data.sources import write_records
from fedit.pipeline import prepare_data


def make_records(n: int) -> list[Record]:
    cats = ("open_qa", "classification")
    return [Record(instruction=f"Question {i}?", response=f"Answer {i}", category=cats[i % 2]) for i in range(n)]


def _dirty_data(path: Path, n: int = 40) -> Path:
    """`n` good records, then a missing response, a malformed line and a number where a string belongs."""
    write_records(path, make_records(n))
    with path.open("a", encoding="utf-8") as f:
        f.write('{"instruction": "no answer"}\n{"instruction": "q", "response": \n')
        f.write('{"instruction": 12, "response": "a"}\n{"instruction": "q2"}\n')
    return path


def _cfg(data: Path, test: Path | None = None, on_invalid: str = "skip") -> Config:
    return Config().override({"data.source": str(data), "data.on_invalid": on_invalid, "partition.clients": 2,
                              "partition.test_size": 2, "data.test_source": str(test) if test else None})


def test_prepare_data_counts_skipped_rows_in_the_stats(tmp_path: Path) -> None:
    data = _dirty_data(tmp_path / "train.jsonl")
    test = _dirty_data(tmp_path / "test.jsonl", n=6)
    logged: list[str] = []
    prepared = prepare_data(_cfg(data, test), logged.append)
    assert sum(len(c) for c in prepared.client_records) == 40 and len(prepared.test) == 6
    invalid = prepared.stats["invalid"]
    assert invalid["skipped"] == 8
    assert invalid["reasons"]["field 'response' is missing"] == {
        "count": 4, "first": [f"{data} line 41", f"{data} line 44", f"{test} line 7"]}
    assert invalid["reasons"]["malformed JSON"]["count"] == 2
    assert logged[0] == "skipped 8 invalid rows (data.on_invalid = 'skip'):" and len(logged) == 4


def test_prepare_data_error_mode_has_no_invalid_stats(tmp_path: Path) -> None:
    data = tmp_path / "clean.jsonl"
    write_records(data, make_records(20))
    assert "invalid" not in prepare_data(_cfg(data, on_invalid="error")).stats
    assert prepare_data(_cfg(data)).stats["invalid"] == {"skipped": 0, "reasons": {}}


def test_run_with_skip_reports_and_records_what_it_dropped(micro_model_dir: Path, tmp_path: Path) -> None:
    data = _dirty_data(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    common = ["run", "--model", str(micro_model_dir), "--data", str(data), "--clients", "2", "--test-size", "2",
              "--rounds", "1", "--local-steps", "1", "--batch-size", "4", "--micro-batch-size", "4",
              "--eval-limit", "2", "--out", str(out)]
    r = CliRunner().invoke(app, common)
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {data} line 41: field 'response' is missing"), r.output
    assert not out.exists()
    r = CliRunner().invoke(app, [*common, "--on-invalid", "skip"])
    assert r.exit_code == 0, r.output
    assert "skipped 4 invalid rows (data.on_invalid = 'skip'):" in r.stdout
    assert f"2 x field 'response' is missing: {data} line 41, {data} line 44" in r.stdout
    stats = json.loads((out / "partition" / "stats.json").read_text())
    assert stats["invalid"]["skipped"] == 4 and len(stats["invalid"]["reasons"]) == 3
