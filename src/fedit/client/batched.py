"""Batched clients (issue 14, item 9; an experiment): K sampled clients trained together on the one loaded base.

Every optimizer step concatenates the K clients' micro-batches (right-padded to the widest) into one forward and one
backward through the frozen base; in each LoRA layer, the rows of client k get client k's own A and B. With equal
row counts the K adapters are stacked and the LoRA term is two batched matmuls over the client axis; otherwise each
client's rows (a contiguous block) take their own two matmuls.

Equivalence with sequential `train_task` (plain plan): each client keeps its own leaf tensors and its own fresh
torch AdamW, so the optimizer, the per-client lr schedule and the grad-norm clipping (over that client's tensors
only) are exactly the sequential ones. The loss is the sum over clients of each client's label-token NLL divided by
ITS OWN optimizer batch's label tokens; rows never mix (attention stays inside a row and the base is frozen), so
client k's gradients come only from client k's loss. Data order comes from each client's seeded numpy generator as
in sequential training, and LoRA dropout masks from a per-client torch generator with the client's seed, drawn in
the client's own padded width: on CPU the masks are bit-identical to sequential training's. A client whose steps
are done leaves the batch (its rows are no longer fed, its optimizer no longer steps); the others go on. What
differs from sequential is only the floating-point summation order (wider padding, bigger GEMMs), so results agree
to rounding (tests/client/test_batched.py states the tolerance).

Limits: only the plain client plan (FedAvg-style: every tensor trained and shared, no session hooks), vanilla LoRA
layers (no DoRA or other variants), no autocast. `fedit.bench.batched` measures whether it pays.
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedit.client.train import LocalTrainer, client_seed, lr_at, num_local_steps
from fedit.config import ClientConfig
from fedit.data.tokenize import IGNORE_INDEX, TokenizedData, collate, iter_micro_batches
from fedit.errors import ClientError
from fedit.model.loss import label_token_nll
from fedit.model.precision import autocast
from fedit.strategies.base import ClientPlan
from fedit.types import ClientTask, ClientUpdate, Params, payload_problem


@dataclass
class BatchedJob:
    """One client of a batched group: its id, its task from the server and its tokenized data."""

    client_id: int
    task: ClientTask
    data: TokenizedData


@dataclass
class _Module:
    """One LoRA layer of the live model: its payload keys and what its forward needs."""

    name: str
    key_a: str
    key_b: str
    scaling: float
    dropout: float


@dataclass
class _Batch:
    """State the patched LoRA forwards read: which rows belong to which client slot, and each slot's tensors."""

    weights: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per slot: payload key -> leaf tensor
    generators: list[torch.Generator] = field(default_factory=list)  # per slot: LoRA dropout masks
    segments: list[tuple[int, int, int, int]] = field(default_factory=list)  # (slot, first row, end row, own width)
    stacked: bool = False  # all segments hold the same number of rows


def plain_plan(plan: ClientPlan | None) -> bool:
    """Whether batched training can stand in for `train_task` under `plan`: only the plain plan (every tensor
    trained and shared, a session without hooks) is supported."""
    return plan is None or type(plan) is ClientPlan


