"""Local training of one client: the same function serves the in-process simulator and the Flower ClientApp.

The base model stays loaded; only the LoRA payload is swapped in, trained with a fresh optimizer (as in FedIT), and
read back out. Data order, dropout and micro-batching are seeded by (run seed, round, client), so a round can be
replayed exactly after a resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedit.config import ClientConfig
from fedit.data.packing import collate_packed
from fedit.data.tokenize import IGNORE_INDEX, TokenizedData, collate, iter_micro_batches
from fedit.errors import ClientError
from fedit.model.base_delta import BaseWeights
from fedit.model.lora import AdapterSlots
from fedit.model.loss import label_token_nll
from fedit.model.precision import autocast
from fedit.strategies.base import ClientPlan, ClientSession
from fedit.types import ClientTask, ClientUpdate, Params, payload_problem

StepCallback = Callable[[int, int, float], None]  # (step, total_steps, loss)


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """A 63-bit seed unique to (run seed, round, client), stable across processes and machines."""
    return int(np.random.SeedSequence([seed, round_idx, client_id]).generate_state(2, dtype=np.uint64)[0] >> 1)


def num_local_steps(cfg: ClientConfig, num_examples: int) -> int:
    if cfg.local_steps is not None:
        return cfg.local_steps
    assert cfg.local_epochs is not None
    return max(1, math.ceil(cfg.local_epochs * num_examples / cfg.batch_size))


def lr_at(cfg: ClientConfig, step: int, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant" or total <= cfg.warmup_steps:
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class LocalTrainer:
    """Holds what stays loaded across clients and rounds: the PEFT model, its adapter slots, and the LoRA init
    (the same in every process for a given seed: what a client holds of tensors the server does not send)."""

    model: Any
    slots: AdapterSlots
    pad_id: int
    init: Params = field(default_factory=dict)
    base: BaseWeights | None = None  # the one keeper of this model's frozen base weights (W0 + a base delta)
    pack_len: int | None = None  # data.packing: each micro-batch packed into rows of up to this many tokens

    @classmethod
    def for_model(cls, peft_model: Any, tokenizer: Any) -> LocalTrainer:
        slots = AdapterSlots(peft_model)
        return cls(peft_model, slots, tokenizer.pad_token_id, slots.get(), BaseWeights(peft_model))


def train_client(trainer: LocalTrainer, global_params: Params, data: TokenizedData, cfg: ClientConfig, *,
                 client_id: int, round_idx: int, seed: int, on_step: StepCallback | None = None) -> ClientUpdate:
    """Plain local training (FedAvg's client) from a full payload: experiments and benchmarks use this."""
    return train_task(trainer, ClientTask(global_params), data, cfg, client_id=client_id, round_idx=round_idx,
                      seed=seed, on_step=on_step)[0]


def train_task(
    trainer: LocalTrainer,
    task: ClientTask,
    data: TokenizedData,
    cfg: ClientConfig,
    *,
    client_id: int,
    round_idx: int,
    seed: int,
    plan: ClientPlan | None = None,
    local: Params | None = None,
    on_step: StepCallback | None = None,
) -> tuple[ClientUpdate, Params | None]:
    """Train one client for one round under a strategy's plan; returns (the update, its new local state or None).

    The adapter starts as the LoRA init overridden by the task's tensors; the plan's session starts (it may load
    the client's own state), only the plan's trainable tensors are optimized, and the session's `finish` decides
    what is uploaded. The client checks its own result: an upload with a NaN or Inf is never sent (ClientError).
    """
    if len(data) == 0:
        raise ClientError(f"client {client_id} has no trainable examples (all were empty after the cutoff)")
    plan = plan or ClientPlan()
    model, slots = trainer.model, trainer.slots
    start = trainer.init | dict(task.params) if trainer.init else dict(task.params)
    slots.set(start)
    session = plan.session(task, local or {})
    session.start(slots)
    frozen = [p for k, p in slots.params.items() if not plan.trainable(k)]
    params = [p for k, p in slots.params.items() if plan.trainable(k)]
    if not params:
        raise ClientError(f"client {client_id}: the strategy trains no adapter tensor")
    for p in slots.params.values():  # a client that failed mid-step may have left gradients behind
        p.grad = None
    for p in frozen:
        p.requires_grad_(False)
    try:
        metrics = _train(trainer, params, session, data, cfg, client_id, round_idx, seed, on_step)
    finally:
        model.eval()
        for p in slots.params.values():
            p.grad = None
        for p in frozen:
            p.requires_grad_(True)
    trained = slots.get()
    shared = [k for k in trained if plan.shared(k)]
    upload, extras, new_local = session.finish({k: start[k] for k in shared}, {k: trained[k] for k in shared})
    for what, tensors in (("the update", upload), ("its extra tensors", extras), ("its new state", new_local or {})):
        bad = payload_problem(tensors, tensors)
        if bad is not None:
            raise ClientError(f"client {client_id}: after training in round {round_idx}, {bad} in {what}; it is "
                              "not sent (lower the lr or raise the precision)")
    return ClientUpdate(client_id, upload, len(data), metrics, extras), new_local


def _train(trainer: LocalTrainer, params: list[torch.nn.Parameter], session: ClientSession, data: TokenizedData,
           cfg: ClientConfig, client_id: int, round_idx: int, seed: int,
           on_step: StepCallback | None) -> dict[str, float]:
    model, slots = trainer.model, trainer.slots
    device = params[0].device
    cs = client_seed(seed, round_idx, client_id)
    rng = np.random.default_rng(cs)
    torch.manual_seed(cs)  # LoRA dropout
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda)
    accum = cfg.batch_size // cfg.micro_batch_size
    total = num_local_steps(cfg, len(data))
    batches = iter_micro_batches(data, cfg.micro_batch_size, rng, cfg.group_by_length)

    model.train()
    t0 = time.perf_counter()
    loss_sum, loss_tokens, real_tokens = 0.0, 0, 0
    for step in range(total):
        micro = [collate(data, next(batches), trainer.pad_id) if trainer.pack_len is None  # examples per micro-batch
                 else collate_packed(data, next(batches), trainer.pad_id, trainer.pack_len) for _ in range(accum)]
        # Counted on the CPU tensors, before any copy: no device sync. Normalise by the label tokens of the whole
        # optimizer batch: every token weighs the same, whatever micro-batch it landed in.
        step_tokens = sum(int((m["labels"][:, 1:] != IGNORE_INDEX).sum()) for m in micro)
        real_tokens += sum(int(m["attention_mask"].sum()) for m in micro)
        step_loss_t = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device, read once a step
        for i, m in enumerate(micro):
            m = {k: (v.pin_memory().to(device, non_blocking=True) if cuda else v.to(device)) for k, v in m.items()}
            with autocast(model):  # bf16 autocast over a bf16 base on CPU (fedit.model.precision), else nothing
                nll, _ = label_token_nll(model, m["input_ids"], m["attention_mask"], m["labels"],
                                         m.get("position_ids"))
            token_loss = nll.sum()
            loss = token_loss / max(1, step_tokens)
            if i == accum - 1:  # the strategy's term once per optimizer step (FedProx's proximal term), not per micro
                term = session.penalty(slots)
                if term is not None:
                    loss = loss + term
            loss.backward()
            step_loss_t += token_loss.detach().to(torch.float64)
        step_loss = float(step_loss_t)  # the one host sync of the step
        lr = lr_at(cfg, step, total)
        for group in opt.param_groups:
            group["lr"] = lr
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        session.after_step(slots, lr)
        loss_sum += step_loss
        loss_tokens += step_tokens
        if on_step is not None:
            on_step(step + 1, total, step_loss / max(1, step_tokens))
    if not math.isfinite(loss_sum):
        raise ClientError(f"client {client_id}: training loss became {loss_sum} in round {round_idx}; lower the lr")
    seconds = time.perf_counter() - t0
    return {
        "loss": loss_sum / max(1, loss_tokens),
        "steps": float(total),
        "tokens": float(real_tokens),
        "label_tokens": float(loss_tokens),
        "seconds": seconds,
        "tokens_per_s": real_tokens / seconds if seconds > 0 else 0.0,
    }
