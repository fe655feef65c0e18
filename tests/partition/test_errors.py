"""Every user error of the partition API is a ConfigError/DataError that says what was wrong."""

from __future__ import annotations

import pytest

from fedit.errors import ConfigError, DataError
from fedit.partition import partition, split_test


@pytest.mark.parametrize("scheme", ["iid", "shards", "dirichlet", "quantity"])
def test_too_many_clients(make_records, scheme):
    with pytest.raises(ConfigError, match="at least one record from 5 records"):
        partition(make_records(5), 6, scheme)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True])
def test_bad_num_clients(make_records, bad):
    with pytest.raises(ConfigError, match="num_clients"):
        partition(make_records(20), bad, "iid")


def test_none_clients_only_for_by_field(make_records):
    with pytest.raises(ConfigError, match="num_clients"):
        partition(make_records(20), None, "iid")


def test_shards_needs_two_records_per_client(make_records):
    with pytest.raises(ConfigError, match="at least 8 records, got 5"):
        partition(make_records(5), 4, "shards")


@pytest.mark.parametrize("scheme", ["dirichlet", "quantity"])
@pytest.mark.parametrize("alpha", [0, -0.5, float("nan"), float("inf"), "x"])
def test_bad_alpha(make_records, scheme, alpha):
    with pytest.raises(ConfigError, match="alpha"):
        partition(make_records(50), 5, scheme, alpha=alpha)


@pytest.mark.parametrize("scheme", ["dirichlet", "quantity"])
def test_bad_min_size(make_records, scheme):
    with pytest.raises(ConfigError, match="min_size=20 for 5 clients needs 100 records, got 50"):
        partition(make_records(50), 5, scheme, min_size=20)
    with pytest.raises(ConfigError, match="min_size must be an integer >= 1"):
        partition(make_records(50), 5, scheme, min_size=0)


def test_dirichlet_gives_up_clearly(make_records):
    # 2 categories over 40 clients with tiny alpha: most clients get nothing
    records = make_records(200, categories=["a", "b"])
    with pytest.raises(ConfigError, match=r"after \d+ draws .*raise alpha"):
        partition(records, 40, "dirichlet", alpha=0.01, min_size=5)


@pytest.mark.parametrize("scheme", ["shards", "dirichlet"])
def test_missing_category_names_record_and_scheme(make_records, scheme):
    records = make_records(30)
    records[17] = records[17].__class__(instruction="q", response="a", category=None)
    with pytest.raises(DataError, match=rf"{scheme} partition needs a category.*record 17 "):
        partition(records, 3, scheme)


def test_unknown_scheme_lists_names(make_records):
    with pytest.raises(ConfigError, match="by-field, dirichlet, iid, quantity, shards"):
        partition(make_records(10), 2, "label-skew")


def test_negative_seed(make_records):
    with pytest.raises(ConfigError, match="seed"):
        partition(make_records(10), 2, "iid", seed=-1)


def test_by_field_errors(make_records):
    records = make_records(30, user=lambda i: f"u{i % 4}")
    with pytest.raises(ConfigError, match="needs field"):
        partition(records, None, "by-field")
    with pytest.raises(ConfigError, match="4 clients .*num_clients=3; set num_clients to 4"):
        partition(records, 3, "by-field", field="user")
    broken = list(records)
    broken[12] = broken[12].__class__(instruction="q", response="a", category="x", meta={"lang": "en"})
    with pytest.raises(DataError, match=r"record 12 has no meta\['user'\].*\['lang'\]"):
        partition(broken, None, "by-field", field="user")
    with pytest.raises(DataError, match="record 0 has a list value"):
        partition(make_records(5, user=lambda i: [i]), None, "by-field", field="user")


def test_split_errors(make_records):
    with pytest.raises(ConfigError, match="per_category"):
        split_test(make_records(10), -1)
    with pytest.raises(DataError, match="no records"):
        split_test([], 2)
