"""Partition instruction records across federated clients (iid, shards, dirichlet, quantity, by-field) and report it."""

from __future__ import annotations

from collections.abc import Sequence

from fedit.data.records import Record
from fedit.partition import by_field, dirichlet, iid, quantity, shards  # noqa: F401  (register the schemes)
from fedit.partition.base import PARTITIONERS, Partitioner, default_min_size
from fedit.partition.report import partition_stats, plot_heterogeneity, stats_table
from fedit.partition.split import split_test
from fedit.partition.writer import client_filename, write_partition

__all__ = [
    "PARTITIONERS",
    "Partitioner",
    "client_filename",
    "default_min_size",
    "partition",
    "partition_stats",
    "plot_heterogeneity",
    "split_test",
    "stats_table",
    "write_partition",
]


def partition(
    records: Sequence[Record],
    num_clients: int | None,
    scheme: str,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    min_size: int | None = None,
    field: str | None = None,
) -> list[list[int]]:
    """Split record indices into `num_clients` non-empty lists with the named scheme (see PARTITIONERS.names()).

    Every index appears exactly once; equal seeds give equal partitions. `scheme` accepts "by_field" for
    "by-field"; num_clients=None is allowed only for by-field (one client per distinct value of `field`).
    """
    fn = PARTITIONERS.get(scheme.replace("_", "-") if isinstance(scheme, str) else scheme)
    return fn(records, num_clients, seed=seed, alpha=alpha, min_size=min_size, field=field)  # type: ignore[arg-type]
