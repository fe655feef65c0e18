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
    """Clients sampled each round; ConfigError naming the setting when the run has too few clients for it."""
    have = f"but the run has only {num_clients} client(s) (partition.clients, or the files of the data's partition)"
    if cfg.min_clients > num_clients:
        raise ConfigError(f"run.min_clients: got {cfg.min_clients}, {have}")
    if cfg.clients_per_round is not None and cfg.clients_per_round > num_clients:
        raise ConfigError(f"run.clients_per_round: got {cfg.clients_per_round}, {have}")
    k = cfg.clients_per_round if cfg.clients_per_round is not None else math.ceil(cfg.fraction * num_clients)
    return max(k, cfg.min_clients)


def check_run_shape(cfg: RunConfig, num_clients: int) -> None:
    """What the config asks of the clients, checked once their number is known (before any model loads)."""
    from fedit.faults import parse_faults

    clients_per_round(cfg, num_clients)
    for f in parse_faults(cfg.faults):
        if f.client is not None and f.client >= num_clients:
            raise ConfigError(f"run.faults: {f.spec!r} names client {f.client}, but the run has {num_clients} "
                              f"client(s), 0..{num_clients - 1} (it would never fire)")


def sample_clients(cfg: RunConfig, num_clients: int, round_idx: int) -> list[int]:
    """Sorted ids of the clients that train in `round_idx` (1-based)."""
    k = clients_per_round(cfg, num_clients)
    rng = np.random.default_rng([cfg.seed, 0x5A3, round_idx])
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))
