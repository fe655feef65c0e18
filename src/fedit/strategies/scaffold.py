"""SCAFFOLD (Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
Algorithm 1, option II), with fedit's AdamW as the local optimizer.

Server state: the control variate c (float32, shaped like each shared tensor) and N, the number of clients. Each
client i keeps its own c_i in its client state (zeros before its first round). In round t, for i in S:

    client:  y <- x;  for each optimizer step k (lr_k, the step's scheduled lr):
                 y <- AdamW_step(y)                        (gradient clipped by max_grad_norm, as without SCAFFOLD)
                 y <- y - lr_k * (c - c_i)                 (the correction, under no_grad, on every trained tensor)
             L = sum_k lr_k;   c_i+ = c_i - c + (x - y) / L
             upload y (params) and delta_c_i = c_i+ - c_i (extras);  c_i <- c_i+ (the client's new state)
    server:  x <- x + eta_g * sum_{i in S} p_i * (y_i - x)        p_i = n_i / sum_{j in S} n_j
             c <- c + (1 / N) * sum_{i in S} delta_c_i             (keeps c = (1/N) sum over all N clients of c_i)

Settings: server_lr (eta_g) 1.0, as in the paper; the local lr is the client's. Downlink x and c, uplink y and
delta_c_i: twice FedAvg's bytes. Per-client state: one adapter-sized float32 c_i per client, kept on disk.

The variant (stated because the paper's rule is for SGD): the correction is applied *decoupled*, after each AdamW
step, as OpenFedLLM and NVFlare do, not added to the gradient. Added to the gradient, it would be rescaled by Adam's
per-coordinate normaliser and partly absorbed into its moments, so the step would no longer move y by lr_k (c - c_i)
and (x - y) / L would not be what option II assumes. Decoupled, each step moves y by exactly its AdamW step plus
lr_k (c - c_i), so c_i+ is the lr-weighted mean AdamW step direction of client i (weight decay included), c their
mean over clients, and the correction replaces each client's own mean direction with the federation's. With SGD
it is the paper's y <- y - lr (g - c_i + c) (a test checks it bit for bit on exactly representable values); with a
schedule, L = sum_k lr_k is the paper's K * lr for a constant lr. The correction is applied once per optimizer step,
not per micro-batch. It is not clipped by max_grad_norm: clipping bounds the noisy minibatch gradient, while
c - c_i is a fixed estimate of the drift; clipping it would shrink the correction by a factor c_i+ does not know
about, biasing (x - y) / L and with it every later c_i and c.

Where fedit differs from peers: OpenFedLLM averages x by examples and c with 1/N as here, but assumes a constant lr
and exactly max_steps steps (L = K lr); NVFlare adds the weighted mean of delta_c_i to c without |S|/N, which is
right only when every client takes part. x is averaged by examples (as fedit's FedAvg; the paper uses the uniform
mean), while c is the uniform mean of the c_i (as the paper and OpenFedLLM): with clients of different sizes the
corrected clients all follow the uniform mean of the clients' directions, so SCAFFOLD drives the model towards a
stationary point of (1/N) sum_i f_i, not of the example-weighted objective FedAvg minimises (a test shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedit.errors import AggregationError
from fedit.strategies.accumulate import Accumulator, ExactSum, StreamingAccumulator, fold
from fedit.strategies.base import Aggregate, ClientPlan, ClientSession, RoundContext, State, Strategy, register
from fedit.types import ClientTask, ClientUpdate, Params

if TYPE_CHECKING:
    from fedit.model.lora import AdapterSlots


@dataclass
class ScaffoldConfig:
    server_lr: float = 1.0  # eta_g

    def checks(self):
        return [(self.server_lr > 0, "server_lr", self.server_lr, "a number > 0")]


class ScaffoldSession(ClientSession):
    """One client's round: the correction after every optimizer step, then c_i+ and delta_c_i from x and y."""

    def __init__(self, c: Params, c_i: Params) -> None:
        self.c = {k: v.to(torch.float32) for k, v in c.items()}
        self.c_i = {k: c_i[k].to(torch.float32) if k in c_i else torch.zeros_like(v, dtype=torch.float32)
                    for k, v in self.c.items()}
        self.lr_sum = 0.0  # L = sum_k lr_k
        self._correction: dict[str, torch.Tensor] = {}

    def start(self, slots: AdapterSlots) -> None:
        self.lr_sum = 0.0
        self._correction = {k: (self.c[k] - self.c_i[k]).to(slots.params[k].device)
                            for k in self.c if k in slots.params}

    @torch.no_grad()
    def after_step(self, slots: AdapterSlots, lr: float) -> None:
        for k, d in self._correction.items():
            slots.params[k].add_(d, alpha=-lr)  # y <- y - lr_k (c - c_i)
        self.lr_sum += lr

    def finish(self, start: Params, trained: Params) -> tuple[Params, Params, Params | None]:
        new_local: Params = {}
        delta_c: Params = {}
        for k, c in self.c.items():
            c_i = self.c_i[k]
            if self.lr_sum > 0:  # c_i+ = c_i - c + (x - y) / L, in float64
                drift = (start[k].to(torch.float64) - trained[k].to(torch.float64)) / self.lr_sum
                plus = (c_i.to(torch.float64) - c.to(torch.float64) + drift).to(torch.float32)
            else:  # no step moved y (every lr 0): nothing learnt about the client's direction
                plus = c_i.clone()
            new_local[k] = plus
            delta_c[k] = plus - c_i  # both float32: delta_c_i added to c_i gives back c_i+ as stored
        return trained, delta_c, new_local


