"""Batched generation from prompts built by the shared template registry (left padding, greedy by default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedit.data.records import Record
from fedit.data.templates import Template
from fedit.data.tokenize import encode_prompt


@dataclass
class GenerationSettings:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw


@torch.no_grad()
def generate_ids(model: Any, tokenizer: Any, prompts: Sequence[list[int]], settings: GenerationSettings,
                 batch_size: int = 16) -> list[list[int]]:
    """New token ids for each prompt (prompt ids given), batched with left padding; cut at EOS."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    out: list[list[int]] = [[] for _ in prompts]
    # Sort by length so each batch pads little; results go back to input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i]
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=pad,
                             eos_token_id=eos, **settings.kwargs())
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            if eos in new:
                new = new[: new.index(eos)]
            out[i] = new
    return out


def generate_answers(model: Any, tokenizer: Any, template: Template, records: Sequence[Record],
                     settings: GenerationSettings, batch_size: int = 16) -> list[str]:
    prompts = [encode_prompt(template.prompt(r), template, tokenizer) for r in records]
    new = generate_ids(model, tokenizer, prompts, settings, batch_size)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]
