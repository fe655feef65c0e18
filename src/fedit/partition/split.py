"""Held-out test split, stratified by category (records without a category form their own stratum)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from fedit.data.records import Record
from fedit.errors import ConfigError, DataError
from fedit.partition.base import display_name, make_rng, strata_codes


def split_test(records: Sequence[Record], per_category: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Pick `per_category` records of each category at random (seeded) for the test set; the rest is training.

    A category with <= per_category records keeps one record for training and gives the rest to test (a warning
    names it), so no category disappears from training. Returns (train_idx, test_idx), each ascending.
    """
    if isinstance(per_category, bool) or not isinstance(per_category, (int, np.integer)) or per_category < 0:
        raise ConfigError(f"test split: per_category (--test-size) must be an integer >= 0, got {per_category!r}")
    if not records:
        raise DataError("test split: no records to split")
    rng = make_rng(seed)
    codes, names = strata_codes(records)
    sizes = np.bincount(codes, minlength=len(names))
    take = np.minimum(per_category, sizes - 1)
    small = [f"{display_name(names[k])} ({sizes[k]})" for k in np.flatnonzero(sizes <= per_category)]
    if small and per_category > 0:
        warnings.warn(
            f"test split: categories with <= {per_category} records keep one record for training: {', '.join(small)}",
            stacklevel=2,
        )
    order = rng.permutation(len(records))
    order = order[np.argsort(codes[order], kind="stable")]
    starts = np.cumsum(sizes) - sizes
    rank = np.arange(len(order)) - starts[codes[order]]  # position within the record's stratum
    is_test = rank < take[codes[order]]
    return np.sort(order[~is_test]).tolist(), np.sort(order[is_test]).tolist()
