"""The warm node worker: a long-lived process on a SuperNode's host that keeps the base model loaded.

Flower 1.42 starts a fresh ClientApp process for every message (the SuperNode's SuperExec runs one
`flwr-clientapp` per task, and warm executor pools exist only for Kubernetes agent/connector/model tasks), so a
plain ClientApp would import torch and load the base model every round. With `worker = "<socket>"` in the
node-config, the ClientApp instead forwards the round's request over a local Unix socket to this worker, which
trains the node's clients with the same loop as the cold path (`node.train_clients`) and sends the updates back.
Only raw .npy buffers and a JSON header cross the socket (no pickle); the connection is authenticated with a key
file readable only by the user (`<socket>.key`).

The worker is a cache, not a single point of failure: `request` waits a few seconds for a worker that is
(re)starting, then raises WorkerUnavailable and the ClientApp trains in its own process; a reply that does not
come before the message's deadline is a TimeoutError. Whoever started the worker restarts it when it exits
(supervise.py). The accept loop backs off on persistent errors instead of spinning.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import AuthenticationError, Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedit.engines.flower.node import NodeReport
    from fedit.types import ClientTask, ClientUpdate, Params

CONNECT_WAIT = 5.0  # seconds a request waits for a worker that is starting or restarting
RECEIVE_WAIT = 60.0  # seconds the worker waits for a connected ClientApp to send its request


class WorkerUnavailable(ConnectionError):
    """The worker is not running, or died during the request: the ClientApp may train in-process instead."""


def key_path(socket_path: str | Path) -> Path:
    return Path(f"{socket_path}.key")


def send_frame(conn: Connection, header: dict[str, Any], buffers: list[bytes]) -> None:
    conn.send_bytes(json.dumps(header | {"buffers": len(buffers)}).encode())
    for b in buffers:
        conn.send_bytes(b)


def _wait_readable(conn: Connection, deadline: float | None) -> None:
    """Block until `conn` has data, or raise TimeoutError at `deadline` (epoch seconds; None = no limit)."""
    if deadline is not None and not conn.poll(max(0.0, deadline - time.time())):
        raise TimeoutError("no answer from the node worker before the message's deadline")


def recv_frame(conn: Connection, deadline: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
    _wait_readable(conn, deadline)
    header = json.loads(conn.recv_bytes().decode())
    buffers = []
    for _ in range(int(header.pop("buffers"))):
        _wait_readable(conn, deadline)
        buffers.append(conn.recv_bytes())
    return header, buffers


def _open(socket_path: Path, authkey: bytes, deadline: float) -> Connection:
    """An authenticated connection; the handshake waits for the worker to accept until `deadline` at most."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(max(0.1, deadline - time.time()))
        s.connect(str(socket_path))
        s.setblocking(True)
        conn = Connection(s.detach())
    finally:
        s.close()
    try:
        _wait_readable(conn, deadline)  # a busy worker has not accepted yet: its challenge is what we wait for
        answer_challenge(conn, authkey)
        deliver_challenge(conn, authkey)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect(socket_path: Path, deadline: float, connect_wait: float) -> Connection:
    give_up = time.monotonic() + connect_wait
    while True:
        try:  # the key is re-read on every try: a restarted worker writes a new one
            return _open(socket_path, key_path(socket_path).read_bytes(), deadline)
        except (FileNotFoundError, ConnectionRefusedError, AuthenticationError, EOFError,
                ConnectionResetError, BrokenPipeError) as e:
            if time.monotonic() >= give_up or time.time() >= deadline:
                raise WorkerUnavailable(f"no node worker at {socket_path} ({type(e).__name__}: {e})") from e
            time.sleep(0.2)


def request(socket_path: str | Path, header: dict[str, Any], buffers: list[bytes], *,
            deadline: float | None = None,
            connect_wait: float = CONNECT_WAIT) -> tuple[dict[str, Any], list[bytes]]:
    """One request to the worker (used by the ClientApp).

    `deadline` (epoch seconds; default one hour from now) bounds the whole exchange: TimeoutError when the worker
    has not answered by then. WorkerUnavailable when no worker accepts within `connect_wait` s or it dies mid-way.
    """
    deadline = time.time() + 3600.0 if deadline is None else deadline
    header = header | {"deadline": deadline}
    with _connect(Path(socket_path), deadline, connect_wait) as conn:
        try:
            send_frame(conn, header, buffers)
            return recv_frame(conn, deadline)
        except (EOFError, ConnectionResetError, BrokenPipeError) as e:
            raise WorkerUnavailable(f"the node worker at {socket_path} went away mid-request: {e}") from e


# ---- the socket form: a JSON entry per tensor group (keys, torch dtypes) plus one .npy buffer per tensor ---------
def encode_params(params: Params) -> tuple[dict[str, Any], list[bytes]]:
    from fedit.engines.flower.codec import params_npy

    keys, dtypes, buffers = params_npy(params)
    return {"keys": keys, "dtypes": dtypes}, buffers


def encode_update(update: ClientUpdate) -> tuple[dict[str, Any], list[bytes]]:
    """(header entry, .npy buffers: params then extras) for one update; `records.put_raw_update` makes records."""
    params, buffers = encode_params(update.params)
    extras, more = encode_params(update.extras)
    entry = {"client": update.client_id, "num_examples": update.num_examples, "metrics": dict(update.metrics),
             "params": params, "extras": extras}
    return entry, buffers + more


