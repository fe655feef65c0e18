"""Statistics, the rich table, the heterogeneity plot and the on-disk partition layout."""

from __future__ import annotations

import json
import re

import numpy as np
from rich.console import Console

from fedit.data.records import Record
from fedit.partition import partition, partition_stats, split_test, stats_table, write_partition


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_stats_counts_match_parts(make_records):
    records = make_records(400, categories=["a", "b", None])
    parts = partition(records, 6, "quantity", seed=0)
    stats = partition_stats(records, parts, scheme="quantity", seed=0, alpha=0.5)
    assert stats["categories"] == ["a", "b", "(none)"]
    assert stats["sizes"] == [len(p) for p in parts]
    for row, part in zip(stats["counts"], parts, strict=True):
        cats = [records[i].category for i in part]
        assert row == [cats.count("a"), cats.count("b"), cats.count(None)]
    assert stats["num_records"] == 400 and stats["num_clients"] == 6
    json.dumps(stats)  # JSON-ready


def test_entropy_summary_orders_schemes(make_records):
    records = sorted(make_records(1000), key=lambda r: r.category)
    iid = partition_stats(records, partition(records, 10, "iid"), scheme="iid", seed=0)["heterogeneity"]
    shards = partition_stats(records, partition(records, 10, "shards"), scheme="shards", seed=0)["heterogeneity"]
    assert shards["mean_client_entropy_bits"] < iid["mean_client_entropy_bits"]
    assert 0 < shards["entropy_ratio"] < iid["entropy_ratio"] <= 1.0
    assert iid["global_entropy_bits"] == shards["global_entropy_bits"]


def test_write_partition_files_reload(tmp_path, make_records):
    records = make_records(300, categories=["x", "y", "z"])
    train_idx, test_idx = split_test(records, 5, seed=0)
    train = [records[i] for i in train_idx]
    parts = partition(train, 4, "dirichlet", alpha=0.3, seed=0)
    stats = write_partition(
        tmp_path / "out", train, parts, [records[i] for i in test_idx], scheme="dirichlet", seed=0, alpha=0.3
    )
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["client_000.jsonl", "client_001.jsonl", "client_002.jsonl", "client_003.jsonl",
                     "heterogeneity.png", "stats.json", "test.jsonl"]  # fmt: skip
    for k, part in enumerate(parts):
        lines = (out / f"client_{k:03d}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [Record.from_dict(json.loads(line)) for line in lines] == [train[i] for i in part]
    test = [Record.from_dict(json.loads(line)) for line in (out / "test.jsonl").read_text().splitlines()]
    assert test == [records[i] for i in test_idx]
    saved = json.loads((out / "stats.json").read_text())
    assert saved == stats
    assert saved["alpha"] == 0.3 and saved["scheme"] == "dirichlet" and saved["seed"] == 0
    assert saved["test"] == {"size": 15, "counts": {"x": 5, "y": 5, "z": 5}}
    assert np.asarray(saved["counts"]).sum() == len(train)
    w, h = _png_size(out / "heterogeneity.png")
    assert w > 300 and h > 200
    assert not list(out.glob(".*tmp"))

    # rewriting with fewer clients and no test set leaves no stale files
    write_partition(out, train, partition(train, 2, "iid"), scheme="iid", seed=0)
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["client_000.jsonl", "client_001.jsonl"]
    assert json.loads((out / "stats.json").read_text())["files"]["test"] is None


def test_many_clients_table_and_plot(tmp_path, make_records):
    records = make_records(3000)
    parts = partition(records, 150, "shards", seed=0)
    stats = write_partition(tmp_path, records, parts, scheme="shards", seed=0)
    assert len(list(tmp_path.glob("client_*.jsonl"))) == 150
    assert _png_size(tmp_path / "heterogeneity.png")[0] > 1000
    console = Console(width=200, record=True)
    console.print(stats_table(stats))
    text = console.export_text()
    assert "… 130 more" in text and "all 150" in text
    assert re.search(r"^│\s+19 │", text, re.M) and not re.search(r"^│\s+20 │", text, re.M)
    assert "3000" in text


def test_by_field_stats_name_clients(tmp_path, make_records):
    records = make_records(40, user=lambda i: ["ann", "bob"][i % 2])
    parts = partition(records, None, "by-field", field="user")
    stats = write_partition(tmp_path, records, parts, scheme="by-field", seed=0, field="user")
    assert stats["client_values"] == ["ann", "bob"]
    console = Console(width=200, record=True)
    console.print(stats_table(stats))
    assert "ann" in console.export_text()


def test_client_file_names_grow_past_999():
    from fedit.partition import client_filename

    assert client_filename(7, 10) == "client_007.jsonl"
    assert client_filename(7, 1001) == "client_0007.jsonl"
