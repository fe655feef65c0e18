"""Shards scheme, as the reference FedIT framework (Shepherd): category-sorted data in 2N shards, two per client."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedit.data.records import Record
from fedit.errors import ConfigError
from fedit.partition.base import PARTITIONERS, category_codes, check_num_clients, make_rng, parts_from_assignment

SHARDS_PER_CLIENT = 2


@PARTITIONERS.register("shards")
def shards_partition(
    records: Sequence[Record],
    num_clients: int,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    min_size: int | None = None,
    field: str | None = None,
) -> list[list[int]]:
    """Sort by category (stable; ties in a seeded random order), cut 2·N contiguous near-equal shards, and give
    each client two shards drawn at random without replacement (seeded).

    Since a shard spans at most a category boundary or two, a client holds few categories (1-4). Every record
    needs a category; `alpha`, `min_size`, `field` are unused.
    """
    n = len(records)
    num_clients = check_num_clients(num_clients, n, "shards")
    num_shards = SHARDS_PER_CLIENT * num_clients
    if num_shards > n:
        raise ConfigError(
            f"shards partition cuts {SHARDS_PER_CLIENT} shards per client: {num_clients} clients need at least "
            f"{num_shards} records, got {n}; use at most {n // SHARDS_PER_CLIENT} clients"
        )
    codes, _ = category_codes(records, "shards")
    rng = make_rng(seed)
    order = rng.permutation(n)
    order = order[np.argsort(codes[order], kind="stable")]
    shard_sizes = n // num_shards + (np.arange(num_shards) < n % num_shards)  # as np.array_split
    shard_of_pos = np.repeat(np.arange(num_shards), shard_sizes)
    client_of_shard = np.empty(num_shards, dtype=np.int64)
    client_of_shard[rng.permutation(num_shards)] = np.arange(num_shards) // SHARDS_PER_CLIENT
    assign = np.empty(n, dtype=np.int64)
    assign[order] = client_of_shard[shard_of_pos]
    return parts_from_assignment(assign, num_clients)
