"""Shared fixtures: a random micro Llama model and tokenizer made locally (no download), small record sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedit.data.records import Record


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedit.tools.micro_model import build_micro_model

    return build_micro_model(tmp_path_factory.mktemp("micro") / "model")


def make_records(n: int = 40, categories: tuple[str, ...] = ("open_qa", "classification", "brainstorming")) -> list[Record]:
    out = []
    for i in range(n):
        cat = categories[i % len(categories)]
        out.append(Record(instruction=f"Question {i} about {cat}?", response=f"Answer {i} {'x' * (i % 7)}",
                          context=f"Context {i}." if i % 2 else "", category=cat))
    return out


@pytest.fixture
def records() -> list[Record]:
    return make_records()
