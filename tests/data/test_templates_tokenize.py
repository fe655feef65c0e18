"""One template registry for training and generation; label masking, cutoff, EOS; length-grouped batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedit.data.records import Message, Record
from fedit.data.templates import get_template
from fedit.data.tokenize import IGNORE_INDEX, batch_order, collate, encode_prompt, encode_record, tokenize_records
from fedit.errors import ConfigError
from fedit.model.load import load_tokenizer

REC = Record(instruction="Name a fruit.", response="apple", context="Fruits are sweet.", category="open_qa")


@pytest.fixture(scope="module")
def tok(micro_model_dir: Path):
    return load_tokenizer(str(micro_model_dir))


def test_alpaca_prompt_with_and_without_context(tok) -> None:
    t = get_template("alpaca", tok)
    with_ctx = t.prompt(REC)
    assert with_ctx.startswith("Below is an instruction") and "### Input:\nFruits are sweet." in with_ctx
    assert with_ctx.endswith("### Response:\n")
    no_ctx = t.prompt(Record(instruction="Hi", response="x"))
    assert "### Input" not in no_ctx and "Instruction:\nHi" in no_ctx
    short = get_template("alpaca-short", tok).prompt(REC)
    assert short.startswith("### Instruction:\nName a fruit.")


def test_training_text_is_prompt_plus_response(tok) -> None:
    for name in ("alpaca", "alpaca-short", "chat"):
        t = get_template(name, tok)
        segs = t.segments(REC)
        text = "".join(s for s, _ in segs)
        assert text.startswith(t.prompt(REC)), name
        trainable = "".join(s for s, tr in segs if tr)
        assert trainable.startswith("apple"), name


def test_auto_picks_chat_when_tokenizer_has_one(tok) -> None:
    assert get_template("auto", tok).name == "chat"
    tok2 = load_tokenizer(tok.name_or_path)
    tok2.chat_template = None
    assert get_template("auto", tok2).name == "alpaca"
    with pytest.raises(ConfigError, match="no chat template"):
        get_template("chat", tok2)
    with pytest.raises(ConfigError, match="unknown template 'vicuna'"):
        get_template("vicuna", tok)


def test_labels_mask_prompt_and_end_with_eos(tok) -> None:
    t = get_template("alpaca-short", tok)
    ids, labels = encode_record(REC, t, tok, cutoff_len=512, train_on_inputs=False, add_eos=True)
    prompt_ids = encode_prompt(t.prompt(REC), t, tok)
    assert ids[: len(prompt_ids)] == prompt_ids  # generation sees exactly the training prefix
    assert all(x == IGNORE_INDEX for x in labels[: len(prompt_ids)])
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    assert tok.decode([x for x in labels if x != IGNORE_INDEX], skip_special_tokens=True) == "apple"
    ids2, labels2 = encode_record(REC, t, tok, cutoff_len=512, train_on_inputs=True, add_eos=False)
    assert ids2[-1] != tok.eos_token_id
    assert sum(x != IGNORE_INDEX for x in labels2) > len(ids2) - 2  # everything but BOS is trained on


def test_cutoff_and_drop_untrainable(tok) -> None:
    t = get_template("alpaca", tok)
    ids, labels = encode_record(REC, t, tok, cutoff_len=10, train_on_inputs=False, add_eos=True)
    assert len(ids) == len(labels) == 10
    data = tokenize_records([REC, REC], t, tok, cutoff_len=10)
    assert len(data) == 0  # response cut off entirely: nothing to learn
    data = tokenize_records([REC], t, tok, cutoff_len=256)
    assert len(data) == 1 and data.num_label_tokens > 0


def test_multi_turn_trains_on_every_assistant_turn(tok) -> None:
    conv = Record(instruction="hi", response="bye", messages=(
        Message("user", "hi"), Message("assistant", "hello"), Message("user", "how?"), Message("assistant", "bye")))
    for name in ("alpaca", "chat"):
        t = get_template(name, tok)
        trainable = [s for s, tr in t.segments(conv) if tr]
        assert [s.strip().replace("</s>", "") for s in trainable] == ["hello", "bye"], name


def test_length_grouping_reduces_padding_and_is_seeded() -> None:
    lengths = np.random.default_rng(0).integers(5, 200, size=512)
    def padding(batches):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)
    grouped = batch_order(lengths, 8, np.random.default_rng(1), group_by_length=True)
    plain = batch_order(lengths, 8, np.random.default_rng(1), group_by_length=False)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(512))
    assert padding(grouped) < padding(plain) / 5
    again = batch_order(lengths, 8, np.random.default_rng(1), group_by_length=True)
    assert all(np.array_equal(a, b) for a, b in zip(grouped, again, strict=True))


def test_collate_pads_right_with_masked_labels(tok) -> None:
    t = get_template("alpaca-short", tok)
    data = tokenize_records([REC, Record(instruction="x", response="y")], t, tok)
    b = collate(data, [0, 1], tok.pad_token_id)
    n0, n1 = len(data.input_ids[0]), len(data.input_ids[1])
    assert b["input_ids"].shape == (2, max(n0, n1))
    short = 0 if n0 < n1 else 1
    assert int(b["attention_mask"][short].sum()) == min(n0, n1)
    assert (b["labels"][short][min(n0, n1):] == IGNORE_INDEX).all()


def test_tokenized_data_is_int32_rows_with_offsets() -> None:
    """Tokenized data is kept as flat int32 arrays plus row offsets (8 bytes a token for ids and labels, 8 bytes an
    example for each offset array), rows read back exactly as given."""
    from fedit.data.tokenize import Ragged, TokenizedData

    rows = [[5, 6, 7], [8], [9, 10, 2**31 - 1, 12]]
    labels = [[IGNORE_INDEX, 6, 7], [8], [IGNORE_INDEX, IGNORE_INDEX, 11, 12]]
    data = TokenizedData(rows, labels, [None, "a", "b"])
    assert isinstance(data.input_ids, Ragged) and data.input_ids.values.dtype == np.int32
    assert [r.tolist() for r in data.input_ids] == rows and [r.tolist() for r in data.labels] == labels
    assert data.lengths.tolist() == [3, 1, 4] and data.num_label_tokens == 5
    assert data.input_ids[-1].tolist() == rows[-1]
    tokens, examples = 8, 3
    assert data.nbytes == 2 * (4 * tokens + 8 * (examples + 1))
    b = collate(data, [2, 0], pad_id=0)
    assert b["input_ids"].dtype == torch.long and b["input_ids"].tolist() == [[9, 10, 2**31 - 1, 12], [5, 6, 7, 0]]
    assert b["labels"][1].tolist() == [IGNORE_INDEX, 6, 7, IGNORE_INDEX]
    with pytest.raises(ValueError, match="as many labels"):
        TokenizedData([[1, 2]], [[1]], [None])
    with pytest.raises(IndexError):
        data.input_ids[3]
