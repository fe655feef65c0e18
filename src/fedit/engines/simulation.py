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
from fedit.errors import ClientError
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
    def __init__(self, trainer: LocalTrainer, data: ClientDataCache, cfg: Config) -> None:
        self.trainer, self.data, self.cfg = trainer, data, cfg
        self.num_clients = len(data)

    def train_round(self, round_idx: int, client_ids: list[int], global_params: Params,
                    objective: ClientObjective | None, progress: ClientProgress | None = None) -> RoundOutcome:
        outcome = RoundOutcome(updates=[])
        for cid in client_ids:
            on_step = (lambda s, t, loss, cid=cid: progress(cid, s, t, loss)) if progress else None
            try:
                update = train_client(self.trainer, global_params, self.data.get(cid), self.cfg.client,
                                      client_id=cid, round_idx=round_idx, seed=self.cfg.run.seed,
                                      objective=objective, on_step=on_step)
            except ClientError as e:
                outcome.failures[cid] = str(e)
                continue
            outcome.updates.append(update)
        return outcome

    def close(self) -> None:
        pass
