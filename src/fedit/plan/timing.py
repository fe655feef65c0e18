"""Time a few real optimizer steps (the run's own model, adapter, strategy plan and client code) to estimate the
seconds a round of local training takes; only when the weights are on this machine."""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass, replace
from typing import Any

from fedit.config import Config
from fedit.data.tokenize import TokenizedData

TIMED_STEPS = 3  # after one untimed warm-up step (first-call kernel selection, thread pools)
CPU_TIMING_MAX_PARAMS = 3_000_000_000  # beyond this a CPU step takes minutes: not timed on CPU


@dataclass
class StepTiming:
    steps: int
    seconds: float
    tokens: int  # real (unpadded) tokens in the timed steps
    client: int
    peak_rss: int  # this process's peak resident memory after the timed steps (bytes)
    load_seconds: float
    peak_gpu: int | None = None  # CUDA: the most GPU memory torch allocated (bytes)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": self.seconds, "tokens": self.tokens, "client": self.client,
                "seconds_per_step": self.seconds_per_step, "tokens_per_second": self.tokens_per_second,
                "peak_rss": self.peak_rss, "load_seconds": self.load_seconds, "peak_gpu": self.peak_gpu}


def time_steps(cfg: Config, strategy: Any, data: TokenizedData, client: int, num_clients: int,
               steps: int = TIMED_STEPS) -> StepTiming:
    """Load the model as a run does, and train `client` for one warm-up step and then `steps` timed ones exactly
    as in round 1 (its task from the strategy, its seeded batches)."""
    from fedit.client.train import train_task
    from fedit.pipeline import build_model
    from fedit.strategies.base import RoundContext

    t0 = time.perf_counter()
    bundle = build_model(cfg)
    load = time.perf_counter() - t0
    trainer = bundle.trainer
    params = trainer.slots.get()
    ctx = RoundContext(round=1, seed=cfg.run.seed, num_clients=num_clients, sampled=(client,))
    task = strategy.configure(ctx, params, strategy.init_state(params, num_clients))[client]
    plan = strategy.client_plan()

    def train(n: int) -> dict[str, float]:
        update, _ = train_task(trainer, task, data, replace(cfg.client, local_steps=n), client_id=client,
                               round_idx=1, seed=cfg.run.seed, plan=plan)
        return update.metrics

    train(1)
    m = train(steps)
    return StepTiming(steps, float(m["seconds"]), int(m["tokens"]), client, peak_rss(), load, _peak_gpu())


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def _peak_gpu() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
