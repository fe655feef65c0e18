"""Node side of a Flower deployment (no flwr here): the logical clients a SuperNode hosts, and their training.

A SuperNode's `--node-config` names a directory of client files (`client_NNN.jsonl`, as `fedit partition` writes
them); the number in the name is the client's global id, and discovery reports ids from the names alone. The
records never leave the node: only the LoRA payload does. Training calls the same `train_task` as the
simulator, under the strategy's client plan rebuilt from the run's config, with the same (seed, round, client)
seeds and the client's own state from this node's store (state.py), through `train_clients`, the one
train-and-report loop that the in-process (cold) ClientApp and the warm worker share, and that applies the run's
injected faults. A base delta the server sends (FedEx-LoRA) is set as W0 + delta before the clients train.
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedit.config import Config
from fedit.engines.flower.state import NodeStateStore, state_root
from fedit.errors import ConfigError, DataError, FeditError

if TYPE_CHECKING:
    from fedit.data.tokenize import TokenizedData
    from fedit.pipeline import ModelBundle
    from fedit.types import ClientTask, ClientUpdate, Params

CLIENT_FILE = re.compile(r"^client_(\d+)\.jsonl$")
PARTITION_ID = "partition-id"  # the one node-config key Flower's Simulation Engine gives each virtual SuperNode


def node_dir(root: Path, k: int) -> Path:
    """Node k's data directory under `root`, as fedit's launchers lay them out (loopback and simulation)."""
    return Path(root) / f"node_{k}"


def virtual_node_config(node_config: dict[str, Any], node_data: str) -> dict[str, Any]:
    """A node config with its `data-dir`: as given, or, for a virtual SuperNode of Flower's Simulation Engine (which
    gets only `partition-id` and `num-partitions`), `<node_data>/node_<partition-id>` (run-config `node-data`)."""
    if node_config.get("data-dir") or not node_data or PARTITION_ID not in node_config:
        return node_config
    return node_config | {"data-dir": str(node_dir(Path(node_data), int(node_config[PARTITION_ID])))}


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
    """The base model with its LoRA slots, kept for the process lifetime, the strategy's client plan, and the
    hosted clients' data and state.

    Each client's file is read and tokenized the first time that client is trained, and the result, or the error,
    is kept: one client's bad file fails that client alone, in every round, without touching its neighbours.
    """

    def __init__(self, cfg: Config, node_config: dict[str, Any], bundle: ModelBundle | None = None) -> None:
        from fedit.pipeline import build_model
        from fedit.strategies import build_strategy

        t0 = time.perf_counter()
        self.cfg = cfg
        self.files = client_files(node_config)  # names only: nothing is read until a client is trained
        self.model_name = str(node_config.get("model") or "")
        if self.model_name:  # the base model lives at another path on this node
            cfg = cfg.override({"model.name": self.model_name})
        self.bundle = bundle if bundle is not None else build_model(cfg)  # `bundle`: another node's, same model
        self.plan = build_strategy(cfg.strategy).client_plan()
        self.state_root = state_root(node_config)
        self._data: dict[int, TokenizedData | DataError] = {}
        self.load_seconds = time.perf_counter() - t0

    @property
    def clients(self) -> list[int]:
        return sorted(self.files)

    def data(self, client_id: int) -> TokenizedData:
        """Client `client_id`'s tokenized examples (loaded once); DataError, also on every later call, if bad."""
        if client_id not in self.files:
            raise DataError(f"client {client_id} is not hosted on this node (hosts {self.clients})")
        if client_id not in self._data:
            self._data[client_id] = self._load(client_id)
        got = self._data[client_id]
        if isinstance(got, DataError):
            raise DataError(str(got))
        return got

    def _load(self, client_id: int) -> TokenizedData | DataError:
        from fedit.data.sources import load_records
        from fedit.data.tokenize import tokenize_records

        d = self.cfg.data
        try:
            records = load_records(self.files[client_id], format="dolly")
            return tokenize_records(records, self.bundle.template, self.bundle.tokenizer, d.cutoff_len,
                                    d.train_on_inputs, d.add_eos)
        except DataError as e:
            return e
        except Exception as e:  # noqa: BLE001 - whatever a bad file causes is that client's failure
            return DataError(f"{self.files[client_id]}: {type(e).__name__}: {e}")

    def set_base_delta(self, delta: Params) -> None:
        """Set the base to W0 + `delta` (the cumulative delta the server sent; {} restores W0)."""
        self.bundle.trainer.base.apply(delta)  # type: ignore[union-attr]

    def train(self, round_idx: int, client_id: int, task: ClientTask, run_id: str) -> ClientUpdate:
        """Train one client on its task; its new state (if the plan keeps any) is saved in the node's store."""
        from fedit.client.train import train_task

        store = NodeStateStore(self.state_root, run_id)
        loaded = int(task.config.get("state_round", 0))
        local = store.load(client_id, loaded)
        update, new_local = train_task(self.bundle.trainer, task, self.data(client_id), self.cfg.client,
                                       client_id=client_id, round_idx=round_idx, seed=self.cfg.run.seed,
                                       plan=self.plan, local=local)
        kept = new_local if new_local is not None else local  # None: the state stays as it was
        if kept:
            store.save(client_id, round_idx, kept, loaded)
        return update


