"""`fedit flower ...`: write a Flower app for multi-machine runs, run a SuperNode with a warm worker, make certs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from fedit.cli.common import console, user_errors

flower_app = typer.Typer(help="Run fedit on Flower across machines (needs `pip install fedit[flower]`).",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(flower_app, name="flower")


@flower_app.command("app")
def app_command(
    config: Path = typer.Option(..., "--config", "-c", help="fedit run config (TOML)."),
    out: Path = typer.Option(..., help="Directory to write the Flower app into."),
    run_dir: str = typer.Option(None, help="Run directory on the SuperLink host (default: run.out of the config)."),
    num_clients: int = typer.Option(0, help="Logical clients expected across all SuperNodes (0 = what they report)."),
    min_nodes: int = typer.Option(1, help="SuperNodes to wait for before the first round."),
    round_timeout: float = typer.Option(3600.0, help="The most seconds a round may take; late nodes are dropped."),
    round_grace: float = typer.Option(5.0, help="Once min_clients updates are in (after t s), wait max(this, t) "
                                      "s more for the others."),
    overwrite: bool = typer.Option(False, help="Replace an existing app directory."),
) -> None:
    """Write a Flower app directory (pyproject.toml with \\[tool.flwr.app]) for `flwr run`."""
    _app(config, out, run_dir, num_clients, min_nodes, round_timeout, round_grace, overwrite)


@user_errors
def _app(config: Path, out: Path, run_dir: str | None, num_clients: int, min_nodes: int, round_timeout: float,
         round_grace: float, overwrite: bool) -> None:
    from fedit.config import Config
    from fedit.engines.flower.appdir import write_app
    from fedit.errors import ConfigError

    cfg = Config.from_file(config)
    if (out / "pyproject.toml").exists() and not overwrite:
        raise ConfigError(f"{out / 'pyproject.toml'} exists; pass --overwrite to replace it")
    settings: dict[str, Any] = {"num-clients": num_clients, "min-nodes": min_nodes, "round-timeout": round_timeout,
                                "round-grace": round_grace}
    if run_dir:
        settings["out"] = run_dir
    write_app(out, cfg, settings)
    console.print(f"Flower app written to {out}\n  submit it with: flwr run {out} <connection> --stream\n"
                  "  override any setting for one run: --run-config \"run.rounds=5 client.lr=0.001\"\n"
                  "  (connections live in $FLWR_HOME/config.toml; see docs/deployment.md)")


@flower_app.command("worker")
def worker_command(
    socket: Path = typer.Option(..., help="Unix socket path; give it to the SuperNode as node-config worker=..."),
) -> None:
    """Run a warm node worker: keeps the base model loaded for the ClientApps of one SuperNode."""
    from fedit.engines.flower.worker import serve

    serve(socket)


@flower_app.command("node")
def node_command(
    superlink: str = typer.Option(..., help="SuperLink address host:port."),
    data_dir: Path = typer.Option(..., help="This node's client files (client_NNN.jsonl)."),
    clients: str = typer.Option(None, help="Only these client ids from data-dir, e.g. '0,3' (default: all)."),
    root_certificates: Path = typer.Option(None, help="CA certificate of the SuperLink (TLS)."),
    insecure: bool = typer.Option(False, help="No TLS (loopback or trusted networks only)."),
    auth_key: Path = typer.Option(None, help="SuperNode private key (OpenSSH ECDSA) for node authentication."),
    model: str = typer.Option(None, help="Base model path on this node, if not where the run config says."),
    warm: bool = typer.Option(True, help="Keep the base model loaded across rounds in a worker process."),
    port: int = typer.Option(9094, help="Port of this SuperNode's local Runtime API."),
    state_dir: Path = typer.Option(None, help="Where the clients' own state lives (SCAFFOLD's c_i; default "
                                               "DATA_DIR/.fedit-state)."),
) -> None:
    """Run a SuperNode for fedit (plus its warm worker), with Flower's no-telemetry settings."""
    _node(superlink, data_dir, clients, root_certificates, insecure, auth_key, model, warm, port, state_dir)


@user_errors
def _node(superlink: str, data_dir: Path, clients: str | None, root_certificates: Path | None, insecure: bool,
          auth_key: Path | None, model: str | None, warm: bool, port: int, state_dir: Path | None = None) -> None:
    import os
    import subprocess
    import sys
    import tempfile
    import time

    from fedit.engines.flower.launcher import FLOWER_ENV, _bin, stop_process
    from fedit.engines.flower.node import client_files
    from fedit.engines.flower.supervise import Restarting
    from fedit.errors import ConfigError

    if not insecure and root_certificates is None:
        raise ConfigError("give --root-certificates (the SuperLink's CA) or, on a trusted network, --insecure")
    node_config: dict[str, Any] = {"data-dir": str(data_dir.resolve())}
    if clients:
        node_config["clients"] = clients
    if model:
        node_config["model"] = model
    if state_dir is not None:
        if state_dir.exists() and not state_dir.is_dir():
            raise ConfigError(f"--state-dir: {state_dir} exists and is not a directory")
        node_config["state-dir"] = str(state_dir.resolve())
    hosted = sorted(client_files(node_config))
    env = dict(os.environ) | FLOWER_ENV
    procs: list[subprocess.Popen] = []
    worker: Restarting | None = None
    try:
        if warm:  # restarted whenever it exits; meanwhile the ClientApps train in-process
            sock = Path(tempfile.mkdtemp(prefix="fedit-node-")) / "worker.sock"
            node_config["worker"] = str(sock)
            worker = Restarting("node worker", lambda: subprocess.Popen(
                [sys.executable, "-m", "fedit.engines.flower.worker", str(sock)], env=env, start_new_session=True),
                console.print)
        cmd = [_bin("flower-supernode"), "--superlink", superlink, "--host", "127.0.0.1", "--port", str(port),
               "--node-config", " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())]
        cmd += ["--insecure"] if insecure else ["--root-certificates", str(root_certificates)]
        if auth_key:
            cmd += ["--auth-supernode-private-key", str(auth_key)]
        console.print(f"SuperNode for clients {hosted} -> {superlink} ({'warm worker' if warm else 'cold'})")
        node = subprocess.Popen(cmd, env=env, start_new_session=True)
        procs.append(node)
        while node.poll() is None:
            if worker is not None:
                worker.check()
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            stop_process(p)
        if worker is not None:
            for p in [worker.proc, *worker.retired]:
                stop_process(p)


@flower_app.command("certs")
def certs_command(
    out: Path = typer.Option(..., help="Directory for ca.crt, server.pem, server.key."),
    host: list[str] = typer.Option(["127.0.0.1", "localhost"], help="SuperLink host names/IPs (repeatable)."),
) -> None:
    """Make a self-signed CA and a SuperLink server certificate (for tests and private deployments)."""
    from fedit.engines.flower.tls import make_certificates

    paths = make_certificates(out, list(host))
    console.print("\n".join(f"{k}: {v}" for k, v in paths.items()))
