"""The strategy contract (v2, docs/architecture.md): round context, tasks down, updates up, a client plan with
per-round session hooks, per-client state, and a pure aggregation that may report metrics and a base delta; the
aggregation runs through an accumulator the round loop feeds one update at a time (buffering by default).

A strategy is one file: a config dataclass and a `Strategy` subclass registered together with `register(name,
ConfigClass)`; the config becomes the `[strategy.<name>]` table and `--strategy-opt key=value`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from fedit.registry import Registry
from fedit.strategies.accumulate import Accumulator, BufferingAccumulator
from fedit.types import ClientTask, ClientUpdate, Params

if TYPE_CHECKING:
    from fedit.model.base_delta import ModelFacts
    from fedit.model.lora import AdapterSlots

# Strategy state is a flat dict of tensors, so it saves to safetensors as is (scalars are 0-d tensors).
State = dict[str, torch.Tensor]


def _tag(part: int | str) -> int:
    """A stable integer for a purpose tag (strings hash the same in every process, unlike hash())."""
    if isinstance(part, int):
        return part
    return int.from_bytes(part.encode()[:8].ljust(8, b"\0"), "little")


@dataclass(frozen=True)
class RoundContext:
    """What a strategy knows about the round it configures and aggregates."""

    round: int
    seed: int
    num_clients: int
    sampled: tuple[int, ...]
    run_id: str = ""

    def rng(self, *purpose: int | str) -> np.random.Generator:
        """A generator for one purpose in this round, from (seed, round, purpose): replayed exactly on resume."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.round, *(_tag(p) for p in purpose)]))


@dataclass
class Aggregate:
    """What `Strategy.aggregate` returns: the new global adapter and state, metrics for metrics.jsonl, and a change
    to the frozen base weights (module weight name -> delta in that weight's layout) or None."""

    params: Params
    state: State
    metrics: dict[str, float] = field(default_factory=dict)
    base_delta: Params | None = None


class ClientSession:
    """One client's hooks for one round (all optional): the plan creates it from the task and the client's state."""

    def start(self, slots: AdapterSlots) -> None:
        """After the task's tensors are loaded, before the first step."""

    def penalty(self, slots: AdapterSlots) -> torch.Tensor | None:
        """A differentiable term added once to the loss of every optimizer step (on its last micro-batch, so its
        gradient is counted once however many micro-batches the step has; FedProx), or None."""
        return None

    def after_step(self, slots: AdapterSlots, lr: float) -> None:
        """Right after each optimizer step, with the lr that step used (SCAFFOLD's correction)."""

    def finish(self, start: Params, trained: Params) -> tuple[Params, Params, Params | None]:
        """(params to upload, extra tensors to upload, the client's new local state or None to keep it) from the
        shared tensors as they were loaded (`start`) and after training (`trained`)."""
        return trained, {}, None


class ClientPlan:
    """What every client does under a strategy; rebuilt from the config wherever clients train (Flower nodes)."""

    def trainable(self, key: str) -> bool:
        """Whether local training updates the adapter tensor `key`."""
        return True

    def shared(self, key: str) -> bool:
        """Whether `key` travels between server and clients (down in the task, up in the update)."""
        return True

    def session(self, task: ClientTask, local: Params) -> ClientSession:
        return ClientSession()


class Strategy:
    """Base class: broadcast the shared tensors, plain clients; subclasses override what their rule changes."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else self.config_class()

    # -- server side ---------------------------------------------------------------------------------------------
    def bind_model(self, facts: ModelFacts) -> None:
        """The server's adapted model (each LoRA module's scaling and layout, whether the base is quantized), given
        once it is built, before the run directory is made; a rule that needs it (FedEx-LoRA) keeps it, one that
        cannot work with this model raises ConfigError."""

    def init_state(self, params: Params, num_clients: int) -> State:
        """State before the first round."""
        return {}

    def shared_keys(self, params: Params) -> list[str]:
        plan = self.client_plan()
        return [k for k in params if plan.shared(k)]

    def configure(self, ctx: RoundContext, global_params: Params, state: State) -> dict[int, ClientTask]:
        """One task per sampled client; by default the same object for all (engines send it once per node)."""
        task = ClientTask({k: global_params[k] for k in self.shared_keys(global_params)})
        return dict.fromkeys(ctx.sampled, task)

    def expected_update(self, global_params: Params) -> tuple[Params, Params]:
        """Templates (keys, shapes, dtypes) of what a client must send back: (params, extras)."""
        return {k: global_params[k] for k in self.shared_keys(global_params)}, {}

    def accumulator(self, ctx: RoundContext, global_params: Params, state: State) -> Accumulator:
        """This round's aggregation in progress: the round loop `add`s each validated update as an engine delivers
        it (in arrival order) and takes `result()` once. The default buffers the updates and calls `aggregate` on
        them sorted by client id (memory O(K): right for rules that need every update, such as robust
        aggregators); a rule that can fold updates in one at a time (a weighted mean) overrides this with a
        `StreamingAccumulator` whose result does not depend on the order of the adds (strategies/accumulate.py)."""
        return BufferingAccumulator(lambda updates: self.aggregate(ctx, global_params, updates, state))

    def aggregate(self, ctx: RoundContext, global_params: Params, updates: Sequence[ClientUpdate],
                  state: State) -> Aggregate:
        """The new global adapter from this round's (validated, id-sorted) updates; must not mutate its inputs. A
        streaming strategy implements it as `fold(self.accumulator(...), updates)`."""
        raise NotImplementedError

    # -- client side ---------------------------------------------------------------------------------------------
    def client_plan(self) -> ClientPlan:
        return ClientPlan()


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def register(name: str, config_class: type) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: `@register("fedadam", FedAdamConfig)`; the config dataclass is the strategy's table."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        cls.config_class = config_class
        STRATEGIES.add(name, cls)
        return cls

    return deco


def config_checks(cfg: Any) -> Iterable[tuple[bool, str, Any, str]]:
    """A strategy config's own range checks, (ok, field, value, expected), if it defines `checks()`."""
    checks = getattr(cfg, "checks", None)
    return checks() if checks is not None else ()
