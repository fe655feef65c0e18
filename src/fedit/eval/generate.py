"""Batched generation from prompts built by the shared template registry (left padding, greedy by default).

Stops on, and cuts at, any EOS id (`fedit.generation.eos_ids`), exactly as serving does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedit.data.records import Record
from fedit.data.templates import Template
from fedit.data.tokenize import encode_prompt
from fedit.generation import GenerationSettings, cut_at_eos, eos_ids, eos_kwargs

__all__ = ["GenerationSettings", "generate_answers", "generate_ids"]


def _left_padded(prompts: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for prompts of different lengths, padded on the left so generation continues them."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def generate_ids(model: Any, tokenizer: Any, prompts: Sequence[list[int]], settings: GenerationSettings,
                 batch_size: int = 16) -> list[list[int]]:
    """New token ids for each prompt (prompt ids given), batched with left padding; cut at the first EOS id."""
    device = next(model.parameters()).device
    stop = eos_kwargs(tokenizer, model)
    eos = eos_ids(tokenizer, model)
    out: list[list[int]] = [[] for _ in prompts]
    # Sort by length so each batch pads little; results go back to input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _left_padded([prompts[i] for i in idx], tokenizer.pad_token_id)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **stop, **settings.kwargs())
        for row, i in enumerate(idx):
            out[i] = cut_at_eos(gen[row, ids.shape[1]:].tolist(), eos)
    return out


def generate_answers(model: Any, tokenizer: Any, template: Template, records: Sequence[Record],
                     settings: GenerationSettings, batch_size: int = 16) -> list[str]:
    """The model's answer to each record's prompt (the training template), special tokens removed, stripped."""
    prompts = [encode_prompt(template.prompt(r), template, tokenizer) for r in records]
    new = generate_ids(model, tokenizer, prompts, settings, batch_size)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]
