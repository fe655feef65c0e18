"""The baseline every speed claim is measured against: a minimal hand-written PEFT + PyTorch training loop.

What a careful user would write in a notebook: shuffle, micro-batches padded to their longest item, the model's own
loss (labels passed in), gradient accumulation, clipping, AdamW. No length grouping, no packing.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from fedit.data.tokenize import TokenizedData, collate


def hand_loop(model: Any, data: TokenizedData, pad_id: int, *, batch_size: int, micro_batch_size: int, steps: int,
              lr: float, seed: int = 0, max_grad_norm: float = 1.0, device: Any = "cpu",
              autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Train the live LoRA parameters of `model` for `steps` optimizer steps; returns seconds and token counts.

    `tokens` counts real (non-padding) tokens, `padded_tokens` what the model actually processed.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    accum = batch_size // micro_batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = rng.permutation(len(data))
    pos, tokens, padded = 0, 0, 0
    model.train()
    for _ in range(steps):
        for _ in range(accum):
            if pos + micro_batch_size > len(order):
                order, pos = rng.permutation(len(data)), 0
            idx = order[pos:pos + micro_batch_size]
            pos += micro_batch_size
            b = {k: v.to(device, non_blocking=True) for k, v in collate(data, idx, pad_id).items()}
            with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                loss = model(**b).loss / accum
            loss.backward()
            tokens += int(b["attention_mask"].sum())
            padded += b["attention_mask"].numel()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - t0
    model.eval()
    return {"seconds": seconds, "tokens": float(tokens), "padded_tokens": float(padded),
            "tokens_per_s": tokens / seconds, "padding_fraction": 1 - tokens / max(1, padded)}
