"""Whitespace is data: a response or instruction of " " (next-character prediction) loads, tokenizes and trains.

"Empty" means missing, None or "" only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedit.cli import app
from fedit.data.formats import to_record
from fedit.data.records import Message, Record
from fedit.data.sources import load_records
from fedit.data.templates import get_template
from fedit.data.tokenize import IGNORE_INDEX, encode_record, tokenize_records
from fedit.errors import DataError
from fedit.model.load import load_tokenizer

WHERE = "d.jsonl line 3"
TEXT = "the quick brown fox jumps over the lazy dog"


def next_char_rows(text: str = TEXT) -> list[dict[str, str]]:
    """Predict the next character of a prefix: every word boundary has the answer " "."""
    return [{"instruction": f"Next character after: {text[:i]}", "response": text[i]} for i in range(1, len(text))]


@pytest.mark.parametrize(
    ("raw", "fmt", "instruction", "response"),
    [
        ({"instruction": "Next character after: a", "response": " "}, "dolly", "Next character after: a", " "),
        ({"instruction": " ", "response": "x"}, "dolly", " ", "x"),
        ({"instruction": "\t\n", "response": "\n"}, "dolly", "\t\n", "\n"),
        ({"instruction": "q", "output": " "}, "alpaca", "q", " "),
        ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": " "}]}, "messages", " ",
         " "),
    ],
)
def test_whitespace_fields_are_data(raw: dict, fmt: str, instruction: str, response: str) -> None:
    rec = to_record(raw, fmt, WHERE)
    assert (rec.instruction, rec.response) == (instruction, response)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"instruction": "q", "response": ""}, "field 'response' is empty"),
        ({"instruction": "", "response": " "}, "field 'instruction' is empty"),
        ({"instruction": "q", "response": None}, "field 'response' is null"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
         "messages[1] (assistant turn) is empty"),
    ],
)
def test_empty_still_means_missing_or_empty_string(raw: dict, needle: str) -> None:
    with pytest.raises(DataError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        to_record(raw, "auto", WHERE)


def test_next_character_jsonl_loads_every_row(tmp_path: Path) -> None:
    rows = next_char_rows()
    path = tmp_path / "nextchar.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    records = load_records(path)
    assert len(records) == len(rows)
    assert sum(r.response == " " for r in records) == TEXT.count(" ") == 8


def test_csv_quoted_space_is_data_but_a_line_of_spaces_is_blank(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text('instruction,response\nNext after "a",\" \"\n   \n" ",x\n', encoding="utf-8")
    records = load_records(path)
    assert [(r.instruction, r.response) for r in records] == [('Next after "a"', " "), (" ", "x")]
    assert [r.meta["line"] for r in records] == [2, 4]


@pytest.fixture(scope="module")
def tok(micro_model_dir: Path):
    return load_tokenizer(str(micro_model_dir))


@pytest.mark.parametrize("template", ["alpaca", "alpaca-short"])
def test_space_response_is_its_tokens_plus_eos(tok, template: str) -> None:
    t = get_template(template, tok)
    ids, labels = encode_record(Record(instruction="Next character after: a", response=" "), t, tok, 256, False, True)
    trained = [x for x in labels if x != IGNORE_INDEX]
    space = tok.encode(" ", add_special_tokens=False)
    assert space and trained == space + [tok.eos_token_id]
    assert ids[-len(trained):] == trained


def test_space_records_are_kept_by_tokenize_records(tok) -> None:
    records = [Record(instruction=" ", response=" "), Record(instruction="q", response=" "),
               Record(instruction="q", response="a", messages=(Message("user", " "), Message("assistant", " ")))]
    for name in ("alpaca", "chat"):
        data = tokenize_records(records, get_template(name, tok), tok)
        assert len(data) == len(records), name
        for labels in data.labels:
            trained = [x for x in labels if x != IGNORE_INDEX]
            assert len(trained) >= 2 and tok.eos_token_id in trained, name  # the space (or turn text) and EOS


def test_next_character_data_trains(micro_model_dir: Path, tmp_path: Path) -> None:
    """`fedit run` on next-character data (8 answers are " ") runs a round and takes a finite loss on them."""
    data = tmp_path / "nextchar.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in next_char_rows()), encoding="utf-8")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--model", str(micro_model_dir), "--data", str(data), "--clients", "2", "--partition", "iid",
        "--test-size", "0", "--rounds", "1", "--fraction", "1", "--local-steps", "2", "--batch-size", "4",
        "--micro-batch-size", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[-1]["round"] == 1 and sorted(rounds[-1]["replied"]) == [0, 1]
    assert math.isfinite(rounds[-1]["train_loss"]) and rounds[-1]["tokens"] > 0
