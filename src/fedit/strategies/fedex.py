"""FedEx-LoRA (Singhal, Ponkshe, Vepakomma 2024, arXiv 2410.09432, "Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models"): average A and B as FedAvg does, and fold what that leaves out into the frozen
base weights, so the global model is exactly the weighted mean of the clients' models.

    per LoRA module, with p_k = n_k / n over this round's clients and s its scaling (lora.alpha / lora.r):
    B_bar = sum_k p_k B_k ;  A_bar = sum_k p_k A_k ;  R = sum_k p_k B_k A_k - B_bar A_bar
    adapter <- (B_bar, A_bar) ;  W0 <- W0 + s R          (R^T for a fan_in_fan_out weight: GPT-2's Conv1D)

so W0' + s B_bar A_bar = W0 + s sum_k p_k B_k A_k. The residual is returned as `Aggregate.base_delta`, keyed by the
plain base model's weight name (`model.layers.0.self_attn.q_proj.weight`) in that weight's own layout; the round loop
adds it to the cumulative delta (float32) every client and the evaluated model are set to, and saves it beside each
round's adapter (`fedit_base_delta.safetensors`), which eval, export and serve apply. R is computed in float64 as one
product [p_1 B_1 .. p_K B_K, -B_bar] [A_1; ..; A_K; A_bar].

Deviations from the reference code (RaghavSinghal10/fedex-lora `fed_agg.py::aggregate_models_ours`): weights p_k by
examples, not the uniform mean; the residual is transposed only for fan_in_fan_out layers (the reference transposes
always, right for GPT-2's Conv1D, wrong for nn.Linear, unseen on its square symmetric cases). Plain averaging only:
no server optimizer is defined for this rule. The scaling and layout of each module come from the server's model
(`bind_model`, called by the pipeline before the run starts); a 4/8-bit quantized base is refused there. No settings.

Memory: FedEx-LoRA keeps the default buffering accumulator (all of a round's updates are held until it ends):
R needs sum_k p_k B_k A_k, which only a dense d_out x d_in accumulator per module could stream, at 16 bytes per
base weight element; on the adapters fedit trains the K updates are far smaller than that for any K a round has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedit.errors import AggregationError, ConfigError
from fedit.model.base_delta import ModelFacts
from fedit.strategies._math import check_updates, lora_pairs, weighted_average, weights
from fedit.strategies.base import Aggregate, RoundContext, State, Strategy, register
from fedit.types import ClientUpdate, Params


@dataclass
class FedExConfig:
    pass


def residual(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], p: Sequence[float]) -> torch.Tensor:
    """sum_k p_k B_k A_k - B_bar A_bar in float64 (d_out x d_in), from the clients' A_k (r x d_in), B_k (d_out x r)."""
    a64 = [x.to(torch.float64) for x in a]
    b64 = [x.to(torch.float64) for x in b]
    a_bar = sum(w * x for w, x in zip(p, a64, strict=True))
    b_bar = sum(w * x for w, x in zip(p, b64, strict=True))
    left = torch.cat([w * x for w, x in zip(p, b64, strict=True)] + [-b_bar], dim=1)
    right = torch.cat([*a64, a_bar], dim=0)
    return left @ right


@register("fedex", FedExConfig)
class FedExLoRA(Strategy):
    def __init__(self, cfg: FedExConfig | None = None, facts: ModelFacts | None = None) -> None:
        super().__init__(cfg)
        self.facts = facts

    def bind_model(self, facts: ModelFacts) -> None:
        if facts.quantized:
            raise ConfigError("strategy fedex changes the frozen base weights every round, which a 4/8-bit "
                              "quantized base cannot take exactly; set model.quantization to none or use another "
                              "strategy (ffa is exact too and leaves the base alone)")
        self.facts = facts

    def aggregate(self, ctx: RoundContext, global_params: Params, updates: Sequence[ClientUpdate],
                  state: State) -> Aggregate:
        expected, extras = self.expected_update(global_params)
        check_updates(expected, updates, extras)
        if self.facts is None:
            raise AggregationError("fedex needs each LoRA module's scaling and layout: bind the server's model first "
                                   "(strategy.bind_model(model_facts(peft_model)))")
        avg = weighted_average(updates)
        p = weights(updates)
        delta: Params = {}
        norm2 = 0.0
        for ka, kb in lora_pairs(global_params):
            prefix = ka.rsplit(".lora_A.", 1)[0]
            mod = self.facts.modules.get(prefix)
            if mod is None:
                raise AggregationError(f"fedex: the model has no LoRA module {prefix!r} (from payload key {ka!r})")
            r = mod.scaling * residual([u.params[ka] for u in updates], [u.params[kb] for u in updates], p)
            norm2 += float((r * r).sum())
            delta[mod.weight] = (r.T if mod.fan_in_fan_out else r).to(torch.float32).contiguous()
        params = global_params | {k: v.to(global_params[k].dtype) for k, v in avg.items()}
        return Aggregate(params, dict(state), {"residual_norm": norm2 ** 0.5}, delta)
