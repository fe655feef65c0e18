"""`make_plan`: everything a run would check and load before its first round except the model weights, then the
plan: clients and their data after the length limit, tokens and bytes per round, adapter size, peak memory, and
(when the weights are on this machine) seconds per round from a few timed steps. Nothing is written to disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedit.config import Config
from fedit.data.lengths import LengthCounts, LengthReport
from fedit.data.tokenize import IGNORE_INDEX, TokenizedData
from fedit.errors import ConfigError
from fedit.plan.memory import MemoryEstimate, PeakBatch, current_rss, estimate_memory
from fedit.plan.model import ModelShape, model_shape
from fedit.plan.timing import CPU_TIMING_MAX_PARAMS, TIMED_STEPS, StepTiming, time_steps
from fedit.types import payload_bytes


@dataclass
class ClientLoad:
    """One client's share of a round when it is sampled."""

    client: int
    examples: int  # records assigned
    kept: int  # examples that train after the cutoff
    steps: int  # optimizer steps per round
    examples_per_round: int  # steps x batch_size (the data is cycled)
    tokens_per_round: int  # expected real tokens: examples_per_round x mean kept length
    label_tokens_per_round: int


@dataclass
class Plan:
    config: Config
    shape: ModelShape
    device: str
    lengths: LengthReport
    clients: list[ClientLoad]
    sampled: list[list[int]]  # per round (1-based rounds: sampled[0] is round 1)
    trainable_params: int
    bytes_down: int  # round 1, as the round loop counts them (every task's tensors)
    bytes_up: int
    memory: MemoryEstimate
    timing: StepTiming | None = None
    time_note: str = ""  # why there is no time estimate
    seconds: float = 0.0  # how long planning took
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per planning phase

    def round_tokens(self) -> list[int]:
        return [sum(self.clients[c].tokens_per_round for c in s) for s in self.sampled]

    def round_label_tokens(self) -> list[int]:
        return [sum(self.clients[c].label_tokens_per_round for c in s) for s in self.sampled]

    @property
    def seconds_per_round(self) -> float | None:
        """Local training of round 1's clients, one after another (the simulator), at the timed throughput."""
        if self.timing is None or self.timing.tokens_per_second <= 0:
            return None
        return self.round_tokens()[0] / self.timing.tokens_per_second

    def to_dict(self) -> dict[str, Any]:
        s, tokens, labels = self.shape, self.round_tokens(), self.round_label_tokens()
        return {
            "model": {"name": s.name, "model_type": s.model_type, "params": s.params, "dtype": str(s.dtype),
                      "quantization": self.config.model.quantization, "device": self.device, **s.dims,
                      "weights": s.weights, "weights_missing": s.weights_missing or None},
            "adapter": {"targets": s.targets, "modules": len(s.lora), "params": s.adapter_params,
                        "trainable_params": self.trainable_params, "bytes": payload_bytes(s.payload)},
            "clients": {"count": len(self.clients), "per_client": [vars(c) for c in self.clients]},
            "lengths": self.lengths.to_dict() | {"warning": self.lengths.warning()},
            "rounds": {"rounds": len(self.sampled), "clients_per_round": len(self.sampled[0]),
                       "round1_sampled": self.sampled[0], "round1_steps": sum(self.clients[c].steps
                                                                               for c in self.sampled[0]),
                       "tokens_per_round": _stats(tokens), "label_tokens_per_round": _stats(labels),
                       "tokens_total": int(sum(tokens))},
            "bytes_per_round": {"down": self.bytes_down, "up": self.bytes_up},
            "memory": self.memory.to_dict(),
            "time": {"estimated": self.timing is not None, "note": self.time_note or None,
                     "seconds_per_round": self.seconds_per_round,
                     **({"timing": self.timing.to_dict()} if self.timing is not None else {})},
            "plan_seconds": self.seconds,
            "phases": dict(self.phases),
            "notes": list(self.notes),
        }


def _stats(values: list[int]) -> dict[str, float]:
    return {"round1": float(values[0]), "mean": float(np.mean(values)), "min": float(min(values)),
            "max": float(max(values))}


