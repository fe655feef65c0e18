"""FedAdam (Reddi et al., ICLR 2021, "Adaptive Federated Optimization", Algorithm 2), a server-side Adam step.

    delta_t = sum_k (n_k / n) * w_k - x_t              (pseudo-gradient, the weighted mean client change)
    m_t     = beta1 * m_{t-1} + (1 - beta1) * delta_t
    v_t     = beta2 * v_{t-1} + (1 - beta2) * delta_t^2
    x_{t+1} = x_t + eta * m_hat / (sqrt(v_hat) + tau)

with m_hat = m_t, v_hat = v_t as in the paper, or, with `bias_correction = true`, m_hat = m_t / (1 - beta1^t) and
v_hat = v_t / (1 - beta2^t), t the number of server steps including this one (counted from 1; Flower's FedAdam
counts from 2 and so scales its first step by 0.74 instead of 1). m and v start at zero, live in the state and
are checkpointed with every round. Settings: server_lr (eta) 1e-2, beta1 0.9, beta2 0.99, tau 1e-3, bias_correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedit.strategies.base import State, register
from fedit.strategies.fedopt import FedOpt


@dataclass
class FedAdamConfig:
    server_lr: float = 1e-2  # eta
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: keeps the step finite where v = 0
    bias_correction: bool = False

    def checks(self):
        return [(self.server_lr > 0, "server_lr", self.server_lr, "a number > 0"),
                (0 <= self.beta1 < 1, "beta1", self.beta1, "a number in [0, 1)"),
                (0 <= self.beta2 < 1, "beta2", self.beta2, "a number in [0, 1)"),
                (self.tau > 0, "tau", self.tau, "a number > 0 (it keeps the step finite where v = 0)")]


@register("fedadam", FedAdamConfig)
class FedAdam(FedOpt):
    moments = ("m", "v")

    def step(self, key: str, delta: torch.Tensor, state: State, t: int) -> tuple[torch.Tensor, State]:
        c = self.cfg
        m = c.beta1 * state[f"m.{key}"] + (1 - c.beta1) * delta
        v = c.beta2 * state[f"v.{key}"] + (1 - c.beta2) * delta * delta
        return self.adaptive_step(m, v, t), {f"m.{key}": m, f"v.{key}": v}