class ScaffoldPlan(ClientPlan):
    def session(self, task: ClientTask, local: Params) -> ClientSession:
        return ScaffoldSession(task.extras, local)


def _c(key: str) -> str:
    return f"c.{key}"


@register("scaffold", ScaffoldConfig)
class Scaffold(Strategy):
    def init_state(self, params: Params, num_clients: int) -> State:
        state: State = {_c(k): torch.zeros_like(params[k], dtype=torch.float32) for k in self.shared_keys(params)}
        state["num_clients"] = torch.tensor(num_clients, dtype=torch.int64)
        return state

    def configure(self, ctx: RoundContext, global_params: Params, state: State) -> dict[int, ClientTask]:
        keys = self.shared_keys(global_params)
        task = ClientTask({k: global_params[k] for k in keys}, {k: state[_c(k)] for k in keys})
        return dict.fromkeys(ctx.sampled, task)

    def expected_update(self, global_params: Params) -> tuple[Params, Params]:
        keys = self.shared_keys(global_params)
        return ({k: global_params[k] for k in keys},
                {k: torch.zeros_like(global_params[k], dtype=torch.float32) for k in keys})

    def accumulator(self, ctx: RoundContext, global_params: Params, state: State) -> Accumulator:
        n = int(state["num_clients"])
        if n < 1 or ctx.num_clients != n:
            raise AggregationError(f"SCAFFOLD's state was made for {n} clients, this run has {ctx.num_clients}")
        expected, extras = self.expected_update(global_params)
        return ScaffoldAccumulator(self.cfg.server_lr, global_params, state, expected, extras)

    def aggregate(self, ctx: RoundContext, global_params: Params, updates: Sequence[ClientUpdate],
                  state: State) -> Aggregate:
        return fold(self.accumulator(ctx, global_params, state), updates)

    def client_plan(self) -> ClientPlan:
        return ScaffoldPlan()


class ScaffoldAccumulator(StreamingAccumulator):
    """Streams the round: the example-weighted sum of the y_i and the plain sum of the delta_c_i, each an
    order-independent exact sum (strategies/accumulate.py), so any arrival order gives the same bits."""

    def __init__(self, eta: float, global_params: Params, state: State, expected: Params, extras: Params) -> None:
        super().__init__(expected, extras)
        self.eta, self.global_params, self.state = eta, global_params, state
        self.y, self.dc = ExactSum(), ExactSum()

    def fold(self, update: ClientUpdate) -> None:
        self.y.add(update.params, update.num_examples)
        self.dc.add(update.extras)

    def finish(self) -> Aggregate:
        n = int(self.state["num_clients"])
        avg, total = self.y.mean(), self.dc.total()
        new_params = dict(self.global_params)
        new_state: State = {"num_clients": self.state["num_clients"].clone()}
        sq = 0.0
        for k in self.expected:
            x = self.global_params[k].to(torch.float64)
            new_params[k] = (x + self.eta * (avg[k] - x)).to(self.global_params[k].dtype)
            c = (self.state[_c(k)].to(torch.float64) + total[k] / n).to(torch.float32)
            new_state[_c(k)] = c
            sq += float((c.to(torch.float64) ** 2).sum())
        return Aggregate(new_params, new_state, {"c_norm": sq ** 0.5})
