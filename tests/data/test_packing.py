"""Packing (fedit.data.packing): hand-checked rows, and on the micro model a packed micro-batch gives the summed
label NLL and the LoRA gradients of its examples run one by one (sdpa and eager attention)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from fedit.data.packing import collate_packed, first_fit_decreasing, pad_fraction
from fedit.data.tokenize import IGNORE_INDEX, TokenizedData, collate
from fedit.model.loss import label_token_nll

X = IGNORE_INDEX


def test_first_fit_decreasing_by_hand():
    # longest first: 7 -> bin0 (room 3), 5 -> bin1 (room 5), 4 -> bin1 (room 1), 3 -> bin0 (room 0), 2 -> bin2
    assert first_fit_decreasing([3, 7, 2, 5, 4], 10) == [[1, 0], [3, 4], [2]]
    assert first_fit_decreasing([12, 1], 10) == [[0], [1]]  # an item over capacity gets its own bin
    assert first_fit_decreasing([], 10) == []


def test_collate_packed_by_hand():
    data = TokenizedData([[11, 12, 13], [21, 22], [31, 32, 33, 34, 35]],
                         [[X, 12, 13], [21, 22], [X, X, 33, 34, 35]], [None] * 3)
    b = collate_packed(data, [0, 1, 2], pad_id=0, capacity=6)
    # FFD over lengths [3, 2, 5]: 5 -> row0, 3 -> row1, 2 -> row0 is full (room 1) -> row1 (room 1)
    assert b["input_ids"].tolist() == [[31, 32, 33, 34, 35], [11, 12, 13, 21, 22]]
    # the first token of every example carries no label (example 1's label 21 is dropped)
    assert b["labels"].tolist() == [[X, X, 33, 34, 35], [X, 12, 13, X, 22]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    c = collate_packed(data, [0, 1], pad_id=0, capacity=8)
    assert c["input_ids"].tolist() == [[11, 12, 13, 21, 22]]
    c = collate_packed(data, [2, 1], pad_id=9, capacity=4)  # example 2 (5 tokens) exceeds 4: widens the rows
    assert c["input_ids"].tolist() == [[31, 32, 33, 34, 35], [21, 22, 9, 9, 9]]
    assert c["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]]  # the pad tail restarts too
    assert c["attention_mask"][1].tolist() == [1, 1, 0, 0, 0]
    assert pad_fraction([c]) == pytest.approx(3 / 10)
    assert pad_fraction([collate(data, [2, 1], 9)]) == pytest.approx(3 / 10)


def _examples(vocab: int) -> TokenizedData:
    g = torch.Generator().manual_seed(1)
    ids, labels = [], []
    for n, prompt in ((9, 4), (5, 2), (13, 6), (4, 1), (7, 7)):  # the last one has no label (all prompt)
        x = torch.randint(4, vocab, (n,), generator=g).tolist()
        ids.append(x)
        labels.append([X] * prompt + x[prompt:])
    return TokenizedData(ids, labels, [None] * len(ids))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_nll_and_grads_equal_one_by_one(micro_model_dir, impl):
    base = AutoModelForCausalLM.from_pretrained(micro_model_dir, attn_implementation=impl)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False,
                                            lora_dropout=0.0))
    data = _examples(base.config.vocab_size)
    trainable = [p for p in model.parameters() if p.requires_grad]

    ref = torch.zeros(())
    for i in range(len(data)):  # each example alone: no padding, no neighbours
        one = collate(data, [i], pad_id=0)
        nll, _ = label_token_nll(model, one["input_ids"], one["attention_mask"], one["labels"])
        ref = ref + nll.sum().detach()
        nll.sum().backward()
    ref_grads = [p.grad.clone() for p in trainable]
    model.zero_grad(set_to_none=True)

    packed = collate_packed(data, range(len(data)), pad_id=0, capacity=20)
    assert packed["input_ids"].shape[0] < len(data)  # several examples do share a row
    nll, _ = label_token_nll(model, packed["input_ids"], packed["attention_mask"], packed["labels"],
                             packed["position_ids"])
    n_labels = sum(sum(t != X for t in lab[1:]) for lab in data.labels)
    assert nll.shape == (n_labels,)
    nll.sum().backward()
    torch.testing.assert_close(nll.sum().detach(), ref, rtol=1e-5, atol=1e-5)
    for p, g in zip(trainable, ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)

    # and the check can fail: the same rows without position ids let examples see each other
    model.zero_grad(set_to_none=True)
    leaky, _ = label_token_nll(model, packed["input_ids"], packed["attention_mask"], packed["labels"])
    assert abs(float(leaky.sum().detach()) - float(ref)) > 1e-3


def test_pack_rows_balances_and_never_exceeds_padding():
    from fedit.data.packing import pack_rows

    # 16 x 40 tokens, rows of up to 256: 3 rows would need 214-wide rows (5 per row -> 4 rows of 200 = 800 tokens);
    # 4 rows of 4 x 40 = 160 hold exactly the 640 real tokens
    bins = pack_rows([40] * 16, 256)
    assert sorted(len(b) for b in bins) == [4, 4, 4, 4]
    lengths = [3, 50, 7, 49, 8, 2]
    bins = pack_rows(lengths, 64)
    cost = len(bins) * max(sum(lengths[i] for i in b) for b in bins)
    assert cost <= len(lengths) * max(lengths) and sorted(i for b in bins for i in b) == list(range(6))
    assert cost == 2 * 60  # [50, 8, 2] and [49, 7, 3]: two rows of 60
