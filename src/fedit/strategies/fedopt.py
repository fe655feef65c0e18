"""FedOpt (Reddi et al., ICLR 2021, "Adaptive Federated Optimization", Algorithms 1 and 2): a server optimizer
stepping on the round's pseudo-gradient. The base of FedAvgM, FedAdagrad, FedAdam and FedYogi.

    delta_t = sum_k (n_k / n) * (w_k - x_t)                      (weighted mean client change, per shared tensor)
    x_{t+1} = x_t + step(delta_t, state)                         (each subclass's rule, element-wise, in float32)

The paper writes the unweighted mean of the client changes; fedit (like Flower) weights by examples, consistent
with FedAvg. Each LoRA tensor (A and B) is stepped element-wise and independently. A subclass implements
`step(key, delta, state, t)` returning the step and its new state entries; `t` counts server steps from 1
(for bias correction), kept in the state as `t` so a resumed run continues exactly.

Streaming: the round's weighted mean is accumulated update by update, order-independently (strategies/accumulate.py),
and the server optimizer steps once on it at the end of the round.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedit.strategies.accumulate import Accumulator, MeanAccumulator, fold
from fedit.strategies.base import Aggregate, RoundContext, State, Strategy
from fedit.types import ClientUpdate, Params


class FedOpt(Strategy):
    """Subclasses set `moments` (state names kept per shared tensor, e.g. ("m", "v")) and implement `step`."""

    moments: tuple[str, ...] = ()

    def initial_moment(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A moment's start: zeros, except `v` where the settings have a `v_init` (FedAdagrad, FedYogi: v_0)."""
        if name == "v" and hasattr(self.cfg, "v_init"):
            return torch.full_like(like, self.cfg.v_init, dtype=torch.float32)
        return torch.zeros_like(like, dtype=torch.float32)

    def init_state(self, params: Params, num_clients: int) -> State:
        state: State = {"t": torch.zeros((), dtype=torch.int64)}
        for k in self.shared_keys(params):
            for name in self.moments:
                state[f"{name}.{k}"] = self.initial_moment(name, params[k])
        return state

    def adaptive_step(self, m: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
        """FedAdam's and FedYogi's step eta * m_hat / (sqrt(v_hat) + tau), bias-corrected by 1 - beta^t if asked."""
        c = self.cfg
        if c.bias_correction:
            m, v = m / (1 - c.beta1 ** t), v / (1 - c.beta2 ** t)
        return c.server_lr * m / (v.sqrt() + c.tau)

    def step(self, key: str, delta: torch.Tensor, state: State, t: int) -> tuple[torch.Tensor, State]:
        """(step to add to the global tensor, new state entries) for one tensor; `delta` is float32."""
        raise NotImplementedError

    def accumulator(self, ctx: RoundContext, global_params: Params, state: State) -> Accumulator:
        expected, extras = self.expected_update(global_params)
        return MeanAccumulator(expected, extras, lambda avg: self.server_step(global_params, avg, state))

    def aggregate(self, ctx: RoundContext, global_params: Params, updates: Sequence[ClientUpdate],
                  state: State) -> Aggregate:
        return fold(self.accumulator(ctx, global_params, state), updates)

    def server_step(self, global_params: Params, avg: Params, state: State) -> Aggregate:
        """x_{t+1} = x_t + step(delta_t) per shared tensor, from the round's float64 weighted mean `avg`."""
        t = int(state["t"]) + 1
        new_params = dict(global_params)
        new_state: State = {"t": torch.tensor(t, dtype=torch.int64)}
        for k in [k for k in global_params if k in avg]:  # the global adapter's key order
            w = global_params[k]
            delta = (avg[k] - w.to(torch.float64)).to(torch.float32)
            step, entries = self.step(k, delta, state, t)
            new_params[k] = (w.to(torch.float32) + step).to(w.dtype)
            new_state.update(entries)
        return Aggregate(new_params, new_state)
