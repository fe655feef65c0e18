"""Instruction data formats (dolly, alpaca, messages/sharegpt): field mapping, detection, conversion to Record."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedit.data.invalid import RowError
from fedit.data.records import Message, Record
from fedit.errors import ConfigError, DataError
from fedit.registry import Registry

__all__ = [
    "FIELD_TARGETS",
    "FORMATS",
    "Format",
    "apply_field_map",
    "check_field_map",
    "detect_format",
    "get_format",
    "parse_field_map",
    "to_record",
]

# Names a field map may rename columns *to*: the canonical fields plus the format-specific keys.
FIELD_TARGETS = ("instruction", "context", "response", "category", "input", "output", "messages", "conversations")

# ShareGPT "from" values and chat "role" values, normalised to Record roles.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}


@dataclass(frozen=True)
class Format:
    """A data format: which keys identify it (for detection) and how one raw mapping becomes a Record."""

    name: str
    keys: str  # human-readable key list for error messages
    matches: Callable[[Collection[str]], bool]
    convert: Callable[[Mapping[str, Any], str], Record]


FORMATS: Registry[Format] = Registry("data format")
# Detection tries these in order; dolly first so a Record.to_dict() row (instruction/response/messages) stays exact.
_DETECTION_ORDER = ("dolly", "alpaca", "messages")


# ---------------------------------------------------------------- field checks


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _required_str(raw: Mapping[str, Any], key: str, where: str) -> str:
    """A string field that must be present and not "" (whitespace is data: " " is a valid answer)."""
    if key in raw and raw[key] is None:
        raise RowError(where, f"field {key!r} is null; expected a non-empty string", f"field {key!r} is missing")
    if key not in raw:
        keys = ", ".join(map(str, raw)) or "(none)"
        raise RowError(where, f"field {key!r} is missing (keys present: {keys}); expected a non-empty string",
                       f"field {key!r} is missing")
    value = raw[key]
    if not isinstance(value, str):
        raise RowError(where, f"field {key!r} must be a string, got {type(value).__name__} {_show(value)}",
                       f"field {key!r} must be a string")
    if not value:
        raise RowError(where, f"field {key!r} is empty; expected a non-empty string", f"field {key!r} is empty")
    return value


def _optional_str(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None or isinstance(value, str):
        return value
    raise RowError(where, f"field {key!r} must be a string or absent, got {type(value).__name__} {_show(value)}",
                   f"field {key!r} must be a string or absent")


def _category(raw: Mapping[str, Any], where: str) -> str | None:
    # An empty category (e.g. a blank CSV cell) means "no category".
    return _optional_str(raw, "category", where) or None


def _meta(raw: Mapping[str, Any], used: Collection[str]) -> dict[str, Any]:
    """Unmapped extra columns; a nested "meta" dict (from Record.to_dict) is merged in."""
    meta: dict[str, Any] = {}
    nested = raw.get("meta")
    if isinstance(nested, Mapping):
        meta.update(nested)
    for key, value in raw.items():
        if key in used or (key == "meta" and isinstance(value, Mapping)):
            continue
        meta[key] = value
    return meta


def _parse_turns(value: Any, key: str, where: str) -> tuple[Message, ...]:
    """A list of {role, content} or ShareGPT {from, value} turns -> Messages with normalised roles."""
    if isinstance(value, str):  # e.g. a JSON-encoded list in a CSV cell
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, a 5000-digit number, [[[[... nested deep
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "unreadable JSON"
            raise RowError(where, f"field {key!r} is a string that is not a JSON list of turns ({msg})",
                           f"field {key!r} is a string that is not a JSON list of turns") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise RowError(where, f"field {key!r} must be a non-empty list of turns, got {_show(value)}",
                       f"field {key!r} must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, Mapping):
            raise RowError(where, f"field {key}[{i}] must be an object, got {type(turn).__name__} {_show(turn)}",
                           f"field {key!r} has a turn that is not an object")
        role_key = "role" if "role" in turn else "from"
        content_key = "content" if "content" in turn else "value"
        role = turn.get(role_key)
        norm = ROLE_ALIASES.get(role.lower()) if isinstance(role, str) else None
        if norm is None:
            raise RowError(where, f"field {key}[{i}].{role_key} is {_show(role)}; expected one of: "
                           f"{', '.join(ROLE_ALIASES)}", f"field {key!r} has a turn with an unknown role")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise RowError(where, f"field {key}[{i}].{content_key} must be a string, got {type(content).__name__} "
                           f"{_show(content)}", f"field {key!r} has a turn whose content is not a string")
        turns.append(Message(norm, content))
    return tuple(turns)


# ---------------------------------------------------------------- the formats


def _from_dolly(raw: Mapping[str, Any], where: str) -> Record:
    messages: tuple[Message, ...] = ()
    if raw.get("messages"):  # a Record.to_dict() row of a chat record
        messages = _parse_turns(raw["messages"], "messages", where)
    return Record(
        instruction=_required_str(raw, "instruction", where),
        response=_required_str(raw, "response", where),
        context=_optional_str(raw, "context", where) or "",
        category=_category(raw, where),
        meta=_meta(raw, ("instruction", "response", "context", "category", "messages")),
        messages=messages,
    )


def _from_alpaca(raw: Mapping[str, Any], where: str) -> Record:
    return Record(
        instruction=_required_str(raw, "instruction", where),
        response=_required_str(raw, "output", where),
        context=_optional_str(raw, "input", where) or "",
        category=_category(raw, where),
        meta=_meta(raw, ("instruction", "output", "input", "category")),
    )


def _from_messages(raw: Mapping[str, Any], where: str) -> Record:
    key = "messages" if "messages" in raw else "conversations"
    if key not in raw:
        raise RowError(where, "field 'messages' (or 'conversations') is missing; expected a list of turns",
                       "field 'messages' is missing")
    turns = _parse_turns(raw[key], key, where)
    first_user = next((i for i, t in enumerate(turns) if t.role == "user"), None)
    if first_user is None:
        raise RowError(where, f"field {key!r} has no user turn; expected at least one user and one assistant turn",
                       f"field {key!r} has no user turn")
    last_asst = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=None)
    if last_asst is None or last_asst < first_user:
        raise RowError(where, f"field {key!r} has no assistant turn after the first user turn; expected at least "
                       "one user turn answered by an assistant turn", f"field {key!r} has no assistant turn")
    for i, role in ((first_user, "user"), (last_asst, "assistant")):
        if not turns[i].content:  # "" is empty; " " is data
            raise RowError(where, f"field {key}[{i}] ({role} turn) is empty; expected a non-empty string",
                           f"field {key!r} has an empty {role} turn")
    return Record(
        instruction=turns[first_user].content,
        response=turns[last_asst].content,
        category=_category(raw, where),
        meta=_meta(raw, (key, "category")),
        messages=turns,
    )


def _has(*required: str) -> Callable[[Collection[str]], bool]:
    return lambda keys: all(k in keys for k in required)


FORMATS.add("dolly", Format("dolly", "instruction, response [, context, category]", _has("instruction", "response"),
                            _from_dolly))
FORMATS.add("alpaca", Format("alpaca", "instruction, output [, input, category]", _has("instruction", "output"),
                             _from_alpaca))
_MESSAGES = Format("messages", "messages (role/content) or conversations (from/value) [, category]",
                   lambda keys: "messages" in keys or "conversations" in keys, _from_messages)
FORMATS.add("messages", _MESSAGES)
FORMATS.add("sharegpt", _MESSAGES)


# ---------------------------------------------------------------- public helpers


def _known_formats() -> str:
    return "; ".join(f"{name} ({FORMATS.get(name).keys})" for name in _DETECTION_ORDER) + " (alias: sharegpt)"


def get_format(name: str) -> Format:
    """The format registered under `name`; DataError listing the known names otherwise."""
    if name not in FORMATS:
        raise DataError(f"unknown data format {name!r}; expected 'auto' or one of: {', '.join(FORMATS.names())}")
    return FORMATS.get(name)


DETECT_FAILED = "cannot detect the data format"  # the reason skipped rows of no known format are counted by


def detect_format(keys: Collection[str]) -> str:
    """Name of the first format whose identifying keys are all present; DataError naming the keys seen otherwise."""
    for name in _DETECTION_ORDER:
        if FORMATS.get(name).matches(keys):
            return name
    seen = ", ".join(map(str, keys)) or "(none)"
    raise DataError(
        f"{DETECT_FAILED} from the keys {seen}; known formats: {_known_formats()}. "
        "Pass the format explicitly or map your columns, e.g. --field instruction=question --field response=answer"
    )


def to_record(raw: Mapping[str, Any], fmt: str, where: str) -> Record:
    """Convert one raw (already field-mapped) mapping; `where` (e.g. "data.jsonl line 7") prefixes every error."""
    if not isinstance(raw, Mapping):
        raise RowError(where, f"expected an object with named fields, got {type(raw).__name__} {_show(raw)}",
                       "not an object with named fields")
    if fmt == "auto":
        try:
            fmt = detect_format(raw.keys())
        except DataError as e:
            raise RowError(where, str(e), DETECT_FAILED) from None
    return get_format(fmt).convert(raw, where)


def parse_field_map(items: Sequence[str]) -> dict[str, str]:
    """["instruction=question", "response=answer,category=topic"] -> {"instruction": "question", ...}."""
    out: dict[str, str] = {}
    for item in items:
        for pair in item.split(","):
            target, sep, column = (part.strip() for part in pair.partition("="))
            if not sep or not target or not column:
                raise ConfigError(f"bad field mapping {pair!r}; expected FIELD=COLUMN, e.g. instruction=question")
            if target in out:
                raise ConfigError(f"field {target!r} is mapped twice ({out[target]!r} and {column!r}); map it once")
            out[target] = column
    return check_field_map(out)


def check_field_map(field_map: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a {field: column} map: known target fields, string column names."""
    out = dict(field_map or {})
    for target, column in out.items():
        if target not in FIELD_TARGETS:
            raise ConfigError(f"cannot map a column to unknown field {target!r}; expected one of: "
                              f"{', '.join(FIELD_TARGETS)}")
        if not isinstance(column, str) or not column:
            raise ConfigError(f"field map {target}={column!r}: the column name must be a non-empty string")
    return out


def apply_field_map(raw: Mapping[str, Any], field_map: Mapping[str, str]) -> dict[str, Any]:
    """Rename columns to fields ({field: column}); a column a mapped field displaces is kept in "meta"."""
    if not field_map:
        return dict(raw)
    sources = set(field_map.values())
    out: dict[str, Any] = {}
    displaced: dict[str, Any] = {}
    for key, value in raw.items():
        if key in sources:
            continue
        if key in field_map and field_map[key] in raw:
            displaced[key] = value
        else:
            out[key] = value
    for target, column in field_map.items():
        if column in raw:
            out[target] = raw[column]
    if displaced:
        nested = out.get("meta")
        out["meta"] = {**(nested if isinstance(nested, Mapping) else {}), **displaced}
    return out
