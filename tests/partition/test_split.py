"""Stratified held-out test split."""

from __future__ import annotations

from collections import Counter

import pytest

from fedit.data.records import Record


def test_per_category_counts_and_disjoint(make_records):
    from fedit.partition import split_test

    records = make_records(500)
    train, test = split_test(records, per_category=10, seed=0)
    assert sorted(train + test) == list(range(500))
    counts = Counter(records[i].category for i in test)
    assert set(counts.values()) == {10}
    assert set(counts) == {r.category for r in records}
    assert train == sorted(train) and test == sorted(test)


def test_deterministic_and_seeded(make_records):
    from fedit.partition import split_test

    records = make_records(300)
    assert split_test(records, 5, seed=1) == split_test(records, 5, seed=1)
    assert split_test(records, 5, seed=1)[1] != split_test(records, 5, seed=2)[1]


def test_none_category_is_its_own_stratum_and_small_categories_keep_training(make_records):
    from fedit.partition import split_test

    records = make_records(100, categories=["a", "b", None])
    records += [Record(instruction="rare", response="r", category="rare"), Record("rare2", "r", category="rare")]
    records.append(Record(instruction="single", response="s", category="single"))
    with pytest.warns(UserWarning, match=r"keep one record for training: rare \(2\), single \(1\)"):
        train, test = split_test(records, per_category=4, seed=0)
    test_counts = Counter(records[i].category for i in test)
    train_counts = Counter(records[i].category for i in train)
    assert test_counts == {"a": 4, "b": 4, None: 4, "rare": 1}
    assert train_counts["rare"] == 1 and train_counts["single"] == 1


def test_zero_per_category_means_no_test(make_records):
    from fedit.partition import split_test

    train, test = split_test(make_records(50), 0)
    assert test == [] and train == list(range(50))
