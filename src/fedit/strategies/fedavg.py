"""FedAvg, the FedIT aggregation rule (McMahan et al. 2017; Zhang et al. 2024 for LoRA instruction tuning).

    w_{t+1} = sum_k (n_k / n) * w_k        with n = sum_k n_k over this round's clients

applied to each LoRA tensor separately (A and B averaged independently, as in FedIT/Shepherd; the average of the
products B_k A_k is not exactly the product of the averages: the round's `aggregation_error` metric says by how
much). No settings.

Streaming: the round's accumulator folds each update into an order-independent exact sum of n_k * w_k and divides
by n at the end (strategies/accumulate.py), so the result is the same bits in any arrival order and memory does not
grow with the number of clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedit.strategies.accumulate import Accumulator, MeanAccumulator, fold
from fedit.strategies.base import Aggregate, RoundContext, State, Strategy, register
from fedit.types import ClientUpdate, Params


@dataclass
class FedAvgConfig:
    pass


@register("fedavg", FedAvgConfig)
class FedAvg(Strategy):
    def accumulator(self, ctx: RoundContext, global_params: Params, state: State) -> Accumulator:
        expected, extras = self.expected_update(global_params)

        def finish(avg: Params) -> Aggregate:
            return Aggregate(global_params | {k: v.to(global_params[k].dtype) for k, v in avg.items()}, dict(state))

        return MeanAccumulator(expected, extras, finish)

    def aggregate(self, ctx: RoundContext, global_params: Params, updates: Sequence[ClientUpdate],
                  state: State) -> Aggregate:
        return fold(self.accumulator(ctx, global_params, state), updates)
