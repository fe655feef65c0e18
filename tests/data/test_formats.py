"""Tests for data formats: conversion, detection, override, field mapping, ShareGPT/messages, error messages."""

from __future__ import annotations

import pytest

from fedit.data.formats import (
    FORMATS,
    apply_field_map,
    detect_format,
    parse_field_map,
    to_record,
)
from fedit.data.records import Message
from fedit.errors import ConfigError, DataError

WHERE = "data.jsonl line 7"


def test_registry_names_include_alias() -> None:
    assert {"dolly", "alpaca", "messages", "sharegpt"} <= set(FORMATS.names())
    assert FORMATS.get("sharegpt") is FORMATS.get("messages")


def test_dolly_record_and_extras_to_meta() -> None:
    raw = {"instruction": "Name a fruit", "context": "", "response": "apple", "category": "brainstorming", "id": 3}
    rec = to_record(raw, "dolly", WHERE)
    assert (rec.instruction, rec.context, rec.response, rec.category) == ("Name a fruit", "", "apple", "brainstorming")
    assert rec.meta == {"id": 3}
    assert rec.messages == ()


def test_dolly_optional_context_and_category() -> None:
    rec = to_record({"instruction": "q", "response": "a"}, "dolly", WHERE)
    assert rec.context == "" and rec.category is None
    assert to_record({"instruction": "q", "response": "a", "category": ""}, "dolly", WHERE).category is None


def test_alpaca_record() -> None:
    rec = to_record({"instruction": "Translate", "input": "chat", "output": "cat"}, "alpaca", WHERE)
    assert (rec.instruction, rec.context, rec.response, rec.category) == ("Translate", "chat", "cat", None)
    assert to_record({"instruction": "q", "output": "a", "category": "qa"}, "alpaca", WHERE).category == "qa"


def test_messages_record_roles_and_turns() -> None:
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue"},
    ]
    rec = to_record({"messages": turns, "category": "chat"}, "messages", WHERE)
    assert rec.instruction == "Hi" and rec.response == "Blue" and rec.category == "chat"
    assert [m.role for m in rec.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert rec.messages[3] == Message("user", "Colour of the sky?")


def test_sharegpt_conversation() -> None:
    raw = {
        "id": "conv-1",
        "conversations": [
            {"from": "system", "value": "You help."},
            {"from": "human", "value": "What is 2+2?"},
            {"from": "gpt", "value": "4"},
        ],
    }
    assert detect_format(raw.keys()) == "messages"
    rec = to_record(raw, "sharegpt", WHERE)
    assert rec.messages == (Message("system", "You help."), Message("user", "What is 2+2?"), Message("assistant", "4"))
    assert rec.instruction == "What is 2+2?" and rec.response == "4"
    assert rec.meta == {"id": "conv-1"}


def test_messages_round_trip_through_to_dict() -> None:
    raw = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "src": "x"}
    rec = to_record(raw, "messages", WHERE)
    back = to_record(rec.to_dict(), "auto", WHERE)
    assert back == rec


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["instruction", "context", "response", "category"], "dolly"),
        (["instruction", "input", "output"], "alpaca"),
        (["instruction", "output"], "alpaca"),
        (["messages"], "messages"),
        (["conversations", "id"], "messages"),
        (["instruction", "response", "messages", "meta"], "dolly"),  # a Record.to_dict() row
    ],
)
def test_detection(keys: list[str], expected: str) -> None:
    assert detect_format(keys) == expected


def test_detection_failure_lists_keys_and_formats() -> None:
    with pytest.raises(DataError) as e:
        detect_format(["question", "answer"])
    msg = str(e.value)
    assert "question" in msg and "answer" in msg
    for name in ("dolly", "alpaca", "messages", "sharegpt"):
        assert name in msg


