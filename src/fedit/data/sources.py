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
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fedit.atomic import open_text
from fedit.data.formats import (
    FORMATS,
    apply_field_map,
    check_field_map,
    detect_format,
    get_format,
    parse_field_map,
    to_record,
)
from fedit.data.records import Record
from fedit.errors import DataError

__all__ = ["FORMATS", "detect_format", "load_records", "parse_field_map", "to_record", "write_records"]

RawRow = tuple[str, int, Any]  # (where, position, raw value)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------- file readers


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM written by spreadsheet tools
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected a UTF-8 encoded file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror})") from None


def _jsonl_rows(path: Path, text: str) -> Iterator[RawRow]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            yield where, lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: malformed JSON ({e.msg} at column {e.colno}); expected one JSON object per line"
            ) from None


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
        raise DataError(f"{path} line {e.lineno} column {e.colno}: malformed JSON ({e.msg})") from None
    return ((f"{path} index {i}", i, item) for i, item in enumerate(items))


def _read_csv(path: Path) -> tuple[list[str], Iterator[RawRow]]:
    """The header row and an iterator over the data rows."""
    text = _read_text(path)
    reader = csv.reader(text.splitlines(keepends=True))
    header = [h.strip() for h in next(reader, None) or []]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path} row 1: duplicate column(s) {', '.join(map(repr, dupes))} in the header; "
                        "expected unique column names")
    return header, _csv_rows(path, header, reader)


def _csv_rows(path: Path, header: list[str], reader: Any) -> Iterator[RawRow]:
    start = reader.line_num + 1
    for row in reader:
        where = f"{path} row {start}"
        if row and any(cell.strip() for cell in row):
            if len(row) > len(header):
                raise DataError(f"{where}: {len(row)} values but the header has {len(header)} columns; "
                                "expected at most one value per column (quote values that contain commas)")
            row = row + [None] * (len(header) - len(row))  # a short row: its trailing fields read as missing
            yield where, start, dict(zip(header, row, strict=True))
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


def _convert(rows: Iterable[RawRow], label: str, source_name: str, fmt: str, field_map: Mapping[str, str]
             ) -> list[Record]:
    """Map fields, detect the format from the first row, convert every row; stamp meta source/line."""
    records: list[Record] = []
    name = fmt
    for where, pos, raw in rows:
        if not isinstance(raw, Mapping):
            raise DataError(f"{where}: expected a JSON object with named fields, got {type(raw).__name__}")
        mapped = apply_field_map(raw, field_map)
        if not records:
            name = _first_row_format(raw, mapped, where, label, fmt, field_map, is_csv=False)
        record = to_record(mapped, name, where)
        record.meta["source"] = source_name  # Record is frozen, its meta dict is ours until returned
        record.meta["line"] = pos
        records.append(record)
    if not records:
        raise DataError(f"{label} is empty: no records found; expected at least one instruction record")
    return records


def _first_row_format(raw: Mapping[str, Any], mapped: Mapping[str, Any], where: str, label: str, fmt: str,
                      field_map: Mapping[str, str], *, is_csv: bool) -> str:
    """The format name for a source, checked on its first row (for CSV: on the header)."""
    try:
        missing = [f"{t}={c}" for t, c in field_map.items() if c not in raw]
        if missing:
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
            raise DataError(f"{where}: {e}") from None
        raise DataError(
            f"{label} row 1: the header row ({', '.join(map(repr, raw))}) lacks the needed columns: {e} "
            "A CSV file needs a header row naming its columns, e.g. instruction,context,response,category"
        ) from None


def _load_file(path: Path, fmt: str, field_map: Mapping[str, str]) -> list[Record]:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file extension {path.suffix or '(none)'!r}; "
                        f"expected one of: {', '.join(_READERS)}")
    if reader is not _read_csv:
        return _convert(reader(path), str(path), path.name, fmt, field_map)
    header, rows = _read_csv(path)
    if header:  # check it even with no data rows: a lone header-less line must not read as "empty"
        keys = dict.fromkeys(header, "")
        fmt = _first_row_format(keys, apply_field_map(keys, field_map), f"{path} row 1", str(path), fmt, field_map,
                                is_csv=True)
    return _convert(rows, str(path), path.name, fmt, field_map)


