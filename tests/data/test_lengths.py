"""Length accounting: what data.cutoff_len truncates and drops, counted on records whose token lengths are known."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedit.data.lengths import LengthCounts, LengthReport, suggest_cutoff
from fedit.data.records import Record
from fedit.data.templates import get_template
from fedit.data.tokenize import encode_prompt, tokenize_records
from fedit.model.load import load_tokenizer

INSTRUCTION = "Name a fruit."


@pytest.fixture(scope="module")
def tok(micro_model_dir: Path):
    return load_tokenizer(str(micro_model_dir))


@pytest.fixture(scope="module")
def template(tok):
    return get_template("alpaca-short", tok)


def z_tokens(tok, k: int) -> str:
    """A response of exactly k tokens: 'z' repeated (the micro tokenizer never merged 'zz')."""
    text = "z" * k
    assert len(tok.encode(text, add_special_tokens=False)) == k  # precondition of the hand counts below
    return text


def test_counts_whole_truncated_and_dropped_by_hand(tok, template) -> None:
    prompt = len(encode_prompt(template.prompt(Record(instruction=INSTRUCTION, response="")), template, tok))
    cutoff = prompt + 10
    records = [
        Record(instruction=INSTRUCTION, response=z_tokens(tok, 3)),  # prompt + 3 + EOS: whole
        Record(instruction=INSTRUCTION, response=z_tokens(tok, 9)),  # prompt + 9 + EOS = cutoff exactly: whole
        Record(instruction=INSTRUCTION, response=z_tokens(tok, 30)),  # prompt + 31 > cutoff: 10 label tokens kept
        Record(instruction="z" * (cutoff + 5), response="apple"),  # the prompt alone fills the cutoff: dropped
    ]
    data = tokenize_records(records, template, tok, cutoff_len=cutoff)
    c = data.counts
    assert c is not None
    assert (c.examples, c.kept, c.truncated, c.dropped) == (4, 3, 1, 1)
    assert c.tokens == (prompt + 4) + (prompt + 10) + cutoff
    assert c.label_tokens == 4 + 10 + 10
    long_prompt = len(encode_prompt(template.prompt(records[3]), template, tok))
    assert long_prompt > cutoff  # the dropped record's full length counts, before the cutoff
    full_dropped = long_prompt + len(tok.encode("apple", add_special_tokens=False)) + 1
    assert (c.longest, c.longest_full) == (cutoff, max(prompt + 31, full_dropped))
    # the counts describe exactly what training gets
    assert c.kept == len(data) and c.tokens == int(data.lengths.sum()) and c.label_tokens == data.num_label_tokens


def test_train_on_inputs_keeps_a_prompt_that_fills_the_cutoff(tok, template) -> None:
    rec = Record(instruction="z" * 40, response="apple")
    dropped = tokenize_records([rec], template, tok, cutoff_len=16).counts
    kept = tokenize_records([rec], template, tok, cutoff_len=16, train_on_inputs=True).counts
    assert dropped is not None and kept is not None
    assert (dropped.dropped, dropped.truncated) == (1, 0)
    assert (kept.dropped, kept.truncated, kept.tokens, kept.label_tokens) == (0, 1, 16, 16)


def test_counts_on_real_data_match_the_tokenized_examples(tok, records) -> None:
    t = get_template("chat", tok)
    for cutoff in (8, 24, 256):
        data = tokenize_records(records, t, tok, cutoff_len=cutoff)
        c = data.counts
        assert c is not None and c.examples == len(records) and c.kept + c.dropped == c.examples
        assert c.kept == len(data) and c.tokens == int(data.lengths.sum()) and c.label_tokens == data.num_label_tokens
        assert c.longest == (int(data.lengths.max()) if len(data) else 0) and c.longest <= cutoff
    assert tokenize_records(records, t, tok, cutoff_len=8).counts.affected_share > 0.5  # type: ignore[union-attr]
    assert tokenize_records(records, t, tok, cutoff_len=256).counts.affected == 0  # type: ignore[union-attr]


def counts(examples: int, truncated: int = 0, dropped: int = 0) -> LengthCounts:
    return LengthCounts(examples=examples, kept=examples - dropped, truncated=truncated, dropped=dropped,
                        longest_full=300)


def test_warning_fires_above_five_percent_and_not_at_or_below() -> None:
    assert LengthReport(256, {"0": counts(20, truncated=1)}).warning() is None  # 5.0%: not more than 5%
    assert LengthReport(256, {"0": counts(100, truncated=3, dropped=2)}).warning() is None  # 5.0%
    w = LengthReport(256, {"0": counts(20, truncated=1, dropped=1)}).warning()  # 10%
    assert w is not None and w.startswith("WARNING:") and "--cutoff-len" in w and "client 0" in w
    assert "truncates 1 and drops 1 of 20 examples (10.0%)" in w and "--cutoff-len 320" in w


def test_warning_names_the_clients_over_the_share_even_when_the_total_is_under() -> None:
    groups = {str(c): counts(100) for c in range(9)} | {"9": counts(10, truncated=2)}
    report = LengthReport(256, groups)
    assert report.total.affected_share < 0.05 and report.flagged() == ["9"]
    w = report.warning()
    assert w is not None and "over 5% in client 9" in w and "client 0" not in w
    cats = LengthReport(128, {"open_qa": counts(10), "summarization": counts(10, dropped=4)}, kind="category")
    assert "over 5% in category summarization" in (cats.warning() or "")


def test_report_round_trips_through_its_dict() -> None:
    report = LengthReport(64, {"0": counts(7, 2, 1), "1": counts(3)})
    d = report.to_dict()
    assert d["total"]["examples"] == 10 and d["flagged"] == ["0"]
    back = LengthReport.from_dict(d)
    assert back.groups == report.groups and back.cutoff_len == 64 and back.warning() == report.warning()


def test_suggested_cutoff_keeps_the_longest_example() -> None:
    assert [suggest_cutoff(n) for n in (1, 64, 65, 300)] == [64, 64, 128, 320]
