"""Partitioning the real Dolly-15k data: reads ../shared/data/dolly-15k-shepherd-10 (next to the repository),
skipped when that folder is absent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fedit.data.records import Record
from fedit.partition import partition, partition_stats, split_test

DOLLY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dolly-15k-shepherd-10"

pytestmark = pytest.mark.skipif(not DOLLY.is_dir(), reason=f"real data not found at {DOLLY}")


@pytest.fixture(scope="module")
def dolly() -> list[Record]:
    records = []
    for path in sorted(DOLLY.glob("local_training_*.json")):
        for d in json.loads(path.read_text(encoding="utf-8")):
            records.append(Record(d["instruction"], d["response"], d.get("context", ""), d["category"]))
    return records


@pytest.mark.parametrize("scheme", ["dirichlet", "shards", "iid"])
def test_dolly_100_clients(dolly, scheme):
    start = time.perf_counter()
    parts = partition(dolly, 100, scheme, seed=0, alpha=0.5)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    assert len(parts) == 100 and min(len(p) for p in parts) >= 1
    assert sorted(i for p in parts for i in p) == list(range(len(dolly)))
    h = partition_stats(dolly, parts, scheme=scheme, seed=0)["heterogeneity"]
    if scheme == "shards":
        assert h["mean_categories_per_client"] <= 2.5
    if scheme == "iid":
        assert h["entropy_ratio"] > 0.95


def test_dolly_1000_clients_dirichlet_fast(dolly):
    start = time.perf_counter()
    parts = partition(dolly, 1000, "dirichlet", seed=0, alpha=0.5)
    assert time.perf_counter() - start < 5.0
    assert min(len(p) for p in parts) >= 1


def test_dolly_test_split_like_reference(dolly):
    train, test = split_test(dolly, per_category=10, seed=0)
    assert len(test) == 80 and len(train) == len(dolly) - 80
