"""IID scheme: shuffle all records and cut them into N near-equal parts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedit.data.records import Record
from fedit.partition.base import PARTITIONERS, check_num_clients, make_rng


@PARTITIONERS.register("iid")
def iid_partition(
    records: Sequence[Record],
    num_clients: int,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    min_size: int | None = None,
    field: str | None = None,
) -> list[list[int]]:
    """Seeded permutation of all indices, split with `np.array_split` (sizes differ by at most one).

    Categories are ignored, so each client sees the global category mix; `alpha`, `min_size`, `field` are unused.
    """
    n = len(records)
    num_clients = check_num_clients(num_clients, n, "iid")
    perm = make_rng(seed).permutation(n)
    return [np.sort(chunk).tolist() for chunk in np.array_split(perm, num_clients)]