def lora_modules(trainer: LocalTrainer) -> list[tuple[Any, _Module]]:
    """The live model's LoRA layers with the payload keys of their A and B (found by parameter identity)."""
    by_param = {id(p): k for k, p in trainer.slots.params.items()}
    out: list[tuple[Any, _Module]] = []
    for name, mod in trainer.model.named_modules():
        lora_a = getattr(mod, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a:
            continue
        if getattr(mod, "lora_variant", {}).get("default") is not None:
            raise ClientError(f"batched clients support vanilla LoRA only; {name} uses a LoRA variant")
        key_a, key_b = by_param.get(id(lora_a["default"].weight)), by_param.get(id(mod.lora_B["default"].weight))
        if key_a is None or key_b is None:
            raise ClientError(f"batched clients: cannot map the LoRA layer {name} to adapter payload keys")
        # p of peft's nn.Dropout or fedit's MaskDropout (nn.Identity: none); the rows' masks are drawn as
        # nn.Dropout draws them, so only a model on peft's masks trains bit-equal to sequential clients
        p = float(getattr(mod.lora_dropout["default"], "p", 0.0))
        out.append((mod, _Module(name, key_a, key_b, float(mod.scaling["default"]), p)))
    return out


def _dropout(x: torch.Tensor, p: float, width: int, gen: torch.Generator) -> torch.Tensor:
    """LoRA dropout of one client's rows with that client's generator, the mask drawn in the client's own width
    (`width` <= x.shape[1]) exactly as `torch.nn.functional.dropout` draws it on CPU; pad columns beyond stay."""
    noise = torch.empty_like(x[:, :width]).bernoulli_(1.0 - p, generator=gen).div_(1.0 - p)
    if width < x.shape[1]:
        noise = torch.cat([noise, noise.new_ones(x.shape[0], x.shape[1] - width, *x.shape[2:])], dim=1)
    return x * noise


def _batched_forward(batch: _Batch, info: _Module) -> Any:
    """A forward for one peft LoRA Linear: the base layer on all rows, plus each client's LoRA term on its rows."""

    def forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        a0 = batch.weights[batch.segments[0][0]][info.key_a]
        x = x.to(a0.dtype)
        parts = []
        for slot, lo, hi, width in batch.segments:
            xs = x[lo:hi]
            if info.dropout > 0 and self.training:
                xs = _dropout(xs, info.dropout, width, batch.generators[slot])
            parts.append(xs)
        if batch.stacked:
            a = torch.stack([batch.weights[s][info.key_a] for s, *_ in batch.segments])  # [K, r, in]
            b = torch.stack([batch.weights[s][info.key_b] for s, *_ in batch.segments])  # [K, out, r]
            xk = torch.stack(parts).flatten(1, -2)  # [K, rows * width, in]
            delta = torch.bmm(torch.bmm(xk, a.transpose(1, 2)), b.transpose(1, 2))
            delta = delta.reshape(*x.shape[:-1], delta.shape[-1])
        else:
            delta = torch.cat([torch.nn.functional.linear(torch.nn.functional.linear(
                xs, batch.weights[s][info.key_a]), batch.weights[s][info.key_b]) for xs, (s, *_) in
                zip(parts, batch.segments, strict=True)])
        return (result + delta * info.scaling).to(result.dtype)

    return forward


@contextmanager
def batched_lora(trainer: LocalTrainer, batch: _Batch) -> Iterator[list[_Module]]:
    """Route every LoRA layer of the live model through `batch` (per-client A and B by row) for the block's
    duration; the forwards they had (peft's or the fused one) come back on exit."""
    modules = lora_modules(trainer)
    before = [mod.__dict__.get("forward") for mod, _ in modules]  # fedit.model.fused_lora's, or none (peft's)
    for mod, info in modules:
        mod.forward = types.MethodType(_batched_forward(batch, info), mod)
    try:
        yield [info for _, info in modules]
    finally:
        for (mod, _), fwd in zip(modules, before, strict=True):
            if fwd is None:
                del mod.forward  # the instance attribute goes; the class's forward shows again
            else:
                mod.forward = fwd


def concat_micro(parts: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """One micro-batch from several clients' (rows in order), right-padded to the widest."""
    width = max(p["input_ids"].shape[1] for p in parts)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    return {k: torch.cat([torch.nn.functional.pad(p[k], (0, width - p[k].shape[1]), value=v) for p in parts])
            for k, v in fill.items()}


@dataclass
class _ClientRun:
    job: BatchedJob
    start: Params
    weights: dict[str, torch.nn.Parameter]
    opt: torch.optim.Optimizer
    batches: Iterator[np.ndarray]
    total: int
    loss_sum: float = 0.0
    loss_tokens: int = 0
    real_tokens: int = 0


def train_batched(trainer: LocalTrainer, jobs: Sequence[BatchedJob], cfg: ClientConfig, *, round_idx: int,
                  seed: int, plan: ClientPlan | None = None, sort_in_step: bool = False) -> list[ClientUpdate]:
    """Train `jobs` together (plain plan only); returns one update per job, in order, as `train_task` would
    (each client's `seconds` is the group's wall time, its `tokens_per_s` its own tokens over that time).

    `sort_in_step` (with gradient accumulation): each client's micro-batches of a step are taken longest first, so
    the clients' micro-batches that share a forward have similar widths (less padding). The step's gradient is the
    same sum in another order (rounding aside); LoRA dropout masks are then drawn in another order than sequential
    training's (the same distribution, other draws)."""
    if not plain_plan(plan):
        raise ClientError(f"batched clients support the plain client plan only, not {type(plan).__name__}")
    for job in jobs:
        if len(job.data) == 0:
            raise ClientError(f"client {job.client_id} has no trainable examples (all were empty after the cutoff)")
    model, device = trainer.model, next(iter(trainer.slots.params.values())).device
    runs: list[_ClientRun] = []
    batch = _Batch()
    for job in jobs:
        start = trainer.init | dict(job.task.params) if trainer.init else dict(job.task.params)
        weights = {k: torch.nn.Parameter(start[k].detach().to(device=device, dtype=p.dtype, copy=True))
                   for k, p in trainer.slots.params.items()}
        cs = client_seed(seed, round_idx, job.client_id)
        rng = np.random.default_rng(cs)
        runs.append(_ClientRun(job, start, weights, torch.optim.AdamW(list(weights.values()), lr=cfg.lr,
                                                                      weight_decay=cfg.weight_decay),
                               iter_micro_batches(job.data, cfg.micro_batch_size, rng, cfg.group_by_length),
                               num_local_steps(cfg, len(job.data))))
        batch.weights.append(weights)
        batch.generators.append(torch.Generator(device=device).manual_seed(cs))
    accum = cfg.batch_size // cfg.micro_batch_size
    t0 = time.perf_counter()
    model.train()
    try:
        with batched_lora(trainer, batch):
            for step in range(max(r.total for r in runs)):
                _step(trainer, runs, batch, cfg, step, accum, device, sort_in_step)
    finally:
        model.eval()
    seconds = time.perf_counter() - t0
    updates = []
    for r in runs:
        cid = r.job.client_id
        if not math.isfinite(r.loss_sum):
            raise ClientError(f"client {cid}: training loss became {r.loss_sum} in round {round_idx}; lower the lr")
        trained = {k: w.detach().to("cpu", copy=True) for k, w in r.weights.items()}
        upload = {k: trained[k] for k in r.start}
        bad = payload_problem(upload, upload)
        if bad is not None:
            raise ClientError(f"client {cid}: after training in round {round_idx}, {bad} in the update; it is not "
                              "sent (lower the lr or raise the precision)")
        metrics = {"loss": r.loss_sum / max(1, r.loss_tokens), "steps": float(r.total),
                   "tokens": float(r.real_tokens), "label_tokens": float(r.loss_tokens), "seconds": seconds,
                   "tokens_per_s": r.real_tokens / seconds if seconds > 0 else 0.0}
        updates.append(ClientUpdate(cid, upload, len(r.job.data), metrics))
    return updates


def _step(trainer: LocalTrainer, runs: list[_ClientRun], batch: _Batch, cfg: ClientConfig, step: int, accum: int,
          device: torch.device, sort_in_step: bool) -> None:
    """One optimizer step of every client that still has steps to take."""
    active = [i for i, r in enumerate(runs) if step < r.total]
    micro = {i: [collate(runs[i].job.data, next(runs[i].batches), trainer.pad_id) for _ in range(accum)]
             for i in active}
    if sort_in_step:
        for parts in micro.values():
            parts.sort(key=lambda m: -m["input_ids"].shape[1])
    step_tokens = {i: sum(int((m["labels"][:, 1:] != IGNORE_INDEX).sum()) for m in micro[i]) for i in active}
    step_loss = {i: torch.zeros((), device=device) for i in active}
    for j in range(accum):
        parts = [micro[i][j] for i in active]
        batch.segments, row = [], 0
        for i, p in zip(active, parts, strict=True):
            n = p["input_ids"].shape[0]
            batch.segments.append((i, row, row + n, p["input_ids"].shape[1]))
            row += n
        batch.stacked = len({hi - lo for _, lo, hi, _ in batch.segments}) == 1
        counts = [int((p["labels"][:, 1:] != IGNORE_INDEX).sum()) for p in parts]
        m = {k: v.to(device) for k, v in concat_micro(parts, trainer.pad_id).items()}
        with autocast(trainer.model):  # the precision train_client uses (bf16 autocast over a bf16 CPU base)
            nll, _ = label_token_nll(trainer.model, m["input_ids"], m["attention_mask"], m["labels"])
        loss = nll.new_zeros(())
        for i, tokens in zip(active, nll.split(counts), strict=True):  # label tokens come row by row
            token_loss = tokens.sum()
            loss = loss + token_loss / max(1, step_tokens[i])
            step_loss[i] += token_loss.detach()
        loss.backward()
        for i, p in zip(active, parts, strict=True):
            runs[i].real_tokens += int(p["attention_mask"].sum())
    for i in active:
        r = runs[i]
        for group in r.opt.param_groups:
            group["lr"] = lr_at(cfg, step, r.total)
        params = list(r.weights.values())
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        r.opt.step()
        r.opt.zero_grad(set_to_none=True)
        r.loss_sum += float(step_loss[i])
        r.loss_tokens += step_tokens[i]
