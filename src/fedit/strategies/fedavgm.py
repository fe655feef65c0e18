"""FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification"; Reddi et al., ICLR 2021, Algorithm 1 with SGD + momentum as ServerOpt): heavy-ball momentum on
the server, on the pseudo-gradient g_t = -delta_t.

    delta_t = sum_k (n_k / n) * w_k - x_t                 (the weighted mean client change)
    v_t     = beta * v_{t-1} + g_t                         (v starts at 0, so v_1 = g_1)
    x_{t+1} = x_t - eta * v_t                              (heavy ball, as Flower's FedAvgM)
    x_{t+1} = x_t - eta * (g_t + beta * v_t)               (with nesterov = true: torch.optim.SGD's Nesterov form)

Settings: server_lr (eta) 0.1, momentum (beta) 0.9, nesterov false. With a steady pseudo-gradient the step tends
to eta / (1 - beta) times FedAvg's, so the defaults give FedAvg's step size once the momentum has built up, with
its smoothing across rounds; eta 1 with beta 0.9 (Hsu et al.'s CNN setting) takes 10x FedAvg's steps, and on the
built-in suite it diverged (held-out score 0.009 vs FedAvg's 0.927; docs/results.md). With momentum 0 and
server_lr 1 this is FedAvg (to float32 rounding). State: `v.<key>` (float32, per shared tensor) and `t`.

Peers: Flower's FedAvgM has the same rule, defaults to momentum 0 (plain FedAvg) and has no Nesterov option (Hsu et
al. used Nesterov momentum; Flower PR #2762). OpenFedLLM keeps an EMA instead, m_t = beta m_{t-1} + (1 - beta)
delta_t with m_1 = delta_1, and x += m_t: that is heavy ball with eta = 1 - beta (m = -(1 - beta) v), this rule's
defaults, plus a warm start (its first step is delta_1, here 0.1 delta_1; the difference decays as beta^t).
fedit weights the mean change by examples (as FedAvg), the paper by clients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedit.strategies.base import State, register
from fedit.strategies.fedopt import FedOpt


@dataclass
class FedAvgMConfig:
    server_lr: float = 0.1  # eta; the steady-state step is eta / (1 - momentum) x FedAvg's
    momentum: float = 0.9  # beta
    nesterov: bool = False

    def checks(self):
        return [(self.server_lr > 0, "server_lr", self.server_lr, "a number > 0"),
                (0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")]


@register("fedavgm", FedAvgMConfig)
class FedAvgM(FedOpt):
    moments = ("v",)

    def step(self, key: str, delta: torch.Tensor, state: State, t: int) -> tuple[torch.Tensor, State]:
        c = self.cfg
        g = -delta
        v = c.momentum * state[f"v.{key}"] + g
        direction = g + c.momentum * v if c.nesterov else v
        return -c.server_lr * direction, {f"v.{key}": v}