def test_override_beats_detection() -> None:
    # Has dolly keys too, but forced to alpaca: response comes from "output".
    raw = {"instruction": "q", "response": "dolly-answer", "output": "alpaca-answer"}
    assert to_record(raw, "auto", WHERE).response == "dolly-answer"
    rec = to_record(raw, "alpaca", WHERE)
    assert rec.response == "alpaca-answer" and rec.meta == {"response": "dolly-answer"}


def test_unknown_format_name() -> None:
    with pytest.raises(DataError, match=r"unknown data format 'dolli'.*alpaca.*dolly"):
        to_record({"instruction": "q", "response": "a"}, "dolli", WHERE)


def test_field_map_then_detection() -> None:
    raw = {"question": "Why?", "answer": "Because.", "topic": "open_qa", "difficulty": 2}
    mapped = apply_field_map(raw, {"instruction": "question", "response": "answer", "category": "topic"})
    assert detect_format(mapped.keys()) == "dolly"
    rec = to_record(mapped, "auto", WHERE)
    assert (rec.instruction, rec.response, rec.category) == ("Why?", "Because.", "open_qa")
    assert rec.meta == {"difficulty": 2}


def test_field_map_keeps_displaced_column_in_meta() -> None:
    raw = {"instruction": "q", "response": "old", "better": "new"}
    rec = to_record(apply_field_map(raw, {"response": "better"}), "auto", WHERE)
    assert rec.response == "new" and rec.meta == {"response": "old"}


def test_parse_field_map() -> None:
    assert parse_field_map(["instruction=question", " response = answer ,category=topic"]) == {
        "instruction": "question",
        "response": "answer",
        "category": "topic",
    }
    assert parse_field_map([]) == {}


@pytest.mark.parametrize(
    ("items", "needle"),
    [
        (["instruction"], "FIELD=COLUMN"),
        (["=question"], "FIELD=COLUMN"),
        (["instruction="], "FIELD=COLUMN"),
        (["instrution=question"], "unknown field 'instrution'"),
        (["instruction=a", "instruction=b"], "mapped twice"),
    ],
)
def test_parse_field_map_errors(items: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_field_map(items)


@pytest.mark.parametrize(
    ("raw", "field", "got"),
    [
        ({"instruction": "q"}, "'response'", "missing"),
        ({"instruction": "", "response": "a"}, "'instruction'", "empty"),
        ({"instruction": "q", "response": None}, "'response'", "null"),
        ({"instruction": "q", "response": 42}, "'response'", "int 42"),
        ({"instruction": "q", "response": ["a", "b"]}, "'response'", "list"),
        ({"instruction": "q", "response": "a", "category": 3}, "'category'", "int 3"),
        ({"instruction": "q", "response": "a", "context": {"k": 1}}, "'context'", "dict"),
    ],
)
def test_dolly_field_errors_name_where_field_and_value(raw: dict, field: str, got: str) -> None:
    with pytest.raises(DataError) as e:
        to_record(raw, "dolly", WHERE)
    msg = str(e.value)
    assert msg.startswith(WHERE) and field in msg and got in msg


def test_alpaca_missing_output_names_field() -> None:
    with pytest.raises(DataError, match=r"line 7: field 'output' is missing"):
        to_record({"instruction": "q", "input": ""}, "alpaca", WHERE)


@pytest.mark.parametrize(
    ("turns", "needle"),
    [
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "assistant", "content": "hello"}], "no user turn"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "no assistant turn after"),
        ([{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}], "messages[1].role is 'robot'"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}], "messages[1].content must be"),
        ([{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}], "messages[0] (user turn) is empty"),
        ([], "non-empty list"),
        ("not json", "not a JSON list"),
    ],
)
def test_messages_errors(turns: object, needle: str) -> None:
    with pytest.raises(DataError) as e:
        to_record({"messages": turns}, "messages", WHERE)
    assert str(e.value).startswith(WHERE) and needle in str(e.value)


def test_messages_json_string_cell() -> None:
    cell = '[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]'
    rec = to_record({"conversations": cell}, "auto", WHERE)
    assert rec.messages == (Message("user", "q"), Message("assistant", "a"))
