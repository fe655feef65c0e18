"""In-process simulator: one base model in memory, each sampled client's adapter swapped in, trained, read out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fedit.client.train import LocalTrainer, train_task
from fedit.config import Config
from fedit.data.lengths import LengthCounts, LengthReport
from fedit.data.records import Record
from fedit.data.templates import Template
from fedit.data.tokenize import TokenizedData, tokenize_records
from fedit.engines.base import ClientProgress, RoundOutcome, UpdateSink
from fedit.errors import FeditError
from fedit.faults import FaultPlan
from fedit.model.base_delta import BaseWeights
from fedit.strategies.base import ClientPlan, RoundContext
from fedit.types import ClientTask, Params
from fedit.wire import WireError, WireFormat, receive_tasks, round_trip_update, send_tasks


class ClientDataCache:
    """Tokenizes a client's records the first time it is sampled and keeps the result for later rounds."""

    def __init__(self, client_records: Sequence[Sequence[Record]], template: Template, tokenizer: Any,
                 cfg: Config) -> None:
        self.client_records = client_records
        self.template, self.tokenizer, self.cfg = template, tokenizer, cfg
        self._cache: dict[int, TokenizedData] = {}

    def __len__(self) -> int:
        return len(self.client_records)

    def get(self, client_id: int) -> TokenizedData:
        if client_id not in self._cache:
            d = self.cfg.data
            self._cache[client_id] = tokenize_records(self.client_records[client_id], self.template, self.tokenizer,
                                                      d.cutoff_len, d.train_on_inputs, d.add_eos)
        return self._cache[client_id]

    def length_report(self) -> LengthReport:
        """Tokenizes every client now (each once, kept for training) and reports what data.cutoff_len did to each
        client's examples (kept whole, truncated, dropped), so the run can warn before its first round."""
        return LengthReport(self.cfg.data.cutoff_len,
                            {str(c): self.get(c).counts or LengthCounts() for c in range(len(self))})


class SimulationEngine:
    """Trains the sampled clients one after another in this process; one client's failure (a fedit error or any
    other exception: an out-of-memory, a peft error) drops that client only. Injected faults (`run.faults`) act
    here as they act on a Flower node: before and after the client's local training. Clients' own state is read
    through `load_state(client, round)` (the copy saved with the last round whose update from that client was
    accepted, `task.config["state_round"]`) and returned in the outcome, to be saved with this round. Tasks and
    updates go through the same wire encoding as on Flower (fedit.wire, `run.wire_dtype`)."""

    def __init__(self, trainer: LocalTrainer, data: ClientDataCache, cfg: Config, plan: ClientPlan | None = None,
                 load_state: Callable[[int, int], Params] | None = None) -> None:
        self.trainer, self.data, self.cfg = trainer, data, cfg
        self.plan = plan or ClientPlan()
        self.load_state = load_state or (lambda _cid, _round: {})
        self.num_clients = len(data)
        self.faults = FaultPlan(cfg.run.faults)
        self.base = trainer.base or BaseWeights(trainer.model)
        self.wire = WireFormat.of(cfg.run)

    def set_base_delta(self, delta: Params) -> None:
        self.base.apply(delta)

    def train_round(self, ctx: RoundContext, tasks: dict[int, ClientTask], progress: ClientProgress | None = None,
                    sink: UpdateSink | None = None) -> RoundOutcome:
        outcome = RoundOutcome(updates=[])
        tasks = receive_tasks(send_tasks(tasks, self.wire), self.wire)  # what a Flower client would train from
        for cid, task in sorted(tasks.items()):
            on_step = (lambda s, t, loss, cid=cid: progress(cid, s, t, loss)) if progress else None
            if self.faults.hangs(ctx.round, cid):
                outcome.failures[cid] = "did not reply (injected fault: hang)"
                continue
            try:
                self.faults.before_training(ctx.round, cid)
                loaded = self.load_state(cid, int(task.config.get("state_round", 0)))
                update, local = train_task(self.trainer, task, self.data.get(cid), self.cfg.client, client_id=cid,
                                           round_idx=ctx.round, seed=self.cfg.run.seed, plan=self.plan,
                                           local=loaded, on_step=on_step)
            except FeditError as e:
                outcome.failures[cid] = str(e)
                continue
            except Exception as e:  # noqa: BLE001 - any crash of one client is that client's failure
                outcome.failures[cid] = f"{type(e).__name__}: {e}"
                _release_device_memory()
                continue
            try:  # encoded and decoded as on Flower (run.wire_dtype; float32: unchanged)
                update = round_trip_update(self.faults.after_training(update, ctx.round), task, self.wire)
            except WireError as e:
                outcome.failures[cid] = f"update could not be decoded: {e}"
                continue
            if sink is not None:  # folded at once; nothing of it is kept here
                sink(update)
            else:
                outcome.updates.append(update)
            del update
            kept = local if local is not None else loaded  # None: the state stays as it was (saved again)
            if kept:
                outcome.client_state[cid] = kept
        return outcome

    def close(self) -> None:
        pass


def _release_device_memory() -> None:
    """After a failed client (often an out-of-memory), hand cached accelerator memory back before the next one."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
