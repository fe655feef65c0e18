"""Packing: the examples of a micro-batch concatenated into rows of up to `data.cutoff_len` tokens (first-fit
decreasing, rows balanced so the fewest tokens go through the model), without cross-contamination between examples.

A packed micro-batch has the keys of `fedit.data.tokenize.collate` (input_ids, labels, attention_mask: 1 on real
tokens, 0 on the pad tail of a row) plus `position_ids`, which restart at 0 at every example's first token (and at
the pad tail, which so forms a segment of its own). `fedit.model.loss.label_token_nll` turns position ids into
attention that never crosses an example (varlen flash attention, or a block-diagonal causal mask), and the first
token of every example carries no label, so no position is asked to predict the next example's first token: the
summed label NLL (and its gradient) of a packed micro-batch is that of its examples taken one by one.

Batch sizes count examples, packed or not: `client.micro_batch_size` examples are packed into at most that many
rows, so an optimizer step sees the same examples, `local_epochs` means the same and the loss normalisation (per
label token of the optimizer batch) is unchanged; packing only changes the shapes (fewer pad tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedit.data.tokenize import IGNORE_INDEX


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Positions into `lengths` grouped into bins whose summed length is at most `capacity` (an item longer than
    `capacity` gets a bin of its own). Longest first, each into the first bin with room; ties keep their order, so
    the result is a pure function of its input."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins for the rows of one packed micro-batch: the fewest tokens through the model (rows x the fullest row's
    length) over first-fit decreasing at the capacities ceil(total / R) for R = the fewest rows `capacity` allows
    up to one row per example (never under the longest example, never over `capacity` unless an example is longer).
    Balanced rows beat rows filled to `capacity` and a ragged last one; at R = one row per example the capacity is the
    longest example, so a packed micro-batch never holds more tokens than the same examples padded."""
    if not lengths:
        return []
    longest, total = max(int(n) for n in lengths), sum(int(n) for n in lengths)
    cap_max = max(capacity, longest)
    best: tuple[int, int, list[list[int]]] | None = None
    for rows in range(-(-total // cap_max), len(lengths) + 1):
        cap = min(cap_max, max(longest, -(-total // rows)))
        bins = first_fit_decreasing(lengths, cap)
        cost = len(bins) * max(sum(int(lengths[i]) for i in b) for b in bins)
        if best is None or (cost, len(bins)) < best[:2]:
            best = (cost, len(bins), bins)
        if cap == longest:
            break
    assert best is not None
    return best[2]


def _example(data: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and labels of example i."""
    return np.asarray(data.input_ids[i]), np.asarray(data.labels[i])


def collate_packed(data: Any, idx: Sequence[int], pad_id: int, capacity: int) -> dict[str, torch.Tensor]:
    """Pack the examples `idx` into rows of at most `capacity` tokens (right-padded to the fullest row)."""
    examples = [_example(data, int(i)) for i in idx]
    lengths = [len(ids) for ids, _ in examples]
    bins = pack_rows(lengths, capacity)
    width = max(sum(lengths[j] for j in b) for b in bins)
    n = len(bins)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    for row, b in enumerate(bins):
        at = 0
        for j in b:
            ids, lab = examples[j]
            k = len(ids)
            input_ids[row, at : at + k] = torch.from_numpy(ids.astype(np.int64))
            labels[row, at : at + k] = torch.from_numpy(lab.astype(np.int64))
            labels[row, at] = IGNORE_INDEX  # would be predicted from the previous example's last token
            attention[row, at : at + k] = 1
            positions[row, at : at + k] = torch.arange(k)
            at += k
        positions[row, at:] = torch.arange(width - at)  # the pad tail: a segment of its own
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "position_ids": positions}


def pad_fraction(batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Pad tokens / all tokens over collated micro-batches (packed or not)."""
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].numel() for b in batches)
    return 1.0 - real / total if total else 0.0