_WORKERS: dict[str, NodeWorker] = {}  # config TOML + node config -> its worker


def get_worker(cfg: Config, node_config: dict[str, Any]) -> NodeWorker:
    """One worker per node config in this process, for one config (another config drops them), reused while the
    process lives. Workers of one process share the base model: in Flower's Simulation Engine any virtual node's
    message may reach any ClientApp process, which then keeps one model, not one per node (every train message
    sets the base delta again, so sharing changes nothing a node computes)."""
    ckey = cfg.to_toml()
    key = ckey + repr(sorted(node_config.items()))
    if key not in _WORKERS:
        for old in [k for k in _WORKERS if not k.startswith(ckey)]:
            del _WORKERS[old]
        model = str(node_config.get("model") or "")
        shared = next((w.bundle for w in _WORKERS.values() if w.model_name == model), None)
        _WORKERS[key] = NodeWorker(cfg, node_config, bundle=shared)
    return _WORKERS[key]


@dataclass
class NodeReport:
    """A node's answer to one train message: the updates, each failed client with its reason, and timings."""

    updates: list[ClientUpdate] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    load_seconds: float = 0.0
    seconds: float = 0.0


class NodeHeld(RuntimeError):
    """A `hang` fault: the node held the message past its deadline and answers with this error."""


def _failure(e: BaseException) -> str:
    """One line saying why a client failed: the message, plus where for anything that is not a fedit error."""
    if isinstance(e, FeditError):
        return str(e)
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def hold_past(deadline: float) -> None:
    """Sleep until one second after `deadline` (epoch seconds): by then the server has dropped the message."""
    time.sleep(max(0.0, deadline + 1.0 - time.time()))


def train_clients(cfg: Config, node_config: dict[str, Any], round_idx: int, tasks: dict[int, ClientTask],
                  base_delta: Params, run_id: str, deadline: float) -> NodeReport:
    """The one per-client train-and-report loop of a node (cold ClientApp and warm worker alike).

    First the base is set to W0 + `base_delta`. For each client, in id order: the run's faults before training
    (`slow` sleeps, `crash` raises), its task trained, the faults after training (the update as a faulty client
    would send it), the update encoded for the wire (fedit.wire: tasks arrive encoded in run.wire_dtype and are
    decoded first; the update goes up as the delta from them). One client's failure is reported with its
    reason, never raised. A `hang` fault makes the whole node hold the message until its deadline has passed and
    then raise NodeHeld. Clients not started before `deadline` (epoch seconds) are reported as failed unstarted.
    """
    from fedit.faults import FaultPlan
    from fedit.wire import WireFormat, receive_tasks, send_update

    t0 = time.perf_counter()
    faults = FaultPlan(cfg.run.faults)
    wire = WireFormat.of(cfg.run)
    clients = sorted(tasks)
    held = [c for c in clients if faults.hangs(round_idx, c)]
    if held:
        hold_past(deadline)
        raise NodeHeld(f"injected hang for client(s) {held}: the node held round {round_idx} past its deadline")
    worker = get_worker(cfg, node_config)
    report = NodeReport(load_seconds=time.perf_counter() - t0)
    try:
        worker.set_base_delta(base_delta)
    except Exception as e:  # noqa: BLE001 - a delta this model cannot take fails this node's clients
        report.failed = dict.fromkeys(clients, f"the base delta cannot be applied on this node: {_failure(e)}")
        return report
    received = receive_tasks(tasks, wire)  # the tasks as sent (run.wire_dtype), decoded: what the clients train from
    for cid in clients:
        if time.time() >= deadline:
            report.failed[cid] = f"not started: the round's deadline passed on the node (round {round_idx})"
            continue
        try:
            faults.before_training(round_idx, cid)
            update = worker.train(round_idx, cid, received[cid], run_id)
            report.updates.append(send_update(faults.after_training(update, round_idx), received[cid], wire))
        except Exception as e:  # noqa: BLE001 - any crash of one client is that client's failure
            report.failed[cid] = _failure(e)
    report.seconds = time.perf_counter() - t0
    return report
