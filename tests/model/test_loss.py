"""Label-position loss (fedit.model.loss) equals the model's own next-token loss, with the same gradients."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from fedit.data.tokenize import IGNORE_INDEX
from fedit.model.loss import label_token_nll


def _batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding in one row
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX  # prompt
    labels[mask == 0] = IGNORE_INDEX
    labels[2, :] = IGNORE_INDEX  # a row with nothing to learn
    labels[2, 7] = ids[2, 7]
    return ids, mask, labels


def _reference(model, ids, mask, labels) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                                             reduction="sum")


def _lora(model):
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so the adapter changes the output and receives real gradients.
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def _check_same(model, vocab: int) -> None:
    ids, mask, labels = _batch(vocab)
    ref = _reference(model, ids, mask, labels)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    nll, rows = label_token_nll(model, ids, mask, labels)
    assert nll.shape == rows.shape == (int((labels[:, 1:] != IGNORE_INDEX).sum()),)
    assert rows.tolist() == sorted(rows.tolist()) and set(rows.tolist()) == {0, 1, 2}
    nll.sum().backward()
    torch.testing.assert_close(nll.sum(), ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_llama_fast_path_matches_full_forward(micro_model_dir):
    model = _lora(AutoModelForCausalLM.from_pretrained(micro_model_dir))
    head_rows: list[int] = []
    head = model.get_base_model().get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: head_rows.append(i[0].reshape(-1, i[0].shape[-1]).shape[0]))
    ids = torch.randint(4, model.config.vocab_size, (8, 48), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -12:] = ids[:, -12:]  # a 36-token prompt and a 12-token response per row
    nll, _ = label_token_nll(model, ids, torch.ones_like(ids), labels)
    handle.remove()
    # The LM head saw the 96 label positions (padded to 128 rows), not all 8 x 48 = 384.
    assert nll.shape == (96,) and head_rows == [128]
    _check_same(model, model.config.vocab_size)


@pytest.mark.parametrize("train", [True, False])
def test_fallback_architecture_matches_full_forward(train):
    torch.manual_seed(0)
    model = _lora(GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64)))
    model.train(train)
    if train:  # dropout on: compare under the same seed
        torch.manual_seed(1)
        ids, mask, labels = _batch(300)
        a = label_token_nll(model, ids, mask, labels)[0].sum()
        torch.manual_seed(1)
        b = _reference(model, ids, mask, labels)
        torch.testing.assert_close(a, b)
    else:
        _check_same(model, 300)


def test_same_bits_whatever_the_thread_count(micro_model_dir):
    """Few label tokens make a GEMM with few rows; its result must not depend on the thread count (the simulator and
    Flower nodes run different thread counts and must produce the same adapters)."""
    model = _lora(AutoModelForCausalLM.from_pretrained(micro_model_dir))
    ids, mask, _ = _batch(model.config.vocab_size)
    for n_labels in (5, 7, 10):
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, 12 - n_labels:] = ids[0, 12 - n_labels:]
        results = []
        threads = torch.get_num_threads()
        try:
            for t in (1, 2, 4):
                torch.set_num_threads(t)
                model.zero_grad(set_to_none=True)
                nll, _ = label_token_nll(model, ids, mask, labels)
                nll.sum().backward()
                results.append((nll.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        finally:
            torch.set_num_threads(threads)
        for nll, grads in results[1:]:
            assert torch.equal(nll, results[0][0]), n_labels
            assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1], strict=True)), n_labels
