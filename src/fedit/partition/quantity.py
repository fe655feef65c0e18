"""Quantity-skew scheme: client sizes drawn from Dirichlet(alpha), records (and so categories) assigned IID."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedit.data.records import Record
from fedit.partition.base import (
    PARTITIONERS,
    check_alpha,
    check_num_clients,
    make_rng,
    proportional_counts,
    resolve_min_size,
    split_by_sizes,
)


@PARTITIONERS.register("quantity")
def quantity_partition(
    records: Sequence[Record],
    num_clients: int,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    min_size: int | None = None,
    field: str | None = None,
) -> list[list[int]]:
    """Client j gets min_size + floor-share p_j of the remaining n - N·min_size records, p ~ Dirichlet(alpha·1_N);
    the records themselves are a seeded shuffle cut into those sizes, so each client's category mix is IID.

    min_size defaults to max(1, min(10, n // 2N)); small alpha means very unequal sizes. Categories may be None.
    """
    n = len(records)
    num_clients = check_num_clients(num_clients, n, "quantity")
    alpha = check_alpha(alpha, "quantity")
    min_size = resolve_min_size(min_size, n, num_clients, "quantity")
    rng = make_rng(seed)
    sizes = min_size + proportional_counts(rng.dirichlet(np.full(num_clients, alpha)), n - min_size * num_clients)
    return split_by_sizes(rng.permutation(n), sizes)
