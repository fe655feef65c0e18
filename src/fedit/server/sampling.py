"""Per-round client selection: a fraction or a count of the registered clients, at least a minimum, seeded per round.

The generator is derived from (seed, round), so a resumed run samples exactly what an uninterrupted one would,
without carrying RNG state between rounds.
"""

from __future__ import annotations

import math

import numpy as np

from fedit.config import RunConfig
from fedit.errors import ConfigError


def clients_per_round(cfg: RunConfig, num_clients: int) -> int:
    k = cfg.clients_per_round if cfg.clients_per_round is not None else math.ceil(cfg.fraction * num_clients)
    k = max(k, cfg.min_clients)
    if k > num_clients:
        raise ConfigError(f"run: {k} clients per round requested (min_clients={cfg.min_clients}), "
                          f"but only {num_clients} clients exist")
    return k


def sample_clients(cfg: RunConfig, num_clients: int, round_idx: int) -> list[int]:
    """Sorted ids of the clients that train in `round_idx` (1-based)."""
    k = clients_per_round(cfg, num_clients)
    rng = np.random.default_rng([cfg.seed, 0x5A3, round_idx])
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))
