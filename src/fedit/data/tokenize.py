"""Tokenization with label masking, cutoff and EOS; length-grouped micro-batches with dynamic padding.

Each client's data is tokenized once (`TokenizedData`) and reused every round; only the batch order changes. Token
ids and labels are kept as flat int32 arrays with row offsets (`Ragged`): 8 bytes per token for both, plus 8 per
example, where lists of Python ints took about 36 bytes per token each.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedit.data.lengths import LengthCounts
from fedit.data.records import Record
from fedit.data.templates import Template

IGNORE_INDEX = -100


class Ragged(Sequence[np.ndarray]):
    """Rows of integers of different lengths, stored flat: `values` (int32) and `offsets` (int64, one more than rows).
    Row i is the view values[offsets[i]:offsets[i + 1]]."""

    def __init__(self, rows: Iterable[Sequence[int] | np.ndarray]) -> None:
        if isinstance(rows, Ragged):
            self.values, self.offsets = rows.values, rows.offsets
            return
        parts = [np.asarray(r, dtype=np.int32) for r in rows]
        self.offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=self.offsets[1:])
        self.values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"Ragged rows are indexed by int, got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} of {n}")
        i = int(i) % n
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.offsets.nbytes)


@dataclass
class TokenizedData:
    """Token ids and labels of one client's records (labels are IGNORE_INDEX where no loss is taken), as `Ragged`
    int32 rows (lists of lists given to the constructor are converted)."""

    input_ids: Ragged
    labels: Ragged
    categories: list[str | None]
    counts: LengthCounts | None = None  # what the cutoff did to the records (tokenize_records fills it)

    def __post_init__(self) -> None:
        self.input_ids, self.labels = Ragged(self.input_ids), Ragged(self.labels)
        if not np.array_equal(self.input_ids.offsets, self.labels.offsets):
            raise ValueError("TokenizedData: every example needs as many labels as token ids")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return self.input_ids.lengths()

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels.values != IGNORE_INDEX).sum())

    @property
    def nbytes(self) -> int:
        """Bytes held by the token ids, labels and their offsets."""
        return self.input_ids.nbytes + self.labels.nbytes


def bos_prefix(template: Template, tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer uses one and the template does not write it itself (chat templates do)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or template.eos_in_text or not getattr(tokenizer, "add_bos_token", True):
        return []
    return [bos]


def encode_prompt(prompt: str, template: Template, tokenizer: Any) -> list[int]:
    """Token ids of a generation prompt, prefixed exactly as in training."""
    return bos_prefix(template, tokenizer) + tokenizer.encode(prompt, add_special_tokens=False)


def encode_record(
    record: Record, template: Template, tokenizer: Any, cutoff_len: int, train_on_inputs: bool, add_eos: bool
) -> tuple[list[int], list[int]]:
    """Token ids and labels for one record; truncated to `cutoff_len` tokens (the end is cut, as in Alpaca/FedIT)."""
    ids, labels = encode_full(record, template, tokenizer, train_on_inputs, add_eos)
    return ids[:cutoff_len], labels[:cutoff_len]


def encode_full(record: Record, template: Template, tokenizer: Any, train_on_inputs: bool,
                add_eos: bool) -> tuple[list[int], list[int]]:
    """Token ids and labels for one record before any cutoff."""
    ids: list[int] = bos_prefix(template, tokenizer)
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for text, trainable in template.segments(record):
        seg = tokenizer.encode(text, add_special_tokens=False) if text else []
        if trainable and add_eos and not template.eos_in_text and tokenizer.eos_token_id is not None:
            seg = seg + [tokenizer.eos_token_id]
        ids.extend(seg)
        labels.extend(seg if (trainable or train_on_inputs) else [IGNORE_INDEX] * len(seg))
    return ids, labels


def tokenize_records(
    records: Sequence[Record],
    template: Template,
    tokenizer: Any,
    cutoff_len: int = 256,
    train_on_inputs: bool = False,
    add_eos: bool = True,
) -> TokenizedData:
    """Tokenize records; examples left with no trainable token after the cutoff are dropped. What the cutoff did
    (examples kept whole, truncated, dropped; tokens kept) is counted in the result's `counts`."""
    ids_all, labels_all, cats = [], [], []
    counts = LengthCounts()
    for r in records:
        full_ids, full_labels = encode_full(r, template, tokenizer, train_on_inputs, add_eos)
        ids, labels = full_ids[:cutoff_len], full_labels[:cutoff_len]
        n_labels = sum(1 for t in labels if t != IGNORE_INDEX)
        counts.add(len(full_ids), len(ids), n_labels, cutoff_len)
        if n_labels:
            ids_all.append(ids)
            labels_all.append(labels)
            cats.append(r.category)
    return TokenizedData(ids_all, labels_all, cats, counts)


def batch_order(
    lengths: np.ndarray, micro_batch_size: int, rng: np.random.Generator, group_by_length: bool
) -> list[np.ndarray]:
    """One epoch of micro-batches (index arrays).

    With `group_by_length`, indices are shuffled, cut into mega-batches of 64 micro-batches, sorted by length inside
    each mega-batch, chunked, and the micro-batches shuffled again: padding nearly vanishes while order stays random.
    """
    perm = rng.permutation(len(lengths))
    if not group_by_length:
        return [perm[i : i + micro_batch_size] for i in range(0, len(perm), micro_batch_size)]
    mega = micro_batch_size * 64
    chunks: list[np.ndarray] = []
    for start in range(0, len(perm), mega):
        block = perm[start : start + mega]
        block = block[np.argsort(-lengths[block], kind="stable")]
        chunks.extend(block[i : i + micro_batch_size] for i in range(0, len(block), micro_batch_size))
    return [chunks[i] for i in rng.permutation(len(chunks))]


def collate(data: TokenizedData, idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch to its longest item."""
    width = max(len(data.input_ids[i]) for i in idx)
    n = len(idx)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for row, i in enumerate(idx):
        ids = data.input_ids[i]
        input_ids[row, : len(ids)] = torch.from_numpy(ids)
        labels[row, : len(ids)] = torch.from_numpy(data.labels[i])
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def iter_micro_batches(
    data: TokenizedData, micro_batch_size: int, rng: np.random.Generator, group_by_length: bool
) -> Iterator[np.ndarray]:
    """Endless stream of micro-batch index arrays, epoch after epoch."""
    lengths = data.lengths
    while True:
        yield from batch_order(lengths, micro_batch_size, rng, group_by_length)
