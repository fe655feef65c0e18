"""Each partition scheme: coverage, determinism and the heterogeneity it is meant to produce."""

from __future__ import annotations

import numpy as np
import pytest

from fedit.partition import PARTITIONERS, partition, partition_stats
from fedit.partition.base import category_codes

SEEDED = ["iid", "shards", "dirichlet", "quantity"]


def _check_cover(parts: list[list[int]], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    assert all(len(p) > 0 for p in parts), [len(p) for p in parts]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))  # every index exactly once
    assert all(isinstance(i, int) for i in flat[:20])


def _entropy_ratio(records, parts) -> float:
    return partition_stats(records, parts, scheme="x", seed=0)["heterogeneity"]["entropy_ratio"]


def test_registry_lists_all_schemes():
    assert PARTITIONERS.names() == ["by-field", "dirichlet", "iid", "quantity", "shards"]


@pytest.mark.parametrize("scheme", SEEDED)
@pytest.mark.parametrize("num_clients", [1, 7, 50])
def test_every_index_once_no_empty_client(records, scheme, num_clients):
    _check_cover(partition(records, num_clients, scheme, seed=3), len(records), num_clients)


@pytest.mark.parametrize("scheme", SEEDED)
def test_deterministic_given_seed(records, scheme):
    a = partition(records, 10, scheme, seed=1)
    assert partition(records, 10, scheme, seed=1) == a
    assert partition(records, 10, scheme, seed=2) != a


@pytest.mark.parametrize("scheme", SEEDED)
def test_registry_callable_matches_partition(records, scheme):
    fn = PARTITIONERS.get(scheme)
    direct = fn(records, 10, seed=5, alpha=0.5, min_size=None, field=None)
    assert direct == partition(records, 10, scheme, seed=5)


def test_iid_sizes_near_equal_and_mixed(records):
    parts = partition(records, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _entropy_ratio(records, parts) > 0.95


def test_shards_few_categories_per_client(make_records):
    # category-sorted input, as in the reference framework's data file
    records = sorted(make_records(2000), key=lambda r: r.category)
    parts = partition(records, 20, "shards", seed=0)
    _check_cover(parts, len(records), 20)
    cats_per_client = [len({records[i].category for i in p}) for p in parts]
    assert max(cats_per_client) <= 4
    assert np.mean(cats_per_client) <= 2.5
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2  # two near-equal shards each
    assert _entropy_ratio(records, parts) < _entropy_ratio(records, partition(records, 20, "iid", seed=0))


def test_shards_is_independent_of_input_order(make_records):
    records = make_records(600)
    shuffled_positions = np.random.default_rng(0).permutation(len(records))
    shuffled = [records[i] for i in shuffled_positions]
    cats = [len({shuffled[i].category for i in p}) for p in partition(shuffled, 10, "shards", seed=0)]
    assert max(cats) <= 4


def test_dirichlet_small_alpha_more_skewed(records):
    skewed = [_entropy_ratio(records, partition(records, 10, "dirichlet", alpha=0.1, seed=s)) for s in range(3)]
    uniform = [_entropy_ratio(records, partition(records, 10, "dirichlet", alpha=100.0, seed=s)) for s in range(3)]
    assert max(skewed) < min(uniform)
    assert min(uniform) > 0.95


def test_dirichlet_respects_min_size(records):
    parts = partition(records, 20, "dirichlet", alpha=0.3, min_size=15, seed=0)
    _check_cover(parts, len(records), 20)
    assert min(len(p) for p in parts) >= 15


def test_dirichlet_default_min_size_relaxes_for_many_clients(make_records):
    records = make_records(1500)
    parts = partition(records, 150, "dirichlet", alpha=0.5, seed=0)  # 5 categories over 150 clients
    _check_cover(parts, len(records), 150)


def test_quantity_sizes_skewed_labels_mixed(records):
    parts = partition(records, 10, "quantity", alpha=0.3, min_size=5, seed=0)
    _check_cover(parts, len(records), 10)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 5
    assert sizes.max() > 3 * sizes.min()  # unequal sizes
    big = [p for p in parts if len(p) >= 50]
    assert big
    for p in big:  # each sizeable client still sees (nearly) every category
        assert len({records[i].category for i in p}) == len({r.category for r in records})
    iid_sizes = [len(p) for p in partition(records, 10, "iid", seed=0)]
    assert np.std(sizes) > 5 * np.std(iid_sizes)


def test_quantity_allows_missing_categories(make_records):
    records = make_records(100, categories=["a", None])
    _check_cover(partition(records, 4, "quantity", seed=0), 100, 4)
    _check_cover(partition(records, 4, "iid", seed=0), 100, 4)


def test_by_field_one_client_per_value(make_records):
    users = ["ann", "bob", "cy"]
    records = make_records(90, user=lambda i: users[(i // 4) % 3])
    parts = partition(records, None, "by-field", field="user")
    _check_cover(parts, 90, 3)
    for value, part in zip(users, parts, strict=True):  # clients ordered by value
        assert {records[i].meta["user"] for i in part} == {value}
    assert partition(records, 3, "by_field", field="user") == parts  # matching N and the underscore alias
    by_cat = partition(records, None, "by-field", field="category")
    assert len(by_cat) == len({r.category for r in records})


def test_category_codes_sorted(make_records):
    codes, names = category_codes(make_records(20), "x")
    assert names == sorted(names)
    assert codes.max() == len(names) - 1
