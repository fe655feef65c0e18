"""Shared fixtures: a random micro Llama model and tokenizer made locally (no download), small record sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedit.data.records import Record


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedit.tools.micro_model import build_micro_model

    return build_micro_model(tmp_path_factory.mktemp("micro") / "model")


CATS = ("open_qa", "classification", "brainstorming")


def make_records(n: int = 40, categories: tuple[str, ...] = CATS) -> list[Record]:
    out = []
    for i in range(n):
        cat = categories[i % len(categories)]
        out.append(Record(instruction=f"Question {i} about {cat}?", response=f"Answer {i} {'x' * (i % 7)}",
                          context=f"Context {i}." if i % 2 else "", category=cat))
    return out


@pytest.fixture
def records() -> list[Record]:
    return make_records()


@pytest.fixture(scope="session")
def small_data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 Dolly-format records in 3 categories: fast end-to-end runs without the built-in suite."""
    from fedit.data.sources import write_records

    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    write_records(path, make_records(80))
    return path
