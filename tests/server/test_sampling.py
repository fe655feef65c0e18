"""Client sampling: fraction or count, minimum, seeded per round (so resume needs no RNG state)."""

from __future__ import annotations

import pytest

from fedit.config import RunConfig
from fedit.errors import ConfigError
from fedit.server.sampling import clients_per_round, sample_clients


def test_fraction_count_and_minimum() -> None:
    assert clients_per_round(RunConfig(fraction=0.3), 10) == 3
    assert clients_per_round(RunConfig(fraction=0.05), 10) == 1
    assert clients_per_round(RunConfig(fraction=0.05, min_clients=4), 10) == 4
    assert clients_per_round(RunConfig(fraction=0.3, clients_per_round=7), 10) == 7
    with pytest.raises(ConfigError, match=r"run.clients_per_round: got 12, but the run has only 10 client"):
        clients_per_round(RunConfig(clients_per_round=12), 10)
    with pytest.raises(ConfigError, match=r"run.min_clients: got 11, but the run has only 10 client"):
        clients_per_round(RunConfig(min_clients=11), 10)


def test_seeded_per_round_and_varied() -> None:
    cfg = RunConfig(fraction=0.3, seed=5)
    rounds = [sample_clients(cfg, 100, r) for r in range(1, 21)]
    assert rounds == [sample_clients(cfg, 100, r) for r in range(1, 21)]  # replayable
    assert all(len(s) == 30 and len(set(s)) == 30 and s == sorted(s) for s in rounds)
    assert len({tuple(s) for s in rounds}) == 20  # rounds differ
    assert sample_clients(RunConfig(fraction=0.3, seed=6), 100, 1) != rounds[0]  # so do seeds
    seen = {c for s in rounds for c in s}
    assert len(seen) > 90  # every client gets its turn over time
