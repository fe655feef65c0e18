"""Node side of a Flower deployment (no flwr here): the logical clients a SuperNode hosts, and their training.

A SuperNode's `--node-config` names a directory of client files (`client_NNN.jsonl`, as `fedit partition` writes
them); the number in the name is the client's global id. The records never leave the node: only the LoRA payload
does. Training calls the same `train_client` as the simulator, with the same (seed, round, client) seeds.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedit.config import Config
from fedit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedit.types import ClientUpdate, Params

CLIENT_FILE = re.compile(r"^client_(\d+)\.jsonl$")


def parse_client_ids(spec: Any) -> list[int] | None:
    """`clients` node-config value: "0,2,5", "0-3", a list, or "" / "all" (every file in data-dir)."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [spec]
    parts = spec if isinstance(spec, list) else str(spec).split(",")
    out: list[int] = []
    for p in parts:
        p = str(p).strip()
        try:
            if "-" in p:
                lo, hi = (int(x) for x in p.split("-", 1))
                out.extend(range(lo, hi + 1))
            elif p:
                out.append(int(p))
        except ValueError:
            raise ConfigError(f"node-config clients: got {spec!r}, expected ids like '0,2,5' or '0-3'") from None
    return sorted(set(out))


def client_files(node_config: dict[str, Any]) -> dict[int, Path]:
    """Client id -> file for the clients this node hosts."""
    data_dir = node_config.get("data-dir")
    if not data_dir:
        raise ConfigError("node-config: data-dir is not set; start the SuperNode with "
                          "--node-config \"data-dir='/path/to/clients'\"")
    root = Path(str(data_dir)).expanduser()
    if not root.is_dir():
        raise DataError(f"node-config data-dir: {root} is not a directory")
    files = {int(m.group(1)): p for p in sorted(root.iterdir()) if (m := CLIENT_FILE.match(p.name))}
    wanted = parse_client_ids(node_config.get("clients"))
    if wanted is not None:
        missing = sorted(set(wanted) - files.keys())
        if missing:
            raise DataError(f"node-config clients: no file for client(s) {missing} in {root}")
        files = {c: files[c] for c in wanted}
    if not files:
        raise DataError(f"node-config data-dir: {root} holds no client_NNN.jsonl files")
    return files


class NodeWorker:
    """The base model with its LoRA slots, and the hosted clients' tokenized data; kept for the process lifetime."""

    def __init__(self, cfg: Config, node_config: dict[str, Any]) -> None:
        from fedit.data.sources import load_records
        from fedit.data.tokenize import tokenize_records
        from fedit.pipeline import build_model
        from fedit.strategies import build_strategy

        t0 = time.perf_counter()
        self.cfg = cfg
        if node_config.get("model"):  # the base model lives at another path on this node
            cfg = cfg.override({"model.name": str(node_config["model"])})
        self.bundle = build_model(cfg)
        self.objective = build_strategy(cfg.strategy).client_objective()
        d = cfg.data
        self.data = {}
        for cid, path in client_files(node_config).items():
            records = load_records(path, format="dolly")
            self.data[cid] = tokenize_records(records, self.bundle.template, self.bundle.tokenizer, d.cutoff_len,
                                              d.train_on_inputs, d.add_eos)
        self.load_seconds = time.perf_counter() - t0

    def train(self, round_idx: int, client_id: int, global_params: Params) -> ClientUpdate:
        from fedit.client.train import train_client

        if client_id not in self.data:
            raise DataError(f"client {client_id} is not hosted on this node (hosts {sorted(self.data)})")
        return train_client(self.bundle.trainer, global_params, self.data[client_id], self.cfg.client,
                            client_id=client_id, round_idx=round_idx, seed=self.cfg.run.seed,
                            objective=self.objective)


_WORKERS: dict[str, NodeWorker] = {}


def get_worker(cfg: Config, node_config: dict[str, Any]) -> NodeWorker:
    """One worker per (config, node config) in this process: reused while the process lives."""
    key = cfg.to_toml() + repr(sorted(node_config.items()))
    if key not in _WORKERS:
        _WORKERS.clear()
        _WORKERS[key] = NodeWorker(cfg, node_config)
    return _WORKERS[key]
