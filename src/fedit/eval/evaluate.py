"""Per-category evaluation of an adapter on held-out records: response loss/perplexity and generation scores."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedit.data.records import Record
from fedit.data.templates import Template
from fedit.data.tokenize import TokenizedData, collate, encode_record
from fedit.eval.generate import generate_answers
from fedit.eval.metrics import exact_match, rouge_l
from fedit.generation import GenerationSettings
from fedit.model.loss import label_token_nll
from fedit.model.precision import autocast

UNCATEGORIZED = "(none)"


def score_record(record: Record, answer: str) -> float:
    """The built-in suite's checker for its records; ROUGE-L F1 against the reference for any other data."""
    if record.meta.get("suite") == "builtin":
        from fedit.data.builtin import score_answer

        return score_answer(record, answer)
    return rouge_l(answer, record.response)


@dataclass
class EvalResult:
    """Per-category metrics plus their unweighted means over categories."""

    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"per_category": self.per_category, "mean": self.mean}


def encode_held_out(records: Sequence[Record], template: Template, tokenizer: Any, cutoff_len: int) -> TokenizedData:
    """The held-out records tokenized for `response_loss` (loss on responses, EOS added, nothing dropped); a run
    tokenizes them once and passes the result to every evaluation."""
    encoded = [encode_record(r, template, tokenizer, cutoff_len, False, True) for r in records]
    return TokenizedData([e[0] for e in encoded], [e[1] for e in encoded], [r.category for r in records])


@torch.no_grad()
def response_loss(model: Any, tokenizer: Any, template: Template, records: Sequence[Record], cutoff_len: int,
                  batch_size: int = 16, data: TokenizedData | None = None) -> list[tuple[float, int]]:
    """(summed NLL, response tokens) per record, teacher-forced, response tokens only; `data` is
    `encode_held_out(records, ...)` when the caller keeps it (otherwise the records are tokenized here)."""
    if data is None:
        data = encode_held_out(records, template, tokenizer, cutoff_len)
    if len(data) != len(records):
        raise ValueError(f"response_loss: {len(data)} tokenized examples for {len(records)} records")
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(records)
    order = sorted(range(len(records)), key=lambda i: len(data.input_ids[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        b = {k: v.to(device) for k, v in collate(data, idx, tokenizer.pad_token_id).items()}
        with autocast(model):  # the same precision as training (bf16 autocast over a bf16 base on CPU)
            nll, rows = label_token_nll(model, b["input_ids"], b["attention_mask"], b["labels"])
        sums = torch.zeros(len(idx), dtype=torch.float64, device=nll.device).index_add_(0, rows, nll.double())
        counts = torch.bincount(rows, minlength=len(idx))
        for row, i in enumerate(idx):
            out[i] = (float(sums[row]), int(counts[row]))
    return out


def evaluate(model: Any, tokenizer: Any, template: Template, records: Sequence[Record], *, cutoff_len: int = 256,
             generate: bool = True, settings: GenerationSettings | None = None, batch_size: int = 16,
             encoded: TokenizedData | None = None) -> EvalResult:
    """Loss, perplexity and (if `generate`) score/exact match per category. The model is used as it is. `encoded`:
    the records already tokenized by `encode_held_out` (a run's evaluator keeps it across rounds)."""
    was_training = model.training
    model.eval()
    losses = response_loss(model, tokenizer, template, records, cutoff_len, batch_size, data=encoded)
    with autocast(model):
        answers = generate_answers(model, tokenizer, template, records, settings or GenerationSettings(),
                                   batch_size) if generate else []
    if was_training:
        model.train()
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for i, r in enumerate(records):
        a = acc[r.category or UNCATEGORIZED]
        a["n"] += 1
        a["nll"] += losses[i][0]
        a["tokens"] += losses[i][1]
        if generate:
            a["score"] += score_record(r, answers[i])
            a["exact_match"] += exact_match(answers[i], r.response)
    per_cat: dict[str, dict[str, float]] = {}
    for cat in sorted(acc):
        a = acc[cat]
        loss = a["nll"] / max(1.0, a["tokens"])
        row = {"n": int(a["n"]), "loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if generate:
            row["score"] = a["score"] / a["n"]
            row["exact_match"] = a["exact_match"] / a["n"]
        per_cat[cat] = row
    keys = ["loss", "perplexity"] + (["score", "exact_match"] if generate else [])
    mean = {k: sum(v[k] for v in per_cat.values()) / max(1, len(per_cat)) for k in keys}
    return EvalResult(per_cat, mean, answers)
