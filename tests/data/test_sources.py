"""Tests for data sources: every file kind, directories, saved HF datasets, round trips and named input errors."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedit.data.records import Message, Record
from fedit.data.sources import load_records, write_records
from fedit.errors import DataError

ROWS = [
    {"instruction": "Name a fruit.", "context": "", "response": "apple", "category": "brainstorming"},
    {"instruction": "Summarise.", "context": "The sky is blue.", "response": "Blue sky.", "category": "summarization"},
    {"instruction": "Is a cat an animal?", "context": "", "response": "Yes", "category": "classification"},
]
DOLLY_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "dolly-15k-shepherd-10"
DOLLY_CATEGORIES = {"brainstorming", "classification", "closed_qa", "creative_writing", "general_qa",
                    "information_extraction", "open_qa", "summarization"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _csv(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    header = header or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _fields(records: list[Record]) -> list[tuple]:
    return [(r.instruction, r.context, r.response, r.category) for r in records]


EXPECTED = [(r["instruction"], r["context"], r["response"], r["category"]) for r in ROWS]


def _raises(source: Path | str, *needles: str, **kwargs: object) -> str:
    with pytest.raises(DataError) as e:
        load_records(source, **kwargs)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- source kinds


def test_json_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    records = load_records(path)
    assert _fields(records) == EXPECTED
    assert [r.meta for r in records] == [{"source": "d.json", "line": i} for i in range(3)]


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    assert _fields(load_records(_jsonl(tmp_path / "d.json", ROWS))) == EXPECTED


def test_jsonl_with_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    records = load_records(str(path))
    assert _fields(records) == EXPECTED[:2]
    assert [r.meta["line"] for r in records] == [1, 3]


def test_csv(tmp_path: Path) -> None:
    records = load_records(_csv(tmp_path / "d.csv", ROWS))
    assert _fields(records) == EXPECTED
    assert [r.meta["line"] for r in records] == [2, 3, 4]  # header is row 1


def test_csv_quoted_multiline_cell_keeps_row_numbers(tmp_path: Path) -> None:
    rows = [dict(ROWS[0], context="line one\nline two"), ROWS[1]]
    records = load_records(_csv(tmp_path / "d.csv", rows))
    assert records[0].context == "line one\nline two"
    assert [r.meta["line"] for r in records] == [2, 4]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    records = load_records(path)
    assert _fields(records) == EXPECTED
    assert records[2].meta == {"source": "d.parquet", "line": 2}


def test_directory_sorted_and_tagged(tmp_path: Path) -> None:
    _jsonl(tmp_path / "part_10.jsonl", ROWS[2:])
    _csv(tmp_path / "part_2.csv", ROWS[1:2])
    (tmp_path / "part_1.json").write_text(json.dumps(ROWS[:1]), encoding="utf-8")
    (tmp_path / "README.md").write_text("not data", encoding="utf-8")
    records = load_records(tmp_path)
    assert _fields(records) == EXPECTED  # natural order: part_1, part_2, part_10
    assert [r.meta["source"] for r in records] == ["part_1.json", "part_2.csv", "part_10.jsonl"]


def test_saved_hf_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    records = load_records(tmp_path / "ds")
    assert _fields(records) == EXPECTED
    assert records[1].meta == {"source": "ds", "line": 1}


def test_saved_hf_dataset_dict_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:2]), "test": datasets.Dataset.from_list(ROWS[2:])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert _fields(load_records(tmp_path / "dd")) == EXPECTED[:2]
    assert _fields(load_records(tmp_path / "dd", split="test")) == EXPECTED[2:]
    _raises(tmp_path / "dd", "no split 'validation'", "train", "test", split="validation")


def test_saved_hf_sharegpt_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    conv = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]
    datasets.Dataset.from_list([{"conversations": conv, "id": "a"}]).save_to_disk(str(tmp_path / "ds"))
    (rec,) = load_records(tmp_path / "ds")
    assert rec.messages == (Message("user", "Hi"), Message("assistant", "Hello!"))
    assert rec.meta["id"] == "a"


def test_builtin_routes_to_builtin_module() -> None:
    builtin = pytest.importorskip("fedit.data.builtin")
    assert load_records("builtin") == builtin.builtin_records("train")


# ---------------------------------------------------------------- formats through sources


def test_alpaca_jsonl_with_override_and_field_map(tmp_path: Path) -> None:
    rows = [{"q": "Translate", "input": "chat", "output": "cat", "topic": "tr", "lang": "fr"}]
    path = _jsonl(tmp_path / "a.jsonl", rows)
    (rec,) = load_records(path, format="alpaca", field_map={"instruction": "q", "category": "topic"})
    assert (rec.instruction, rec.context, rec.response, rec.category) == ("Translate", "chat", "cat", "tr")
    assert rec.meta == {"lang": "fr", "source": "a.jsonl", "line": 1}


def test_csv_field_map(tmp_path: Path) -> None:
    path = _csv(tmp_path / "qa.csv", [{"question": "Why?", "answer": "Because.", "topic": "open_qa"}])
    (rec,) = load_records(path, field_map={"instruction": "question", "response": "answer", "category": "topic"})
    assert (rec.instruction, rec.response, rec.category) == ("Why?", "Because.", "open_qa")


def test_messages_jsonl(tmp_path: Path) -> None:
    turns = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    (rec,) = load_records(_jsonl(tmp_path / "chat.jsonl", [{"messages": turns}]))
    assert (rec.instruction, rec.response, len(rec.messages)) == ("q1", "a2", 4)


def _without_position(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("source", "line")}


def test_write_records_round_trip(tmp_path: Path) -> None:
    chat = Record("q", "a", messages=(Message("user", "q"), Message("assistant", "a")), meta={"k": [1, 2]})
    records = [*load_records(_jsonl(tmp_path / "in.jsonl", ROWS)), chat]
    out = tmp_path / "sub" / "out.jsonl"
    write_records(out, records)
    back = load_records(out, format="dolly")
    for a, b in zip(records, back, strict=True):
        # meta "source"/"line" say where a record was read from, so they differ; everything else must survive
        assert replace(a, meta=_without_position(a.meta)) == replace(b, meta=_without_position(b.meta))
        assert b.meta["source"] == "out.jsonl"
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_write_records_refuses_non_jsonl_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\.csv"):
        write_records(tmp_path / "out.csv", [Record("q", "a")])


# ---------------------------------------------------------------- bad input: each names file, position, field


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"instruction": "q", "response": }\n', encoding="utf-8")
    _raises(path, "bad.jsonl line 2", "malformed JSON")


def test_malformed_json_list(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "q",\n   "response" "a"}\n]', encoding="utf-8")
    _raises(path, "bad.json line 3", "malformed JSON")


def test_missing_required_field_jsonl(tmp_path: Path) -> None:
    rows = [ROWS[0], {"instruction": "q", "context": "", "category": "open_qa"}]
    _raises(_jsonl(tmp_path / "m.jsonl", rows), "m.jsonl line 2", "field 'response' is missing")


def test_empty_required_field_csv(tmp_path: Path) -> None:
    rows = [ROWS[0], ROWS[1], dict(ROWS[2], instruction="")]
    _raises(_csv(tmp_path / "e.csv", rows), "e.csv row 4", "field 'instruction' is empty")


def test_wrong_type_response_json_list(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps([ROWS[0], dict(ROWS[1], response=[1, 2])]), encoding="utf-8")
    _raises(path, "t.json index 1", "field 'response' must be a string", "got list [1, 2]")


def test_wrong_type_category_parquet(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    rows = [{"instruction": "q", "response": "a", "category": 7}, {"instruction": "q2", "response": "b", "category": 8}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    _raises(path, "c.parquet index 0", "field 'category'", "got int 7")


def test_non_object_item(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    path.write_text(json.dumps([ROWS[0], "just text"]), encoding="utf-8")
    _raises(path, "n.json index 1", "expected a JSON object")


@pytest.mark.parametrize(("name", "content"), [("e.jsonl", ""), ("e.json", "[]"), ("e.json", "  \n"),
                                               ("e.csv", "instruction,response\n"), ("e.csv", "")])
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    _raises(tmp_path / name, name, "empty")


def test_empty_parquet(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"instruction": pa.array([], pa.string()), "response": pa.array([], pa.string())}), path)
    _raises(path, "e.parquet", "empty")


def test_unknown_format_name(tmp_path: Path) -> None:
    _raises(_jsonl(tmp_path / "d.jsonl", ROWS), "unknown data format 'dolli'", "dolly", "alpaca", format="dolli")


def test_undetectable_format_lists_keys(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}])
    _raises(path, "q.jsonl line 1", "question", "answer", "dolly", "messages")


def test_field_map_names_missing_column(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", ROWS)
    _raises(path, "d.jsonl line 1", "instruction=question", "columns present", field_map={"instruction": "question"})


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("hello", encoding="utf-8")
    _raises(path, "d.txt", "unsupported file extension '.txt'", ".jsonl", ".parquet")


def test_csv_without_header(tmp_path: Path) -> None:
    path = tmp_path / "nh.csv"
    path.write_text("Name a fruit.,,apple,brainstorming\nSay hi.,,hi,open_qa\n", encoding="utf-8")
    _raises(path, "nh.csv row 1", "header row", "'Name a fruit.'", "instruction")


def test_csv_header_missing_columns_for_explicit_format(tmp_path: Path) -> None:
    path = _csv(tmp_path / "h.csv", [{"instruction": "q", "answer": "a"}])
    _raises(path, "h.csv row 1", "header row", "'answer'", "output", format="alpaca")


def test_csv_too_many_values(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("instruction,response\nq,a\nq,a,extra\n", encoding="utf-8")
    _raises(path, "w.csv row 3", "3 values", "2 columns")


def test_csv_short_row_reads_as_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("instruction,response,category\nq\n", encoding="utf-8")
    _raises(path, "s.csv row 2", "field 'response' is missing")


def test_file_not_found(tmp_path: Path) -> None:
    _raises(tmp_path / "nope.jsonl", "nope.jsonl", "not found")
    _raises(str(tmp_path / "nope"), "nope", "not found")


def test_empty_directory(tmp_path: Path) -> None:
    _raises(tmp_path, str(tmp_path), "no data files", "found nothing")


def test_directory_error_names_the_bad_file(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", ROWS)
    _jsonl(tmp_path / "b.jsonl", [ROWS[0], dict(ROWS[1], response=3)])
    _raises(tmp_path, "b.jsonl line 2", "field 'response'", "got int 3")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"instruction": "caf\xe9", "response": "a"}\n')
    _raises(path, "l.jsonl", "not UTF-8")


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not DOLLY_DIR.is_dir(), reason="Dolly split not present at ../shared/data")
def test_real_dolly_split() -> None:
    """Reads ../shared/data/dolly-15k-shepherd-10 (outside the repo): all 10 client files load, 8 categories."""
    categories: Counter[str] = Counter()
    for i in range(10):
        records = load_records(DOLLY_DIR / f"local_training_{i}.json")
        assert len(records) > 1000
        assert all(r.instruction and r.response for r in records)
        categories.update(r.category for r in records)
    assert set(categories) == DOLLY_CATEGORIES
    test = load_records(DOLLY_DIR / "global_test.json", format="dolly")
    assert Counter(r.category for r in test) == dict.fromkeys(DOLLY_CATEGORIES, 10)


def test_glob_pattern_loads_matching_files_in_order(tmp_path):
    """A glob selects files (e.g. one per client) and leaves others out; each record names its file."""
    for i in (2, 1):
        (tmp_path / f"part_{i}.json").write_text(json.dumps([{"instruction": f"q{i}", "response": f"a{i}"}]))
    (tmp_path / "test.json").write_text(json.dumps([{"instruction": "t", "response": "t"}]))
    recs = load_records(str(tmp_path / "part_*.json"))
    assert [r.instruction for r in recs] == ["q1", "q2"]
    assert [r.meta["source"] for r in recs] == ["part_1.json", "part_2.json"]
    with pytest.raises(DataError, match="no file matches"):
        load_records(str(tmp_path / "nothing_*.json"))
