"""Dirichlet label-skew scheme: each category's records are split across clients by Dirichlet(alpha) proportions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedit.data.records import Record
from fedit.errors import ConfigError
from fedit.partition.base import (
    PARTITIONERS,
    category_codes,
    check_alpha,
    check_num_clients,
    default_min_size,
    make_rng,
    parts_from_assignment,
    proportional_counts,
    resolve_min_size,
)

MAX_TRIES = 1000  # draws at the final min_size before giving up
RELAX_TRIES = 100  # draws per intermediate step of the default min_size


@PARTITIONERS.register("dirichlet")
def dirichlet_partition(
    records: Sequence[Record],
    num_clients: int,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    min_size: int | None = None,
    field: str | None = None,
) -> list[list[int]]:
    """For each category (sorted by name) draw p ~ Dirichlet(alpha·1_N) and give client j a share p_j of that
    category's records (cut at floor(cumsum(p)·n_k), records in seeded random order).

    As in the reference framework (Shepherd, after NIID-Bench), a client already holding n/N records gets no
    share of the later categories, which keeps sizes comparable. The whole draw is repeated until every client has
    at least `min_size` records; after MAX_TRIES draws it gives up with a ConfigError. With min_size=None the target
    starts at max(1, min(10, n // 2N)) and halves after every RELAX_TRIES failed draws, down to 1 (many clients
    over few categories, e.g. 1,000 clients over 8, rarely give every client 7 records; no client is ever empty).

    Small alpha (0.1) gives clients dominated by one or two categories; large alpha (100) near-IID ones.
    """
    n = len(records)
    num_clients = check_num_clients(num_clients, n, "dirichlet")
    alpha = check_alpha(alpha, "dirichlet")
    if min_size is None:
        targets = _relaxing_targets(default_min_size(n, num_clients))
    else:
        targets = [(resolve_min_size(min_size, n, num_clients, "dirichlet"), MAX_TRIES)]
    codes, names = category_codes(records, "dirichlet")
    rng = make_rng(seed)
    counts = draw_counts(np.bincount(codes, minlength=len(names)), num_clients, alpha, targets, rng)
    # records grouped by category, random order inside each; counts.ravel() is category-major like that order
    order = rng.permutation(n)
    order = order[np.argsort(codes[order], kind="stable")]
    owner = np.repeat(np.tile(np.arange(num_clients), len(names)), counts.ravel())
    assign = np.empty(n, dtype=np.int64)
    assign[order] = owner
    return parts_from_assignment(assign, num_clients)


def _relaxing_targets(start: int) -> list[tuple[int, int]]:
    """(min_size, tries) steps for the default: start, then halve every RELAX_TRIES failed draws, down to 1."""
    steps = []
    while start > 1:
        steps.append((start, RELAX_TRIES))
        start //= 2
    return [*steps, (1, MAX_TRIES)]


def draw_counts(
    category_sizes: np.ndarray,
    num_clients: int,
    alpha: float,
    targets: list[tuple[int, int]],
    rng: np.random.Generator,
) -> np.ndarray:
    """A (categories x clients) count matrix whose client totals reach the min_size of some (min_size, tries) step,
    trying the steps in order; counts only (no index shuffles), so a draw costs O(categories x clients)."""
    n = int(category_sizes.sum())
    cap = n / num_clients
    conc = np.full(num_clients, alpha)
    smallest = 0
    for min_size, tries in targets:
        for _ in range(tries):
            counts = np.zeros((len(category_sizes), num_clients), dtype=np.int64)
            sizes = np.zeros(num_clients, dtype=np.int64)
            for k, n_k in enumerate(category_sizes):
                open_ = sizes < cap
                p = rng.dirichlet(conc) * open_
                total = p.sum()
                if not total > 0:  # all mass fell on full clients (tiny alpha): spread over the open ones
                    p, total = open_.astype(float), open_.sum()
                counts[k] = proportional_counts(p / total, int(n_k))
                sizes += counts[k]
            if sizes.min() >= min_size:
                return counts
            smallest = max(smallest, int(sizes.min()))
    tried = sum(t for _, t in targets)
    raise ConfigError(
        f"dirichlet partition: after {tried} draws some client still had fewer than min_size={targets[-1][0]} "
        f"records (best draw's smallest client: {smallest}) with {num_clients} clients, {n} records in "
        f"{len(category_sizes)} categories, alpha={alpha}; raise alpha, lower min_size, or use fewer clients"
    )