def _natural_key(path: Path) -> list[Any]:
    # local_training_2 sorts before local_training_10
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _load_dir(path: Path, fmt: str, field_map: Mapping[str, str]) -> list[Record]:
    entries = sorted(path.iterdir(), key=_natural_key)
    files = [p for p in entries if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _READERS]
    if not files:
        found = ", ".join(p.name for p in entries) or "nothing"
        raise DataError(f"{path}: directory has no data files; expected files ending in {', '.join(_READERS)}, "
                        f"found {found}")
    records: list[Record] = []
    for file in files:
        records.extend(_load_file(file, fmt, field_map))
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


def _load_hf_dir(path: Path, fmt: str, field_map: Mapping[str, str], split: str | None) -> list[Record]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds; all mean "not a readable saved dataset"
        raise DataError(f"{path}: cannot load as a saved Hugging Face dataset ({type(e).__name__}: {e})") from None
    ds, name = _pick_split(ds, split, str(path))
    label = f"{path} split {name!r}"
    return _convert(_hf_rows(ds, label), label, path.name, fmt, field_map)


def _load_hub(name: str, fmt: str, field_map: Mapping[str, str], split: str | None) -> list[Record]:
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
    return _convert(_hf_rows(ds, label), label, name, fmt, field_map)


def _looks_like_path(text: str) -> bool:
    return (
        Path(text).suffix.lower() in _READERS
        or text.startswith((".", "/", "~"))
        or os.path.isabs(text)
        or not _HUB_NAME.match(text)
    )


def _load_glob(pattern: str, format: str, fmap: dict[str, str]) -> list[Record]:
    """Files matching a glob pattern, in sorted order (e.g. one file per client: `local_training_*.json`)."""
    import glob

    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)) if Path(p).is_file())
    if not files:
        raise DataError(f"{pattern}: no file matches this pattern")
    out: list[Record] = []
    for f in files:
        out.extend(_load_file(f, format, fmap))
    return out


# ---------------------------------------------------------------- public API


def load_records(source: str | Path, *, format: str = "auto", field_map: Mapping[str, str] | None = None,
                 split: str | None = None) -> list[Record]:
    """Load records from "builtin", a data file, a directory of data files, a saved or hub Hugging Face dataset.

    `format` is "auto" (detect from the first record's keys, after mapping) or a name in FORMATS; `field_map`
    renames columns ({"instruction": "question"}) before detection; `split` picks a DatasetDict/hub split
    (default "train"). Raises DataError naming the file, line/row and field for any bad input.
    """
    fmap = check_field_map(field_map)
    if format != "auto":
        get_format(format)  # fail on a bad name before reading anything
    text = str(source)
    if text == "builtin":
        from fedit.data.builtin import builtin_records  # lazy: the suite is generated, not needed for file data

        return builtin_records(split or "train")
    if text.startswith("hf:"):
        return _load_hub(text[3:], format, fmap, split)
    if any(c in text for c in "*?[") and not Path(text).exists():
        return _load_glob(text, format, fmap)
    path = Path(text).expanduser()
    if path.is_dir():
        if _is_hf_dir(path):
            return _load_hf_dir(path, format, fmap, split)
        return _load_dir(path, format, fmap)
    if path.is_file():
        return _load_file(path, format, fmap)
    if path.exists():
        raise DataError(f"{path}: not a regular file or directory")
    if isinstance(source, Path) or _looks_like_path(text):
        raise DataError(f"{path}: file not found; expected a data file ({', '.join(_READERS)}), a directory, "
                        "a Hugging Face dataset name, or 'builtin'")
    return _load_hub(text, format, fmap, split)


def write_records(path: str | Path, records: Iterable[Record]) -> None:
    """Write records as JSON Lines of Record.to_dict() (loads back as "dolly"); atomic via temp file + rename."""
    path = Path(path)
    if path.suffix.lower() not in (".json", *_JSONL_SUFFIXES):
        raise DataError(f"{path}: write_records writes JSON Lines; expected a path ending in .jsonl, got "
                        f"{path.suffix or '(no extension)'!r}")
    with open_text(path) as f:
        for record in records:
            f.write(json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n")
