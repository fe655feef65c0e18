"""Per-client state on a Flower node (SCAFFOLD's c_i, later personal adapters): kept with the node's data, so it
survives node and worker restarts, and versioned by the round that produced it.

The server tags every task with `state_round`, the last round whose update from that client it accepted (0 =
none). The node loads exactly that version and saves the new state under the current round; it cannot know yet
whether the server will accept this round's update, so it keeps both, and drops versions older than the one the
server asked for (the server never asks for an older one again). A server that resumes from an earlier round asks
for the versions of that history, which are still here; the rounds it re-runs overwrite the newer files.

Layout: `<state-dir>/<run_id>/client_<id>/round_NNNN.safetensors`; `state-dir` is the node-config key of that
name, by default `<data-dir>/.fedit-state`. Files are written atomically (temporary sibling, fsync, rename, fsync
of the directory). A client with no directory has no state (a stateless strategy, or its first round); a client
whose directory lacks the version the server names fails with a clear reason rather than train on wrong state.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedit.atomic import TMP_PREFIX, fsync_dir
from fedit.errors import ClientError, ConfigError

if TYPE_CHECKING:
    from fedit.types import Params

STATE_DIR = ".fedit-state"
_VERSION = re.compile(r"^round_(\d{4,})\.safetensors$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def state_root(node_config: dict[str, Any]) -> Path:
    """Where this node keeps its clients' state: node-config `state-dir`, else `<data-dir>/.fedit-state`."""
    if node_config.get("state-dir"):
        return Path(str(node_config["state-dir"])).expanduser()
    return Path(str(node_config.get("data-dir", "."))).expanduser() / STATE_DIR


class NodeStateStore:
    """The state of the clients one node hosts, for one run."""

    def __init__(self, root: Path, run_id: str) -> None:
        if not _RUN_ID.match(run_id or ""):
            raise ConfigError(f"run id {run_id!r}: expected 1-64 letters, digits, '-' or '_' (from the server)")
        self.root = root / run_id

    def client_dir(self, client_id: int) -> Path:
        return self.root / f"client_{client_id}"

    def versions(self, client_id: int) -> dict[int, Path]:
        d = self.client_dir(client_id)
        if not d.is_dir():
            return {}
        return {int(m.group(1)): p for p in d.iterdir() if (m := _VERSION.match(p.name))}

    def load(self, client_id: int, state_round: int) -> Params:
        """The state saved in round `state_round` ({} for round 0, or a client that never saved any)."""
        from safetensors.torch import load_file

        if state_round <= 0:
            return {}
        versions = self.versions(client_id)
        if not versions:
            return {}
        f = versions.get(state_round)
        if f is None:
            raise ClientError(f"client {client_id}: the server's last accepted round for it is {state_round}, but "
                              f"{self.client_dir(client_id)} holds the state of rounds {sorted(versions)} only; the "
                              "client cannot train on the state the server expects")
        try:
            return load_file(str(f))
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise ClientError(f"client {client_id}: unreadable state {f} ({e})") from None

    def save(self, client_id: int, round_idx: int, state: Params, loaded_round: int) -> None:
        """Save `state` as round `round_idx`'s version; drop versions older than `loaded_round` (what the server
        asked for this round: it will ask for that one or this one next time, never an older one)."""
        from safetensors.torch import save_file

        d = self.client_dir(client_id)
        d.mkdir(parents=True, exist_ok=True)
        final = d / f"round_{round_idx:04d}.safetensors"
        tmp = d / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        for r, p in self.versions(client_id).items():
            if r < loaded_round and r != round_idx:
                p.unlink(missing_ok=True)
        fsync_dir(d)
