"""Aggregation strategies, one file each, registered with their config dataclass; `build_strategy` picks one."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from fedit.strategies.base import (
    STRATEGIES,
    Aggregate,
    ClientPlan,
    ClientSession,
    RoundContext,
    State,
    Strategy,
    register,
)
from fedit.strategies.fedadam import FedAdam
from fedit.strategies.fedavg import FedAvg
from fedit.strategies.fedprox import FedProx

# Every module of this package registers its strategy on import: a new strategy is a new file, nothing else.
for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")


def build_strategy(cfg: Any) -> Strategy:
    """The strategy a StrategyConfig names, built with its own settings table."""
    cls = STRATEGIES.get(cfg.name)
    return cls(cfg.settings(cfg.name))


__all__ = ["STRATEGIES", "Aggregate", "ClientPlan", "ClientSession", "FedAdam", "FedAvg", "FedProx",
           "RoundContext", "State", "Strategy", "build_strategy", "register"]
