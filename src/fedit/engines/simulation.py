"""In-process simulator: one base model in memory, each sampled client's adapter swapped in, trained, read out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedit.client.objectives import ClientObjective
from fedit.client.train import LocalTrainer, train_client
from fedit.config import Config
from fedit.data.records import Record
from fedit.data.templates import Template
from fedit.data.tokenize import TokenizedData, tokenize_records
from fedit.engines.base import ClientProgress, RoundOutcome
from fedit.errors import FeditError
from fedit.faults import FaultPlan
from fedit.types import Params


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


class SimulationEngine:
    """Trains the sampled clients one after another in this process; one client's failure (a fedit error or any
    other exception: an out-of-memory, a peft error) drops that client only. Injected faults (`run.faults`) act
    here as they act on a Flower node: before and after the client's local training."""

    def __init__(self, trainer: LocalTrainer, data: ClientDataCache, cfg: Config) -> None:
        self.trainer, self.data, self.cfg = trainer, data, cfg
        self.num_clients = len(data)
        self.faults = FaultPlan(cfg.run.faults)

    def train_round(self, round_idx: int, client_ids: list[int], global_params: Params,
                    objective: ClientObjective | None, progress: ClientProgress | None = None) -> RoundOutcome:
        outcome = RoundOutcome(updates=[])
        for cid in client_ids:
            on_step = (lambda s, t, loss, cid=cid: progress(cid, s, t, loss)) if progress else None
            if self.faults.hangs(round_idx, cid):
                outcome.failures[cid] = "did not reply (injected fault: hang)"
                continue
            try:
                self.faults.before_training(round_idx, cid)
                update = train_client(self.trainer, global_params, self.data.get(cid), self.cfg.client,
                                      client_id=cid, round_idx=round_idx, seed=self.cfg.run.seed,
                                      objective=objective, on_step=on_step)
            except FeditError as e:
                outcome.failures[cid] = str(e)
                continue
            except Exception as e:  # noqa: BLE001 - any crash of one client is that client's failure
                outcome.failures[cid] = f"{type(e).__name__}: {e}"
                _release_device_memory()
                continue
            outcome.updates.append(self.faults.after_training(update, round_idx))
        return outcome

    def close(self) -> None:
        pass


def _release_device_memory() -> None:
    """After a failed client (often an out-of-memory), hand cached accelerator memory back before the next one."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