def encode_report(report: NodeReport) -> tuple[dict[str, Any], list[bytes]]:
    header: dict[str, Any] = {"updates": [], "failed": list(report.failed), "reasons": list(report.failed.values()),
                              "load_seconds": report.load_seconds, "seconds": report.seconds}
    buffers: list[bytes] = []
    for u in report.updates:
        entry, out = encode_update(u)
        header["updates"].append(entry)
        buffers += out
    return header, buffers


def decode_params(keys: list[str], dtypes: dict[str, str], buffers: list[bytes]) -> Params:
    from fedit.engines.flower.codec import npy_load, numpy_to_tensor

    return {k: numpy_to_tensor(npy_load(b), dtypes[k]) for k, b in zip(keys, buffers, strict=True)}


def decode_tasks(header: dict[str, Any], buffers: list[bytes]) -> tuple[dict[int, ClientTask], Params]:
    """(client id -> task, base delta) from `records.raw_tasks`' form."""
    from fedit.engines.flower.records import tasks_from

    groups: dict[str, Params] = {}
    i = 0
    for name, g in header["groups"].items():
        n = len(g["keys"])
        groups[name] = decode_params(g["keys"], g["dtypes"], buffers[i:i + n])
        i += n
    if i != len(buffers):
        raise ValueError(f"the request carries {len(buffers)} buffers, its groups name {i}")
    return tasks_from(header, groups.__getitem__)


def handle(header: dict[str, Any], buffers: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Train the requested clients; one client's failure is reported, never raised."""
    from fedit.engines.flower.node import train_clients
    from fedit.engines.flower.protocol import config_from_run_config

    if header.get("op") != "train":
        raise ValueError(f"unknown request {header.get('op')!r}")
    cfg = config_from_run_config(header["run_config"])  # the run config's fedit keys, as the ClientApp got them
    tasks, base_delta = decode_tasks(header, buffers)
    report = train_clients(cfg, header["node_config"], int(header["round"]), tasks, base_delta,
                           str(header.get("run_id", "")), float(header["deadline"]))
    return encode_report(report)


def serve_connection(conn: Connection, log: Callable[[str], None]) -> None:
    """Read one request, answer it (an error reply if the whole request failed), close."""
    with conn:
        try:
            header, buffers = recv_frame(conn, time.time() + RECEIVE_WAIT)
            t0 = time.perf_counter()
            log(f"round {header.get('round')}: training clients {header.get('clients')}")
            try:
                reply = handle(header, buffers)
            except Exception as e:  # noqa: BLE001 - the whole request failed (bad config, data dir, a hang)
                reply = ({"error": f"{type(e).__name__}: {e}"}, [])
            send_frame(conn, *reply)
            r = reply[0]
            log(f"round {header.get('round')}: answered in {time.perf_counter() - t0:.2f}s"
                + (f" (train_clients {r['seconds']:.2f}s, model load {r['load_seconds']:.2f}s)" if "seconds" in r
                   else ""))
        except (EOFError, OSError, ValueError) as e:  # TimeoutError is an OSError
            log(f"dropped a connection: {type(e).__name__}: {e}")


def accept_forever(listener: Any, on_connection: Callable[[Connection], None], log: Callable[[str], None], *,
                   sleep: Callable[[float], None] = time.sleep, max_delay: float = 5.0) -> None:
    """Accept connections one at a time. A failed accept (bad authentication, a client gone mid-handshake, EMFILE)
    is logged and followed by a pause that doubles while failures persist (up to `max_delay` s), so a persistent
    error neither spins the CPU nor floods the log; the first good connection resets it."""
    delay = 0.0
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError, AuthenticationError) as e:
            delay = min(max(0.05, 2 * delay), max_delay)
            log(f"accept failed ({type(e).__name__}: {e}); next try in {delay:.2f}s")
            sleep(delay)
            continue
        delay = 0.0
        on_connection(conn)


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} fedit node worker: {message}", flush=True)


def write_key(socket_path: str | Path) -> bytes:
    """A fresh random key in `<socket>.key`, readable by this user only from its creation (0600, whatever the
    umask; an existing file is replaced, since O_CREAT would keep its mode)."""
    kp = key_path(socket_path)
    kp.unlink(missing_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def serve(socket_path: str | Path, preload: bool = True) -> None:
    """Serve requests one at a time until SIGTERM/SIGINT (a SuperNode runs one ClientApp task at a time)."""
    socket_path = Path(socket_path)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    authkey = write_key(socket_path)
    if preload:  # pay the torch/transformers import once, before the first round arrives
        import fedit.engines.flower.node  # noqa: F401
        import fedit.pipeline  # noqa: F401
    listener = Listener(str(socket_path), family="AF_UNIX", authkey=authkey)
    os.chmod(socket_path, 0o600)

    def _stop(*_: Any) -> None:
        listener.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    _log(f"ready on {socket_path} (pid {os.getpid()})")
    accept_forever(listener, lambda conn: serve_connection(conn, _log), _log)


if __name__ == "__main__":
    serve(sys.argv[1])
