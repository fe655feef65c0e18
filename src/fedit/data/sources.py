"""Load instruction records from files, directories, Hugging Face datasets or the built-in suite; write them back.

Positions in errors and in ``meta["line"]``: JSON Lines ``line N`` (1-based file line); CSV ``row N`` (spreadsheet
numbering: the header is row 1, so N is also the file line where the record starts); a JSON list, Parquet file or
Hugging Face dataset ``index N`` (0-based, as ``data[N]``). ``meta["source"]`` is the file name (or dataset name).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedit.atomic import open_text
from fedit.data.formats import (
    DETECT_FAILED,
    FORMATS,
    apply_field_map,
    check_field_map,
    detect_format,
    get_format,
    parse_field_map,
    to_record,
)
from fedit.data.invalid import InvalidRows, RowError, check_on_invalid
from fedit.data.records import Record
from fedit.errors import DataError

__all__ = ["FORMATS", "detect_format", "load_records", "parse_field_map", "to_record", "write_records"]

RawRow = tuple[str, int, Any]  # (where, position, raw value); the value is a RowError for a row that cannot be read
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------- file readers


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # also the start of UTF-32's


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror})") from None
    if data.startswith(_UTF16_BOMS):
        raise DataError(f"{path}: not UTF-8 text (it starts with a UTF-16 byte order mark); expected a UTF-8 "
                        "encoded file (re-save it as UTF-8)")
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the UTF-8 BOM written by spreadsheet tools
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected a UTF-8 encoded file") from None


def _json_failure(e: Exception) -> tuple[str, str]:
    """(what went wrong, the reason it is counted by) for an exception json.loads raised."""
    if isinstance(e, json.JSONDecodeError):
        return f"malformed JSON ({e.msg.removesuffix(' at')} at column {e.colno})", "malformed JSON"
    if isinstance(e, RecursionError):
        return "JSON nested too deeply to read", "JSON nested too deeply"
    if "digits" in str(e):  # Python's limit on the digits of an integer read from text
        return (f"unreadable JSON value (a number with more than {sys.get_int_max_str_digits()} digits)",
                "JSON number with too many digits")
    return f"unreadable JSON value ({e})", "unreadable JSON value"


def _jsonl_rows(path: Path, text: str) -> Iterator[RawRow]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            what, reason = _json_failure(e)
            value = RowError(where, f"{what}; expected one JSON object per line", reason)
        yield where, lineno, value


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    return _jsonl_rows(path, _read_text(path))


def _read_json(path: Path) -> Iterator[RawRow]:
    """A JSON list of objects; a .json file holding JSON Lines (first character "{") is read as such."""
    text = _read_text(path)
    head = text.lstrip()[:1]
    if head == "{":
        return _jsonl_rows(path, text)
    if head and head != "[":
        raise DataError(f"{path}: expected a JSON list of objects ('[{{...}}, ...]') or JSON Lines, "
                        f"got text starting with {text.lstrip()[:20]!r}")
    try:
        items = json.loads(text) if head else []
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno} column {e.colno}: malformed JSON ({e.msg.removesuffix(' at')})"
                        ) from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: {_json_failure(e)[0]}; expected a JSON list of objects") from None
    return ((f"{path} index {i}", i, item) for i, item in enumerate(items))


_CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB per cell) refuses long documents


@contextmanager
def _long_csv_fields() -> Iterator[None]:
    old = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_csv(path: Path) -> tuple[list[str], list[RawRow]]:
    """The header row and the data rows (parsed at once, so a CSV syntax error is found before any row is used)."""
    text = _read_text(path)
    reader = csv.reader(text.splitlines(keepends=True))
    with _long_csv_fields():
        try:
            header = [h.strip() for h in next(reader, None) or []]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise DataError(f"{path} row 1: duplicate column(s) {', '.join(map(repr, dupes))} in the header; "
                                "expected unique column names")
            return header, list(_csv_rows(path, header, reader))
        except csv.Error as e:
            raise DataError(f"{path} row {reader.line_num}: cannot parse CSV ({e})") from None


def _blank_csv_row(row: list[str]) -> bool:
    """An empty line, a line of spaces, or a row of empty cells; a quoted " " cell is data."""
    return not row or all(cell == "" for cell in row) or (len(row) == 1 and not row[0].strip())


def _csv_rows(path: Path, header: list[str], reader: Any) -> Iterator[RawRow]:
    start = reader.line_num + 1
    for row in reader:
        where = f"{path} row {start}"
        if not _blank_csv_row(row):
            if len(row) > len(header):
                yield where, start, RowError(where, f"{len(row)} values but the header has {len(header)} columns; "
                                             "expected at most one value per column (quote values that contain "
                                             "commas)", "more values than the header has columns")
            else:
                yield where, start, dict(zip(header, row, strict=False))  # a short row lacks its trailing fields
        start = reader.line_num + 1


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read as Parquet ({e}); expected a valid .parquet file") from None
    return ((f"{path} index {i}", i, row) for i, row in enumerate(rows))


_READERS: dict[str, Any] = {".json": _read_json, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv,
                             ".parquet": _read_parquet}


# ---------------------------------------------------------------- conversion


@dataclass
class _Reading:
    """How to read rows: the format ("auto" or a name), the field map, and where skipped rows go (None: stop)."""

    fmt: str
    field_map: Mapping[str, str]
    skipped: InvalidRows | None = None

    def drop(self, error: RowError) -> None:
        if self.skipped is None:
            raise error
        self.skipped.add(error)


def _convert(rows: Iterable[RawRow], label: str, source_name: str, how: _Reading) -> list[Record]:
    """Map fields, detect the format from the first good row, convert every row; stamp meta source/line.

    A bad row stops the load, or with `how.skipped` is counted there and dropped; a source with no rows at all is
    an error either way, one whose every row was dropped returns [] (load_records decides if anything is left).
    """
    records: list[Record] = []
    name = how.fmt
    dropped = 0
    for where, pos, raw in rows:
        try:
            if isinstance(raw, RowError):
                raise raw
            if not isinstance(raw, Mapping):
                raise RowError(where, f"expected a JSON object with named fields, got {type(raw).__name__}",
                               "not a JSON object")
            mapped = apply_field_map(raw, how.field_map)
            if not records:
                name = _first_row_format(raw, mapped, where, label, how.fmt, how.field_map, is_csv=False)
            record = to_record(mapped, name, where)
        except RowError as e:
            how.drop(e)
            dropped += 1
            continue
        record.meta["source"] = source_name  # Record is frozen, its meta dict is ours until returned
        record.meta["line"] = pos
        records.append(record)
    if not records and not dropped:
        raise DataError(f"{label} is empty: no records found; expected at least one instruction record")
    return records


def _first_row_format(raw: Mapping[str, Any], mapped: Mapping[str, Any], where: str, label: str, fmt: str,
                      field_map: Mapping[str, str], *, is_csv: bool) -> str:
    """The format name for a source, checked on its first row (for CSV: on the header)."""
    reason = DETECT_FAILED
    try:
        missing = [f"{t}={c}" for t, c in field_map.items() if c not in raw]
        if missing:
            reason = "the field map names a column that is not present"
            raise DataError(f"field map {', '.join(missing)} names column(s) not present; "
                            f"columns present: {', '.join(map(str, raw))}")
        if fmt == "auto":
            return detect_format(mapped.keys())
        spec = get_format(fmt)
        if is_csv and not spec.matches(mapped.keys()):
            raise DataError(f"format {fmt!r} needs the columns {spec.keys}")
        return fmt
    except DataError as e:
        if not is_csv:
            raise RowError(where, str(e), reason) from None
        raise DataError(
            f"{label} row 1: the header row ({', '.join(map(repr, raw))}) lacks the needed columns: {e} "
            "A CSV file needs a header row naming its columns, e.g. instruction,context,response,category"
        ) from None


def _load_file(path: Path, how: _Reading) -> list[Record]:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file extension {path.suffix or '(none)'!r}; "
                        f"expected one of: {', '.join(_READERS)}")
    if reader is not _read_csv:
        return _convert(reader(path), str(path), path.name, how)
    header, rows = _read_csv(path)
    if header:  # check it even with no data rows: a lone header-less line must not read as "empty"
        keys = dict.fromkeys(header, "")
        fmt = _first_row_format(keys, apply_field_map(keys, how.field_map), f"{path} row 1", str(path), how.fmt,
                                how.field_map, is_csv=True)
        how = replace(how, fmt=fmt)
    return _convert(rows, str(path), path.name, how)


def _natural_key(path: Path) -> list[Any]:
    # local_training_2 sorts before local_training_10
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _load_dir(path: Path, how: _Reading) -> list[Record]:
    entries = sorted(path.iterdir(), key=_natural_key)
    files = [p for p in entries if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _READERS]
    if not files:
        found = ", ".join(p.name for p in entries) or "nothing"
        raise DataError(f"{path}: directory has no data files; expected files ending in {', '.join(_READERS)}, "
                        f"found {found}")
    records: list[Record] = []
    for file in files:
        records.extend(_load_file(file, how))
    return records


# ---------------------------------------------------------------- Hugging Face datasets


def _is_hf_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _pick_split(ds: Any, split: str | None, label: str) -> tuple[Any, str]:
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        name = split or "train"
        if name not in ds:
            raise DataError(f"{label}: no split {name!r}; expected one of: {', '.join(ds)}")
        return ds[name], name
    if split not in (None, "train"):
        raise DataError(f"{label}: holds a single dataset with no splits; cannot select split {split!r}")
    return ds, split or "train"


def _hf_rows(ds: Any, label: str) -> Iterator[RawRow]:
    return ((f"{label} index {i}", i, row) for i, row in enumerate(ds))


def _hf_rows(ds: Any, label: str) -> Iterator[RawRow]:
    return ((f"{label} index {i}", i, row) for i, row in enumerate(ds))


def _load_hf_dir(path: Path, how: _Reading, split: str | None) -> list[Record]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds; all mean "not a readable saved dataset"
        raise DataError(f"{path}: cannot load as a saved Hugging Face dataset ({type(e).__name__}: {e})") from None
    ds, name = _pick_split(ds, split, str(path))
    label = f"{path} split {name!r}"
    return _convert(_hf_rows(ds, label), label, path.name, how)


def _load_hub(name: str, how: _Reading, split: str | None) -> list[Record]:
    from datasets import load_dataset

    split = split or "train"
    try:
        ds = load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, missing split: all user-facing
        raise DataError(
            f"{name!r} is not a local file or directory, and loading it as a Hugging Face hub dataset "
            f"(split {split!r}) failed: {type(e).__name__}: {e}"
        ) from None
    label = f"hub dataset {name!r} split {split!r}"
    return _convert(_hf_rows(ds, label), label, name, how)


def _looks_like_path(text: str) -> bool:
    return (
        Path(text).suffix.lower() in _READERS
        or text.startswith((".", "/", "~"))
        or os.path.isabs(text)
        or not _HUB_NAME.match(text)
    )


def _load_glob(pattern: str, how: _Reading) -> list[Record]:
    """Files matching a glob pattern, in sorted order (e.g. one file per client: `local_training_*.json`)."""
    import glob

    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)) if Path(p).is_file())
    if not files:
        raise DataError(f"{pattern}: no file matches this pattern")
    out: list[Record] = []
    for f in files:
        out.extend(_load_file(f, how))
    return out


def _load_source(text: str, source: str | Path, how: _Reading, split: str | None) -> list[Record]:
    if text.startswith("hf:"):
        return _load_hub(text[3:], how, split)
    if any(c in text for c in "*?[") and not Path(text).exists():
        return _load_glob(text, how)
    path = Path(text).expanduser()
    if path.is_dir():
        if _is_hf_dir(path):
            return _load_hf_dir(path, how, split)
        return _load_dir(path, how)
    if path.is_file():
        return _load_file(path, how)
    if path.exists():
        raise DataError(f"{path}: not a regular file or directory")
    if isinstance(source, Path) or _looks_like_path(text):
        raise DataError(f"{path}: file not found; expected a data file ({', '.join(_READERS)}), a directory, "
                        "a Hugging Face dataset name, or 'builtin'")
    return _load_hub(text, how, split)


# ---------------------------------------------------------------- public API


def load_records(source: str | Path, *, format: str = "auto", field_map: Mapping[str, str] | None = None,
                 split: str | None = None, on_invalid: str = "error", report: InvalidRows | None = None
                 ) -> list[Record]:
    """Load records from "builtin", a data file, a directory of data files, a saved or hub Hugging Face dataset.

    `format` is "auto" (detect from the first record's keys, after mapping) or a name in FORMATS; `field_map`
    renames columns ({"instruction": "question"}) before detection; `split` picks a DatasetDict/hub split
    (default "train"). `on_invalid="error"` (default) raises DataError naming the file, line/row and field of the
    first bad row; `"skip"` drops bad rows and counts them per reason in `report` (an `InvalidRows`), and raises
    only when nothing valid is left. Problems with a whole file (unreadable, truncated JSON, no rows) always raise.
    """
    fmap = check_field_map(field_map)
    check_on_invalid(on_invalid)
    if format != "auto":
        get_format(format)  # fail on a bad name before reading anything
    text = str(source)
    if not text.strip():
        raise DataError(f"no data source given (got {text!r}); expected 'builtin', a data file or directory, or a "
                        "Hugging Face dataset name")
    if text == "builtin":
        from fedit.data.builtin import builtin_records  # lazy: the suite is generated, not needed for file data

        return builtin_records(split or "train")
    skipped = InvalidRows(keep=report.keep if report is not None else 3) if on_invalid == "skip" else None
    records = _load_source(text, source, _Reading(format, fmap, skipped), split)
    if skipped is not None:
        if report is not None:
            report.merge(skipped)
        if not records:
            rows = "its only row was" if skipped.total == 1 else f"all {skipped.total} rows were"
            raise DataError(f"{text}: no valid records left: {rows} invalid and skipped ({skipped.summary()}; "
                            f"first at {skipped.first()}); expected at least one valid instruction record")
    return records


def write_records(path: str | Path, records: Iterable[Record]) -> None:
    """Write records as JSON Lines of Record.to_dict() (loads back as "dolly"); atomic via temp file + rename."""
    path = Path(path)
    if path.suffix.lower() not in (".json", *_JSONL_SUFFIXES):
        raise DataError(f"{path}: write_records writes JSON Lines; expected a path ending in .jsonl, got "
                        f"{path.suffix or '(no extension)'!r}")
    with open_text(path) as f:
        for record in records:
            f.write(json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n")
