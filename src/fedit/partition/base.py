"""Shared pieces of the partitioners: the registry, argument checks, category codes and index-list helpers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedit.data.records import Record
from fedit.errors import ConfigError, DataError
from fedit.registry import Registry

NO_ALPHA_SCHEMES = frozenset({"iid", "shards", "by-field"})  # stats record alpha=None for these
NONE_CATEGORY = "(none)"  # display name of the stratum of records whose category is None


class Partitioner(Protocol):
    """A scheme: returns `num_clients` non-empty lists of record indices."""

    def __call__(
        self,
        records: Sequence[Record],
        num_clients: int,
        *,
        seed: int,
        alpha: float,
        min_size: int | None,
        field: str | None,
    ) -> list[list[int]]: ...


PARTITIONERS: Registry[Partitioner] = Registry("partition scheme")


def make_rng(seed: int) -> np.random.Generator:
    """The one source of randomness of a scheme, so equal seeds give equal partitions."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"partition seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def check_num_clients(num_clients: object, num_records: int, scheme: str) -> int:
    """Validate N: an integer in 1..num_records (every client needs at least one record)."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ConfigError(f"{scheme} partition: num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients < 1:
        raise ConfigError(f"{scheme} partition: num_clients must be >= 1, got {num_clients}")
    if num_clients > num_records:
        raise ConfigError(
            f"{scheme} partition: cannot give each of {num_clients} clients at least one record from "
            f"{num_records} records; use at most {num_records} clients or more data"
        )
    return int(num_clients)


def check_alpha(alpha: object, scheme: str) -> float:
    """Validate a Dirichlet concentration: a finite number > 0 (small = skewed, large = uniform)."""
    try:
        value = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{scheme} partition: alpha must be a number > 0, got {alpha!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{scheme} partition: alpha must be a finite number > 0, got {alpha!r} "
            "(small alpha, e.g. 0.1, gives skewed clients; large, e.g. 100, near-uniform ones)"
        )
    return value


def default_min_size(num_records: int, num_clients: int) -> int:
    """At least 1, at most 10, and never more than half a client's fair share."""
    return max(1, min(10, num_records // (2 * num_clients)))


def resolve_min_size(min_size: object, num_records: int, num_clients: int, scheme: str) -> int:
    """`min_size` or its default; an error when N clients cannot each get that many records."""
    if min_size is None:
        return default_min_size(num_records, num_clients)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ConfigError(f"{scheme} partition: min_size must be an integer >= 1, got {min_size!r}")
    if min_size * num_clients > num_records:
        raise ConfigError(
            f"{scheme} partition: min_size={min_size} for {num_clients} clients needs "
            f"{min_size * num_clients} records, got {num_records}; lower min_size or num_clients"
        )
    return int(min_size)


def category_codes(records: Sequence[Record], scheme: str) -> tuple[np.ndarray, list[str]]:
    """Integer code per record (index into the sorted category names); every record must have a category."""
    cats = [r.category for r in records]
    for i, c in enumerate(cats):
        if c is None:
            raise DataError(
                f"{scheme} partition needs a category on every record; record {i} has none "
                f"(instruction: {records[i].instruction[:60]!r}); use scheme 'iid' or 'quantity', or fill category"
            )
    return _encode(cats)


def strata_codes(records: Sequence[Record]) -> tuple[np.ndarray, list[str | None]]:
    """Like `category_codes`, but records without a category form their own stratum (named None, sorted last)."""
    return _encode([r.category for r in records])


def _encode(values: list) -> tuple[np.ndarray, list]:
    names = sorted({v for v in values if v is not None}, key=str)
    if any(v is None for v in values):
        names.append(None)
    lookup = {v: k for k, v in enumerate(names)}
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values)), names


def display_name(name: str | None) -> str:
    return NONE_CATEGORY if name is None else str(name)


def parts_from_assignment(assign: np.ndarray, num_clients: int) -> list[list[int]]:
    """Client id per record -> per-client ascending index lists."""
    order = np.argsort(assign, kind="stable")
    bounds = np.cumsum(np.bincount(assign, minlength=num_clients))[:-1]
    return [chunk.tolist() for chunk in np.split(order, bounds)]


def split_by_sizes(order: np.ndarray, sizes: np.ndarray) -> list[list[int]]:
    """Cut `order` into consecutive chunks of the given sizes; each chunk sorted ascending."""
    return [np.sort(chunk).tolist() for chunk in np.split(order, np.cumsum(sizes)[:-1])]


def proportional_counts(proportions: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to `total`, cut at floor(cumsum(p) * total) as the reference does."""
    cuts = (np.cumsum(proportions) * total).astype(np.int64)
    cuts = np.minimum(cuts, total)
    cuts[-1] = total  # float round-off must not lose the last items
    return np.diff(cuts, prepend=0)
