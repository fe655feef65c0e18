"""Batched clients: the LoRA term by row against a hand-written formula, and whole rounds equal to sequential
`train_task` (unequal data sizes and step counts, dropout on, clipping active)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.client.batched import BatchedJob, _Batch, batched_lora, concat_micro, train_batched
from fedit.client.train import LocalTrainer, train_task
from fedit.config import ClientConfig, LoraConfig, ModelConfig
from fedit.data.records import Record
from fedit.data.templates import get_template
from fedit.data.tokenize import IGNORE_INDEX, tokenize_records
from fedit.errors import ClientError
from fedit.model.load import load_base
from fedit.model.lora import attach_lora
from fedit.strategies.fedprox import ProximalPlan
from fedit.types import ClientTask

WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date"]


# summation order only: under 2e-6 on the AVX2 CPU these tests were written on, 2.5e-6 measured on an AVX512 one
# (other float32 kernels), on tensors that AdamW moves by ~1e-2 (relative 1e-4)
PARAM_ATOL = 5e-6


@pytest.fixture(scope="module")
def setup(micro_model_dir: Path):
    base, tok = load_base(ModelConfig(name=str(micro_model_dir), device="cpu", dtype="float32"))
    model = attach_lora(base, LoraConfig(r=4, alpha=8, dropout=0.1, targets=["all-linear"]), seed=0)
    trainer = LocalTrainer.for_model(model, tok)
    template = get_template("alpaca-short", tok)

    def data(n: int, offset: int):
        recs = [Record(instruction=f"Repeat {WORDS[(i + offset) % 7]} " + "x " * (i % 5),
                       response=f"{WORDS[i % 7]} " * (1 + i % 4)) for i in range(n)]
        return tokenize_records(recs, template, tok)

    return trainer, [data(16, 0), data(11, 1), data(6, 2)]


def _client_weights(trainer: LocalTrainer, scale: float, seed: int) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.nn.Parameter(torch.randn(p.shape, generator=g) * scale) for k, p in trainer.slots.params.items()}


@pytest.mark.parametrize("rows", [(2, 2), (2, 1)])  # equal blocks take the stacked bmm, unequal the per-block path
def test_lora_term_uses_each_rows_client(setup, rows: tuple[int, int]) -> None:
    trainer, _ = setup
    model = trainer.model
    model.eval()  # no dropout: the formula below is the whole layer
    mod = model.base_model.model.model.layers[0].self_attn.q_proj
    key_a = next(k for k in trainer.slots.params if "layers.0.self_attn.q_proj.lora_A" in k)
    key_b = key_a.replace("lora_A", "lora_B")
    weights = [_client_weights(trainer, 0.3, s) for s in (1, 2)]
    n0, n1 = rows
    batch = _Batch(weights=weights, generators=[torch.Generator(), torch.Generator()],
                   segments=[(0, 0, n0, 5), (1, n0, n0 + n1, 5)], stacked=n0 == n1)
    x = torch.randn(n0 + n1, 5, mod.in_features, generator=torch.Generator().manual_seed(3))
    scale = 8 / 4  # alpha / r
    with torch.no_grad():
        base = x @ mod.base_layer.weight.T
        want = torch.cat([base[:n0] + scale * x[:n0] @ weights[0][key_a].T @ weights[0][key_b].T,
                          base[n0:] + scale * x[n0:] @ weights[1][key_a].T @ weights[1][key_b].T])
    with batched_lora(trainer, batch):
        got = mod(x)
        got[:n0].sum().backward()  # client 0's rows only
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert weights[0][key_a].grad is not None and weights[0][key_a].grad.abs().sum() > 0
    assert weights[1][key_a].grad is None or torch.count_nonzero(weights[1][key_a].grad) == 0
    assert "forward" not in vars(mod)  # the layer's own forward is back


def test_the_fused_forward_comes_back_after_a_batched_block(setup) -> None:
    from fedit.model.fused_lora import kernel_of, set_lora_kernel

    trainer, _ = setup
    set_lora_kernel(trainer.model, "fused")
    batch = _Batch(weights=[dict(trainer.slots.params)], generators=[torch.Generator()], segments=[(0, 0, 1, 5)],
                   stacked=True)
    try:
        with batched_lora(trainer, batch):
            assert kernel_of(trainer.model) == "peft"  # no layer has the fused forward inside the block
            mod = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
            assert vars(mod)["forward"].__func__.__name__ == "forward"  # the batched one, not fused_forward
        mod = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
        assert vars(mod)["forward"].__func__.__name__ == "fused_forward"
    finally:
        set_lora_kernel(trainer.model, "peft")
    assert kernel_of(trainer.model) == "peft"


def test_concat_pads_to_the_widest() -> None:
    a = {"input_ids": torch.tensor([[5, 6]]), "labels": torch.tensor([[-100, 6]]),
         "attention_mask": torch.tensor([[1, 1]])}
    b = {"input_ids": torch.tensor([[7, 8, 9]]), "labels": torch.tensor([[-100, 8, 9]]),
         "attention_mask": torch.tensor([[1, 1, 1]])}
    m = concat_micro([a, b], pad_id=0)
    assert m["input_ids"].tolist() == [[5, 6, 0], [7, 8, 9]]
    assert m["labels"].tolist() == [[-100, 6, IGNORE_INDEX], [-100, 8, 9]]
    assert m["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_batched_round_equals_sequential(setup) -> None:
    """3 clients of 16, 11 and 6 examples, 2 local epochs of batch 8 (micro-batch 4): 4, 3 and 2 steps, partial
    micro-batches at epoch ends; LoRA dropout 0.1 (the same masks on CPU) and clipping at 0.05 (active every step).
    Tolerance: PARAM_ATOL absolute on tensors that move by ~1e-2 (the rest is summation order)."""
    trainer, datas = setup
    cfg = ClientConfig(local_steps=None, local_epochs=2.0, batch_size=8, micro_batch_size=4, lr=1e-2,
                       max_grad_norm=0.05)
    init = trainer.slots.get()
    task = ClientTask(init)
    seq = [train_task(trainer, task, d, cfg, client_id=c, round_idx=3, seed=5)[0] for c, d in enumerate(datas)]
    live = trainer.slots.get()
    bat = train_batched(trainer, [BatchedJob(c, task, d) for c, d in enumerate(datas)], cfg, round_idx=3, seed=5)
    assert [u.metrics["steps"] for u in bat] == [4.0, 3.0, 2.0]
    for s, b in zip(seq, bat, strict=True):
        assert b.client_id == s.client_id and b.num_examples == s.num_examples
        assert b.metrics["tokens"] == s.metrics["tokens"] and b.metrics["label_tokens"] == s.metrics["label_tokens"]
        assert b.metrics["loss"] == pytest.approx(s.metrics["loss"], rel=1e-6)
        assert max(float((s.params[k] - init[k]).abs().max()) for k in init) > 5e-3  # it trained
        assert max(float((s.params[k] - b.params[k]).abs().max()) for k in init) < PARAM_ATOL
    assert all(torch.equal(trainer.slots.params[k].detach(), live[k]) for k in live)  # the live adapter untouched


def test_sorted_in_step_equals_sequential_without_dropout(setup) -> None:
    """Micro-batches of a step paired longest first: the same sums in another order (dropout off: the masks would
    be drawn in another order). Batch 8 of micro-batch 2 (4 per step), 3 steps; same tolerance."""
    trainer, datas = setup
    mods = [m for m in trainer.model.modules() if hasattr(m, "lora_dropout")]
    for m in mods:
        m.lora_dropout["default"].p = 0.0
    try:
        cfg = ClientConfig(local_steps=3, batch_size=8, micro_batch_size=2, lr=1e-2, max_grad_norm=0.05)
        task = ClientTask(trainer.slots.get())
        seq = [train_task(trainer, task, d, cfg, client_id=c, round_idx=1, seed=2)[0] for c, d in enumerate(datas)]
        bat = train_batched(trainer, [BatchedJob(c, task, d) for c, d in enumerate(datas)], cfg, round_idx=1, seed=2,
                            sort_in_step=True)
    finally:
        for m in mods:
            m.lora_dropout["default"].p = 0.1
    for s, b in zip(seq, bat, strict=True):
        assert b.metrics["loss"] == pytest.approx(s.metrics["loss"], rel=1e-6)
        assert max(float((s.params[k] - b.params[k]).abs().max()) for k in s.params) < PARAM_ATOL


def test_rejects_plans_with_hooks(setup) -> None:
    trainer, datas = setup
    with pytest.raises(ClientError, match="plain client plan"):
        train_batched(trainer, [BatchedJob(0, ClientTask(trainer.slots.get()), datas[0])], ClientConfig(),
                      round_idx=1, seed=0, plan=ProximalPlan(0.1))


def test_the_rows_dropout_keeps_p_over_fedit_masks(setup) -> None:
    from fedit.client.batched import lora_modules
    from fedit.model.dropout import set_lora_dropout

    trainer, _ = setup
    assert {info.dropout for _, info in lora_modules(trainer)} == {0.1}
    set_lora_dropout(trainer.model, "fast")  # MaskDropout is no nn.Dropout: its p was read as 0 (no dropout)
    try:
        assert {info.dropout for _, info in lora_modules(trainer)} == {0.1}
    finally:
        set_lora_dropout(trainer.model, "torch")