def make_plan(cfg: Config, *, resume: str | Path | None = None, overwrite: bool = False,
              timed_steps: int = TIMED_STEPS, log: Callable[[str], None] | None = None) -> Plan:
    """Check the run as `pipeline.run` would (config, output directory, data, partition, strategy, model config,
    tokenizer, LoRA targets) and plan it; loads weights only to time `timed_steps` steps when they are local."""
    from fedit.data.templates import get_template
    from fedit.engines.simulation import ClientDataCache
    from fedit.model.load import load_tokenizer, pick_device, pick_dtype
    from fedit.pipeline import check_resume_config, prepare_data
    from fedit.server.checkpoint import RunStore
    from fedit.server.sampling import check_run_shape, sample_clients
    from fedit.strategies import build_strategy

    t0 = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = time.perf_counter() - t0 - sum(phases.values())

    cfg.validate()
    if cfg.data.source == "nodes":
        raise ConfigError("--dry-run needs the training data here; data.source = 'nodes' keeps it on the Flower "
                          "nodes (plan with the data, or a sample of it, on this machine)")
    if resume is not None:
        check_resume_config(Path(resume), cfg)
    elif cfg.run.out:
        RunStore(cfg.run.out).check_create(overwrite)
    data = prepare_data(cfg, log)
    phase("data")
    n = len(data.client_records)
    check_run_shape(cfg.run, n)
    strategy = build_strategy(cfg.strategy)
    device = pick_device(cfg.model.device)
    if cfg.model.quantization and device.type != "cuda":
        raise ConfigError(f"model.quantization={cfg.model.quantization!r} needs a CUDA GPU (bitsandbytes); "
                          f"this run's device is {device}")
    shape = model_shape(cfg, pick_dtype(cfg.model.dtype, device))
    strategy.bind_model(shape.facts)
    phase("model config")
    tokenizer = load_tokenizer(cfg.model.name)
    template = get_template(cfg.data.template, tokenizer)
    phase("tokenizer")
    cache = ClientDataCache(data.client_records, template, tokenizer, cfg)  # as the run tokenizes, once per client
    lengths = cache.length_report()
    tokenized = [cache.get(c) for c in range(n)]
    phase("tokenize")
    process = current_rss()  # torch, transformers, peft, the tokenizer and the data: what a run's process holds too

    clients = [_client_load(cfg, c, len(recs), t) for c, (recs, t) in
               enumerate(zip(data.client_records, tokenized, strict=True))]
    sampled = [sample_clients(cfg.run, n, r) for r in range(1, cfg.run.rounds + 1)]
    plan_rules = strategy.client_plan()
    trainable = sum(t.numel() for k, t in shape.payload.items() if plan_rules.trainable(k))
    down, up = _round_bytes(strategy, shape, cfg, sampled[0], n)
    memory = estimate_memory(shape, cfg, peak_batch(tokenized, cfg.client.micro_batch_size), trainable,
                             device.type if device.type == "cuda" else "cpu", process)
    plan = Plan(cfg, shape, str(device), lengths, clients, sampled, trainable, down, up, memory)
    plan.notes += [f"client {c.client} has no example left after the cutoff: it would fail when sampled"
                   for c in clients if c.kept == 0]
    phase("estimate")
    plan.timing, plan.time_note = _maybe_time(cfg, plan, strategy, tokenized, timed_steps)
    phase("timed steps")
    plan.phases, plan.seconds = phases, time.perf_counter() - t0
    return plan


def _client_load(cfg: Config, client: int, examples: int, data: TokenizedData) -> ClientLoad:
    from fedit.client.train import num_local_steps

    counts = data.counts or LengthCounts()
    if not len(data):
        return ClientLoad(client, examples, 0, 0, 0, 0, 0)
    steps = num_local_steps(cfg.client, len(data))
    seen = steps * cfg.client.batch_size
    return ClientLoad(client, examples, len(data), steps, seen, round(seen * counts.mean_tokens),
                      round(seen * counts.mean_label_tokens))


def _round_bytes(strategy: Any, shape: ModelShape, cfg: Config, sampled: list[int], n: int) -> tuple[int, int]:
    """Bytes down and up in round 1, counted on the strategy's own tasks and expected updates (meta tensors) as
    the round loop counts the real ones: every task's params and extras, every update's params and extras."""
    from fedit.strategies.base import RoundContext

    ctx = RoundContext(round=1, seed=cfg.run.seed, num_clients=n, sampled=tuple(sampled))
    tasks = strategy.configure(ctx, shape.payload, strategy.init_state(shape.payload, n))
    down = sum(payload_bytes(t.params) + payload_bytes(t.extras) for t in tasks.values())
    params, extras = strategy.expected_update(shape.payload)
    return down, len(sampled) * (payload_bytes(params) + payload_bytes(extras))


def peak_batch(tokenized: list[TokenizedData], micro_batch_size: int) -> PeakBatch:
    """The micro-batch with the most tokens (padded) any client can form: its longest examples together, as
    length grouping puts them."""
    best = PeakBatch(0, 0, 0)
    for data in tokenized:
        if not len(data):
            continue
        lengths = data.lengths
        top = np.argsort(-lengths, kind="stable")[:micro_batch_size]
        cand = PeakBatch(len(top), int(lengths[top[0]]),
                         sum(int((data.labels[i][1:] != IGNORE_INDEX).sum()) for i in top))
        if cand.rows * cand.width > best.rows * best.width:
            best = cand
    return best


def _maybe_time(cfg: Config, plan: Plan, strategy: Any, tokenized: list[TokenizedData],
                timed_steps: int) -> tuple[StepTiming | None, str]:
    shape = plan.shape
    if timed_steps <= 0:
        return None, "not estimated: timing was not asked for"
    if shape.weights is None:
        return None, f"not estimated: weights not loaded ({shape.weights_missing})"
    if plan.memory.device == "cpu" and shape.params > CPU_TIMING_MAX_PARAMS:
        return None, (f"not estimated: a CPU step of a {shape.params / 1e9:.1f}B-parameter model takes minutes; "
                      "time one round with --rounds 1 --clients-per-round 1")
    free = _available_memory(plan.memory.device)
    if free is not None and plan.memory.total > free:
        return None, (f"not estimated: the estimated peak ({plan.memory.total / 2**30:.1f} GiB) exceeds the free "
                      f"memory ({free / 2**30:.1f} GiB)")
    client = next((c for c in plan.sampled[0] if len(tokenized[c])), None)
    if client is None:
        return None, "not estimated: no client of round 1 has an example left after the cutoff"
    return time_steps(cfg, strategy, tokenized[client], client, len(tokenized), timed_steps), ""


def _available_memory(device: str) -> int | None:
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

