"""By-field scheme: one client per distinct value of a record field (category, or a key of record.meta)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from fedit.data.records import Record
from fedit.errors import ConfigError, DataError
from fedit.partition.base import PARTITIONERS, parts_from_assignment


def field_value(record: Record, field: str, index: int) -> Any:
    """`record.category` for field "category", else `record.meta[field]`; missing or None is a DataError."""
    value = record.category if field == "category" else record.meta.get(field)
    if value is None:
        where = "category" if field == "category" else f"meta[{field!r}]"
        raise DataError(
            f"by-field partition on {field!r}: record {index} has no {where} "
            f"(meta keys: {sorted(record.meta) or 'none'}); every record needs a value"
        )
    if not isinstance(value, Hashable):
        raise DataError(
            f"by-field partition on {field!r}: record {index} has a {type(value).__name__} value {value!r}; "
            "expected a string or number"
        )
    return value


def distinct_values(records: Sequence[Record], field: str) -> tuple[np.ndarray, list[Any]]:
    """Client id per record and the field value of each client, clients ordered by the value's text."""
    values = [field_value(r, field, i) for i, r in enumerate(records)]
    names = sorted(set(values), key=lambda v: (str(v), repr(v)))
    lookup = {v: k for k, v in enumerate(names)}
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values)), names


@PARTITIONERS.register("by-field")
def by_field_partition(
    records: Sequence[Record],
    num_clients: int | None,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    min_size: int | None = None,
    field: str | None = None,
) -> list[list[int]]:
    """Client k holds every record whose `field` equals the k-th distinct value (values sorted as text), indices
    ascending. N is the number of distinct values: pass num_clients=None, or the matching number (anything else is
    a ConfigError). Natural, non-random heterogeneity (per user, per source, per language); `seed`, `alpha` and
    `min_size` are unused.
    """
    if not field:
        raise ConfigError("by-field partition needs field=<name>: 'category' or a key of record.meta (e.g. 'user')")
    if not records:
        raise ConfigError(f"by-field partition on {field!r}: no records to partition")
    assign, names = distinct_values(records, field)
    if num_clients is not None and num_clients != len(names):
        shown = ", ".join(map(repr, names[:10])) + (", ..." if len(names) > 10 else "")
        raise ConfigError(
            f"by-field partition on {field!r} gives one client per distinct value: {len(names)} clients "
            f"({shown}), but num_clients={num_clients}; set num_clients to {len(names)} or leave it unset"
        )
    return parts_from_assignment(assign, len(names))
