"""Aggregation strategies, one file each; `build_strategy` turns the config into one."""

from __future__ import annotations

from fedit.config import StrategyConfig
from fedit.registry import Registry
from fedit.strategies.base import State, Strategy
from fedit.strategies.fedadam import FedAdam
from fedit.strategies.fedavg import FedAvg
from fedit.strategies.fedprox import FedProx

STRATEGIES: Registry = Registry("strategy")
STRATEGIES.add("fedavg", lambda c: FedAvg())
STRATEGIES.add("fedprox", lambda c: FedProx(mu=c.mu))
STRATEGIES.add("fedadam", lambda c: FedAdam(eta=c.server_lr, beta1=c.beta1, beta2=c.beta2, tau=c.tau))


def build_strategy(cfg: StrategyConfig) -> Strategy:
    return STRATEGIES.get(cfg.name)(cfg)


__all__ = ["STRATEGIES", "State", "Strategy", "FedAdam", "FedAvg", "FedProx", "build_strategy"]
