"""Small synthetic record sets for the partition tests."""

from __future__ import annotations

import pytest

from fedit.data.records import Record

CATEGORIES = ["brainstorming", "classification", "closed_qa", "open_qa", "summarization"]


def _make_records(n: int, categories: list[str | None] | None = None, **meta_fns) -> list[Record]:
    """n records cycling through `categories` (unequal counts when n is not a multiple); meta[k] = fn(i)."""
    cats = categories or CATEGORIES
    return [
        Record(
            instruction=f"question {i}",
            response=f"answer {i}",
            category=cats[(i * 7 + i // 3) % len(cats)],
            meta={k: fn(i) for k, fn in meta_fns.items()},
        )
        for i in range(n)
    ]


@pytest.fixture
def make_records():
    """Factory: make_records(n, categories=None, **meta_fns) -> list[Record]."""
    return _make_records


@pytest.fixture
def records() -> list[Record]:
    return _make_records(1000)
