"""`fedit run --engine flower`: a loopback SuperLink and K SuperNodes started, used and stopped by fedit itself.

Everything stays on 127.0.0.1 with a private FLWR_HOME, telemetry, update checks and runtime dependency
installation off. Each SuperNode gets its own data directory holding only its clients' files, and (by default) a
warm node worker that keeps the base model loaded across rounds; a worker that exits is restarted (supervise.py)
while the ClientApps train in-process, any other process that exits ends the run. Processes are started in their
own process groups and stopped by the PIDs started here, with bounded waits.

Per-round overhead (issue 14): by default (`fast=True`) each SuperNode runs with `--isolation process` and one
resident ClientApp process (resident.py, supervised like the worker) instead of a `flwr-clientapp` process per
message, through fastnode.py, which caps the SuperNode's fixed 3 s idle poll at 0.1 s, and the ServerApp pulls
replies every FAST_SERVER_POLL s. The run's status is asked of the SuperLink (`flwr ls`, a Python process each time)
every STATUS_POLL s, and every 0.5 s only once the last round is in or the ServerApp wrote its error file.
`fast=False` is Flower's stock setup (subprocess isolation, stock SuperNode).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedit.config import Config
from fedit.engines.flower.protocol import RUN_CONFIG_DEFAULTS
from fedit.engines.flower.supervise import Restarting
from fedit.errors import ClientError, ConfigError, FeditError

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    # SuperExec's poll for new tasks (ServerApp/ClientApp launches); Flower's default is 1 s
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
}
CONNECTION = "fedit-local"
FAST_SERVER_POLL = 0.05  # seconds between the ServerApp's pulls for replies on the loopback (run config poll-interval)
STATUS_POLL = 5.0  # seconds between `flwr ls` calls while rounds are running (each one starts a Python process)


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ) | FLOWER_ENV | {"FLWR_HOME": str(flwr_home), "PYTHONUNBUFFERED": "1"}
    return env


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment pinning torch's intra-op (OpenMP/MKL) threads of a process; {} leaves it as it is."""
    return {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def threads_per_node(nodes: int, threads: int | None = None) -> int | None:
    """`threads` if given; else None when OMP_NUM_THREADS is set (kept); else the cores shared among the nodes."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads: got {threads}, expected an integer >= 1")
        return threads
    return None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // nodes)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """A Flower console script next to this interpreter (the one that has fedit installed), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group we started (its leader is `proc`), wait `grace` s, then SIGKILL; bounded."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # the group may outlive its leader (SuperExec, ClientApp children): kill what is left of it
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


@dataclass
class LoopbackDeployment:
    """One SuperLink and its SuperNodes on 127.0.0.1, with a private FLWR_HOME under `work`."""

    work: Path
    tls: bool = False
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    certs: dict[str, Path] = field(default_factory=dict)
    supervised: dict[str, Restarting] = field(default_factory=dict)  # restarted when they exit (node workers)
    events: list[str] = field(default_factory=list)  # restarts and other supervision notes (also in logs/)

    def __post_init__(self) -> None:
        self.work = Path(self.work)
        self.home = self.work / "flwr-home"
        self.logs = self.work / "logs"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = flower_env(self.home)
        if self.tls:
            from fedit.engines.flower.tls import make_certificates

            self.certs = make_certificates(self.work / "certs", ["127.0.0.1", "localhost"])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _note(self, message: str) -> None:
        self.events.append(message)
        with open(self.logs / "launcher.log", "a", encoding="utf-8") as f:
            f.write(message + "\n")

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
               append: bool = False) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab" if append else "wb")  # noqa: SIM115 - closed after Popen
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or self.env, cwd=self.work,
                                    start_new_session=True)  # own process group: stopped as a whole
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def start_superlink(self) -> None:
        self.port = free_port()
        cmd = [_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
               "--disable-runtime-dependency-installation"]
        if self.tls:
            cmd += ["--ssl-ca-certfile", str(self.certs["ca"]), "--ssl-certfile", str(self.certs["cert"]),
                    "--ssl-keyfile", str(self.certs["key"])]
        else:
            cmd += ["--insecure"]
        self._spawn("superlink", cmd)
        conn: dict[str, Any] = {"address": self.address}
        if self.tls:
            conn["root-certificates"] = str(self.certs["ca"])
        else:
            conn["insecure"] = True
        import tomli_w

        (self.home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION,
                                                                            CONNECTION: conn}}))
        self.wait_port(self.port, "superlink")

    def start_worker(self, name: str, socket_path: Path, threads: int | None = None) -> None:
        """A warm node worker, restarted whenever it exits; `threads` pins its torch/OpenMP threads (co-located
        workers must share the cores: oversubscribed OpenMP threads made a loopback round ~9x slower)."""
        cmd = [sys.executable, "-m", "fedit.engines.flower.worker", str(socket_path)]
        self._supervise(f"{name}-worker", cmd, self.env | thread_env(threads))

    def start_supernode(self, name: str, node_config: dict[str, Any], threads: int | None = None,
                        fast: bool = False) -> None:
        """A SuperNode; `threads` pins the ClientApps it runs (the cold path trains there).

        `fast`: the SuperNode through fastnode.py (idle poll capped), `--isolation process`, and a resident
        ClientApp process (resident.py, restarted whenever it exits) serving its Runtime API; else Flower's stock
        SuperNode, which starts a `flwr-clientapp` process per message."""
        cfg = " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())
        runtime = f"127.0.0.1:{free_port()}"
        head = [sys.executable, "-m", "fedit.engines.flower.fastnode"] if fast else [_bin("flower-supernode")]
        cmd = head + ["--superlink", self.address, "--node-config", cfg, "--host", "127.0.0.1",
                      "--port", runtime.rsplit(":", 1)[1], "--isolation", "process" if fast else "subprocess"]
        cmd += ["--root-certificates", str(self.certs["ca"])] if self.tls else ["--insecure"]
        env = self.env | thread_env(threads)
        self._spawn(name, cmd, env)
        if fast:
            self._supervise(f"{name}-clientapp", [sys.executable, "-m", "fedit.engines.flower.resident", runtime],
                            env)

    def _supervise(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        """Start `cmd` as `name`, restarted whenever it exits (its log appended to on restarts)."""
        first = [True]

        def spawn() -> subprocess.Popen:
            proc = self._spawn(name, cmd, env, append=not first[0])
            first[0] = False
            return proc

        self.supervised[name] = Restarting(name, spawn, self._note)

    def wait_port(self, port: int, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise ClientError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {self.logs}")

    def check_alive(self) -> None:
        """Restart supervised processes that exited; ClientError if any other process exited."""
        for name, sup in self.supervised.items():
            self.procs[name] = sup.check()
        for name, p in self.procs.items():
            if name not in self.supervised and p.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise ClientError(f"Flower process {name} exited with code {p.returncode}:\n{tail}")

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([_bin("flwr"), *args], env=self.env, cwd=self.work, capture_output=True, text=True,
                              timeout=timeout)

    def submit(self, app_dir: Path) -> int:
        res = self.flwr("run", str(app_dir), CONNECTION, "--format", "json")
        try:
            out = json.loads(res.stdout[res.stdout.index("{"):])
        except ValueError:
            out = {}
        if not out.get("success") or not out.get("run-id"):
            raise ClientError(f"flwr run failed (exit {res.returncode}): {res.stdout[-1500:]} {res.stderr[-1500:]}")
        return int(out["run-id"])

    def run_status(self, run_id: int) -> tuple[str, str]:
        """(status text such as 'running' or 'finished:completed', details) from `flwr ls`, not exit codes."""
        res = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(res.stdout[res.stdout.index("{"):])["runs"]
            return str(runs[0]["status"]), str(runs[0].get("status-details", ""))
        except (ValueError, KeyError, IndexError):
            return "unknown", (res.stdout + res.stderr)[-500:]

    def stop(self) -> None:
        # nodes (and their workers) first, the SuperLink last; each one by the PID we started
        for name in sorted(self.procs, key=lambda n: n == "superlink"):
            stop_process(self.procs[name])
        for sup in self.supervised.values():  # exited workers: reaped, and their groups checked
            for old in sup.retired:
                stop_process(old, grace=1.0)

    def __enter__(self) -> LoopbackDeployment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def write_node_data(client_records: list[list[Any]], nodes: int, root: Path) -> list[Path]:
    """Client c goes to node c % nodes: one directory per node holding only its clients' JSONL files."""
    from fedit.engines.flower.node import node_dir
    from fedit.partition.writer import client_filename

    dirs = [node_dir(root, k) for k in range(nodes)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    for cid, records in enumerate(client_records):
        text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
        (dirs[cid % nodes] / client_filename(cid, len(client_records))).write_text(text, encoding="utf-8")
    return dirs


@dataclass
class LocalRun:
    """What a launcher on this machine (loopback deployment or Flower's Simulation Engine) prepares before Flower
    starts: the run directory, the data split over the nodes, and the app whose run config the ServerApp and
    ClientApps read."""

    out: Path  # the run directory (absolute: the ServerApp may run in another working directory)
    resumed: bool
    n_clients: int
    nodes: int  # run.nodes, at most one per client
    node_dirs: list[Path]  # node k's clients' files (write_node_data)
    app: Path  # the Flower app directory (appdir.write_app)
    error_file: Path  # where the ServerApp writes why it failed


def prepare_local_run(cfg: Config, work: Path, *, resume: str | Path | None, overwrite: bool, round_timeout: float,
                      round_grace: float, poll: float, extra: dict[str, Any] | None = None) -> LocalRun:
    """Validate `cfg`, read and split its data over run.nodes node directories under `work`, and write the app
    (Flower-side settings for this machine, `extra` over them)."""
    from fedit.engines.flower.appdir import write_app
    from fedit.pipeline import check_resume_config, default_run_dir, prepare_data
    from fedit.server.checkpoint import RunStore

    cfg.validate()
    if cfg.run.nodes < 1:
        raise ConfigError(f"run.nodes: got {cfg.run.nodes}, expected an integer >= 1")
    out = Path(resume if resume is not None else (cfg.run.out or default_run_dir())).resolve()
    # what the ServerApp would refuse (a changed config on resume, a non-empty run directory), refused before any
    # Flower process starts; the ServerApp checks again
    if resume is not None:
        check_resume_config(out, cfg.override({"run.out": str(out)}))
    else:
        RunStore(out).check_create(overwrite)
    data = prepare_data(cfg)
    n_clients = len(data.client_records)
    nodes = min(cfg.run.nodes, n_clients)
    dirs = write_node_data(data.client_records, nodes, work / "data")
    error_file = work / "serverapp-error.txt"
    settings = {"out": str(out), "resume": resume is not None, "overwrite": overwrite, "num-clients": n_clients,
                "min-nodes": nodes, "discovery-timeout": 120.0, "round-timeout": round_timeout,
                "round-grace": round_grace, "poll-interval": poll, "error-file": str(error_file)}
    app = write_app(work / "app", cfg, settings | (extra or {}))
    return LocalRun(out, resume is not None, n_clients, nodes, dirs, app, error_file)


def run_flower(cfg: Config, *, resume: str | Path | None = None, overwrite: bool = False, tls: bool = False,
               warm: bool = True, round_timeout: float = 600.0,
               round_grace: float = RUN_CONFIG_DEFAULTS["round-grace"], threads: int | None = None,
               keep_work: bool = False, log: Any = None, on_deploy: Any = None, fast: bool = True) -> Any:
    """Run `cfg` on a loopback Flower deployment of `cfg.run.nodes` SuperNodes; returns a RunResult.

    The run directory is written by the ServerApp exactly as the simulator writes it. `threads` pins the torch
    threads of each node's training process (worker, and ClientApp on the cold path); by default the cores are
    shared among the nodes, unless OMP_NUM_THREADS is set. Results are bit-identical to the simulator's when it
    runs with the same number of threads on the same CPU and torch build (see docs/deployment.md). `fast` (the
    default) cuts the per-round messaging cost (module docstring); False runs Flower's stock SuperNodes.
    """
    say = log or (lambda m: print(m, flush=True))
    work = Path(tempfile.mkdtemp(prefix="fedit-flower-"))
    t0 = time.perf_counter()
    ok = False
    try:
        local = prepare_local_run(cfg, work, resume=resume, overwrite=overwrite, round_timeout=round_timeout,
                                  round_grace=round_grace,
                                  poll=FAST_SERVER_POLL if fast else RUN_CONFIG_DEFAULTS["poll-interval"])
        per_node = threads_per_node(local.nodes, threads)
        with LoopbackDeployment(work, tls=tls) as dep:
            if on_deploy is not None:  # tests keep a handle to stop and check the processes themselves
                on_deploy(dep)
            dep.start_superlink()
            for k, d in enumerate(local.node_dirs):
                node_config: dict[str, Any] = {"data-dir": str(d)}
                if warm:
                    sock = work / "sock" / f"node_{k}.sock"
                    dep.start_worker(f"node_{k}", sock, threads=per_node)
                    node_config["worker"] = str(sock)
                dep.start_supernode(f"node_{k}", node_config, threads=per_node, fast=fast)
            say(f"Flower loopback deployment: SuperLink {dep.address} ({'TLS' if tls else 'insecure, loopback'}), "
                f"{local.nodes} SuperNodes, {local.n_clients} clients; logs in {dep.logs}")
            run_id = dep.submit(local.app)
            say(f"submitted Flower run {run_id}")
            status, details = _wait_run(dep, run_id, local.out, say, cfg.run.rounds, local.error_file)
            if status != "finished:completed" or local.error_file.exists():
                error_file = local.error_file
                reason = error_file.read_text() if error_file.exists() else f"{status} {details}".strip()
                raise ClientError(f"Flower run {run_id} did not complete ({status}): {reason}\n"
                                  f"Flower logs: {dep.logs}")
        ok = True
    finally:
        if (ok and not keep_work) or not (work / "app").exists():  # nothing started: nothing to look at
            shutil.rmtree(work, ignore_errors=True)
    say(f"Flower run finished in {time.perf_counter() - t0:.1f}s")
    return collect_result(local.out, local.resumed)


def _wait_run(dep: LoopbackDeployment, run_id: int, out: Path, say: Any, rounds: int,
              error_file: Path) -> tuple[str, str]:
    """Until the SuperLink reports the run finished: supervision and round lines every 0.5 s; the status (`flwr ls`,
    a Python process each time: on 2 cores a call every 0.5 s took a third of a core from training) every
    STATUS_POLL s, and every 0.5 s once the last round is in or the ServerApp wrote its error file."""
    seen = 0
    asked = float("-inf")  # the first status is asked at once
    while True:
        dep.check_alive()
        seen = _report_rounds(out, seen, say)
        ending = error_file.exists() or _last_round(out) >= rounds
        if ending or time.monotonic() - asked >= STATUS_POLL:
            asked = time.monotonic()
            status, details = dep.run_status(run_id)
            if status.startswith("finished"):
                _report_rounds(out, seen, say)
                return status, details
        time.sleep(0.5)


def _last_round(out: Path) -> int:
    """The highest round in the run directory's metrics.jsonl (0 if none yet)."""
    f = out / "metrics.jsonl"
    last = 0
    if f.is_file():
        for line in f.read_text().splitlines():
            try:
                last = max(last, int(json.loads(line).get("round") or 0))
            except (ValueError, TypeError, AttributeError):
                continue
    return last


def _report_rounds(out: Path, seen: int, say: Any) -> int:
    f = out / "metrics.jsonl"
    if not f.is_file():
        return seen
    lines = f.read_text().splitlines()
    for line in lines[seen:]:
        try:
            m = json.loads(line)
        except ValueError:
            return seen
        if m.get("round"):
            failed = "".join(f"; client {c} dropped: {why}" for c, why in (m.get("failed") or {}).items())
            say(f"round {m['round']}: clients {m.get('replied')}, train loss {m.get('train_loss', 0):.4f}{failed}")
        seen += 1
    return seen


def collect_result(out: Path, resumed: bool) -> Any:
    from fedit.server.checkpoint import RunStore
    from fedit.types import RoundResult, RunResult

    store = RunStore(out)
    last = store.latest_round()
    if last is None:
        raise FeditError(f"{out}: the Flower run left no checkpoint")
    history = store.history()
    rounds = [RoundResult(m["round"], m["sampled"], m["replied"], m) for m in history if m["round"] >= 1]
    params = store.load_round(last)[0]
    ev_path = out / "eval.json"
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else None
    return RunResult(str(out), rounds, params, ev)
