"""The warm node worker: a long-lived process on a SuperNode's host that keeps the base model loaded.

Flower 1.42 starts a fresh ClientApp process for every message (the SuperNode's SuperExec runs one
`flwr-clientapp` per task, and warm executor pools exist only for Kubernetes agent/connector/model tasks), so a
plain ClientApp would import torch and load the base model every round. With `worker = "<socket>"` in the
node-config, the ClientApp instead forwards the round's request over a local Unix socket to this worker, which
trains the node's clients with the same `train_client` and sends the updates back. Only raw .npy buffers and a
JSON header cross the socket (no pickle); the connection is authenticated with a key file readable only by the
user (`<socket>.key`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
import traceback
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any


def key_path(socket_path: str | Path) -> Path:
    return Path(f"{socket_path}.key")


def send_frame(conn: Connection, header: dict[str, Any], buffers: list[bytes]) -> None:
    conn.send_bytes(json.dumps(header | {"buffers": len(buffers)}).encode())
    for b in buffers:
        conn.send_bytes(b)


def recv_frame(conn: Connection) -> tuple[dict[str, Any], list[bytes]]:
    header = json.loads(conn.recv_bytes().decode())
    return header, [conn.recv_bytes() for _ in range(header.pop("buffers"))]


def request(socket_path: str | Path, header: dict[str, Any], buffers: list[bytes],
            timeout: float = 30.0) -> tuple[dict[str, Any], list[bytes]]:
    """One request to the worker (used by the ClientApp); waits up to `timeout` s for the worker to accept."""
    authkey = key_path(socket_path).read_bytes()
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = Client(str(socket_path), family="AF_UNIX", authkey=authkey)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with conn:
        send_frame(conn, header, buffers)
        return recv_frame(conn)


def handle(header: dict[str, Any], buffers: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Train the requested clients; one client's failure is reported, never raised."""
    import tomllib

    from fedit.config import Config
    from fedit.engines.flower.codec import npy_bytes, npy_load, numpy_to_tensor, tensor_to_numpy
    from fedit.engines.flower.node import get_worker
    from fedit.errors import FeditError

    t0 = time.perf_counter()
    cfg = Config.from_dict(tomllib.loads(header["config"]), where="fedit-config")
    worker = get_worker(cfg, header["node_config"])
    load_seconds = time.perf_counter() - t0
    if header.get("op") == "clients":
        return {"clients": sorted(worker.data)}, []
    params = {k: numpy_to_tensor(npy_load(b), header["dtypes"][k]) for k, b in zip(header["keys"], buffers,
                                                                                   strict=True)}
    updates: list[dict[str, Any]] = []
    out: list[bytes] = []
    failed: list[int] = []
    reasons: list[str] = []
    for cid in header["clients"]:
        try:
            u = worker.train(int(header["round"]), int(cid), params)
        except FeditError as e:
            failed.append(int(cid))
            reasons.append(str(e))
            continue
        except Exception as e:  # noqa: BLE001 - a crash of one client is that client's failure
            failed.append(int(cid))
            reasons.append(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
            continue
        entry: dict[str, Any] = {"client": u.client_id, "num_examples": u.num_examples, "metrics": u.metrics,
                                 "keys": [], "shapes": [], "wire_dtypes": [], "dtypes": {}}
        for k, t in u.params.items():
            arr, entry["dtypes"][k] = tensor_to_numpy(t)
            entry["keys"].append(k)
            entry["shapes"].append(list(arr.shape))
            entry["wire_dtypes"].append(str(arr.dtype))
            out.append(npy_bytes(arr))
        updates.append(entry)
    return {"updates": updates, "failed": failed, "reasons": reasons, "load_seconds": load_seconds,
            "seconds": time.perf_counter() - t0}, out


def serve(socket_path: str | Path, preload: bool = True) -> None:
    """Serve requests one at a time until SIGTERM/SIGINT (a SuperNode runs one ClientApp task at a time)."""
    socket_path = Path(socket_path)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    kp = key_path(socket_path)
    fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    if preload:  # pay the torch/transformers import once, before the first round arrives
        import fedit.engines.flower.node  # noqa: F401
        import fedit.pipeline  # noqa: F401
    listener = Listener(str(socket_path), family="AF_UNIX", authkey=kp.read_bytes())
    os.chmod(socket_path, 0o600)

    def _stop(*_: Any) -> None:
        listener.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    print(f"fedit node worker ready on {socket_path}", flush=True)
    while True:
        try:
            conn = listener.accept()
        except Exception:  # noqa: BLE001 - a client that failed authentication
            continue
        with conn:
            try:
                header, buffers = recv_frame(conn)
                try:
                    reply = handle(header, buffers)
                except Exception as e:  # noqa: BLE001 - the whole request failed (bad config, data dir)
                    reply = ({"error": f"{type(e).__name__}: {e}"}, [])
                send_frame(conn, *reply)
            except (EOFError, OSError, ValueError) as e:
                print(f"fedit node worker: dropped a connection: {e}", flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])
