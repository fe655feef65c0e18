"""FedYogi (Reddi et al., ICLR 2021, "Adaptive Federated Optimization", Algorithm 2; Yogi: Zaheer et al., NeurIPS
2018), a server-side Yogi step.

    delta_t = sum_k (n_k / n) * w_k - x_t                 (the weighted mean client change)
    m_t     = beta1 * m_{t-1} + (1 - beta1) * delta_t
    v_t     = v_{t-1} - (1 - beta2) * delta_t^2 * sign(v_{t-1} - delta_t^2)     (v_0 = v_init, 1e-6 = tau^2 by default)
    x_{t+1} = x_t + eta * m_hat / (sqrt(v_hat) + tau)

with m_hat = m_t, v_hat = v_t as in the paper, or, with `bias_correction = true`, m_hat = m_t / (1 - beta1^t),
v_hat = v_t / (1 - beta2^t), t the server steps including this one, from 1 (as TFF's Yogi; v_init is then scaled
with the rest of v, as TFF's initial preconditioner is). Adam moves v by (1 - beta2)(delta^2 - v), Yogi by
(1 - beta2) delta^2 in the same direction: the two agree only where v is 0, delta^2 or 2 delta^2 (so at round 1
with v_init = 0); where delta^2 < v / 2, Yogi shrinks v more slowly (a more cautious step after large changes).

Settings: server_lr (eta) 1e-2, beta1 0.9, beta2 0.99, tau 1e-3, v_init 1e-6 (tau^2: raise it with tau; 0 gives
Flower's v_0), bias_correction false. State: `m.<key>`, `v.<key>` (float32) and `t`.

Peers: Flower's FedYogi has the same rule with v_0 = 0 and no bias correction; TFF's `build_yogi` has beta2 0.999
and bias correction; OpenFedLLM updates v with m_t^2 instead of delta_t^2 and takes the unweighted mean change.
fedit weights delta by examples, as its FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedit.strategies.base import State, register
from fedit.strategies.fedopt import FedOpt


@dataclass
class FedYogiConfig:
    server_lr: float = 1e-2  # eta
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: keeps the step finite where v = 0
    v_init: float = 1e-6  # v_0: tau^2 for the default tau (Algorithm 2 asks v_0 >= tau^2); 0 is Flower's
    bias_correction: bool = False

    def checks(self):
        return [(self.server_lr > 0, "server_lr", self.server_lr, "a number > 0"),
                (0 <= self.beta1 < 1, "beta1", self.beta1, "a number in [0, 1)"),
                (0 <= self.beta2 < 1, "beta2", self.beta2, "a number in [0, 1)"),
                (self.tau > 0, "tau", self.tau, "a number > 0 (it keeps the step finite where v = 0)"),
                (self.v_init >= 0, "v_init", self.v_init, "a number >= 0")]


@register("fedyogi", FedYogiConfig)
class FedYogi(FedOpt):
    moments = ("m", "v")

    def step(self, key: str, delta: torch.Tensor, state: State, t: int) -> tuple[torch.Tensor, State]:
        c = self.cfg
        m = c.beta1 * state[f"m.{key}"] + (1 - c.beta1) * delta
        d2 = delta * delta
        v_prev = state[f"v.{key}"]
        v = v_prev - (1 - c.beta2) * d2 * torch.sign(v_prev - d2)
        return self.adaptive_step(m, v, t), {f"m.{key}": m, f"v.{key}": v}
