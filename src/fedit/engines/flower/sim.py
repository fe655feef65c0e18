"""`fedit run --engine flower-sim`: fedit's own ServerApp and ClientApp on Flower's Simulation Engine (Ray backend).

The same app objects as the loopback deployment (`server_app.app`, `client_app.app`), the same node data layout
(`launcher.prepare_local_run`: client c on node c % nodes) and the same run directory, written by the ServerApp.
What differs is the transport: no SuperLink or SuperNode processes; Flower keeps the messages in memory, runs the
ServerApp in a thread of this process and each message's ClientApp in one of a pool of Ray actor processes. A pool
holds as many actors as the machine's resources allow at `run.client_cpus` (and `run.client_gpus`) each, so that
many virtual SuperNodes train at once; an actor keeps the base model loaded across rounds (node.get_worker), as the
loopback's warm worker does.

Flower gives a virtual SuperNode only its `partition-id`; the ClientApp reads node k's clients from
`<node-data>/node_k` (run-config `node-data`, node.virtual_node_config). The run config reaches both apps through
the app directory as it does under `flwr run`: Flower's public `run_simulation` passes none, so this calls
`_run_simulation`, the function both it and Flower's own `flwr-simulation` process call (flwr is pinned, 1.42.*).

Torch threads: each actor runs with `int(run.client_cpus)` threads (`threads` overrides it; an OMP_NUM_THREADS set
by the user is kept), set through the environment the Ray processes inherit, as the loopback sets its nodes'.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedit.config import Config
from fedit.engines.flower.launcher import FLOWER_ENV, collect_result, prepare_local_run, thread_env
from fedit.errors import ClientError, ConfigError, FeditError

SIM_POLL = 0.05  # seconds between the ServerApp's pulls for replies (in memory: a pull costs next to nothing)


def threads_per_client(client_cpus: float, threads: int | None = None) -> int | None:
    """`threads` if given; else None when OMP_NUM_THREADS is set (kept); else int(client_cpus), at least 1."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads: got {threads}, expected an integer >= 1")
        return threads
    return None if "OMP_NUM_THREADS" in os.environ else max(1, int(client_cpus))


def backend_config(cfg: Config) -> dict[str, Any]:
    """Flower's Ray backend config: each ClientApp actor's resources, and a Ray instance of this run's own."""
    return {"client_resources": {"num_cpus": float(cfg.run.client_cpus), "num_gpus": float(cfg.run.client_gpus)},
            # "local": a new Ray instance, never a cluster that happens to run here (ray.shutdown stops it)
            "init_args": {"address": "local", "logging_level": "WARNING", "log_to_driver": True}}


# Set in os.environ by what runs inside the block, and put back after it: Flower's Ray backend writes this
# interpreter's sys.path into PYTHONPATH (flwr/server/superlink/fleet/vce/backend/raybackend.py, init_ray) and
# leaves it there, so every subprocess started later (another Python, a venv) would import these site-packages.
RESTORED = ("PYTHONPATH",)


@contextlib.contextmanager
def scoped_env(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ while the block runs (Ray's processes, started inside it, inherit them).

    On leaving, those keys and RESTORED are as they were before, whatever the block did to them.
    """
    before = {k: os.environ.get(k) for k in (*values, *RESTORED)}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_flower_sim(cfg: Config, *, resume: str | Path | None = None, overwrite: bool = False,
                   threads: int | None = None, round_timeout: float = 600.0, round_grace: float | None = None,
                   keep_work: bool = False, log: Any = None) -> Any:
    """Run `cfg` on Flower's Simulation Engine with `cfg.run.nodes` virtual SuperNodes; returns a RunResult.

    Everything is checked (config, Ray installed, CUDA for run.client_gpus > 0, data) before Ray starts or the run
    directory is made. `round_grace` None (the default) is `round_timeout`: every virtual node shares this machine,
    so none is dropped for being slower than the others (a node hosting two of a round's clients takes about twice
    as long as one hosting one); the simulator, too, waits for every client. A node whose ClientApp fails still
    costs only its clients. Results are bit-identical to the simulator's at the same torch threads per client
    (`threads`, else int(run.client_cpus)) on the same CPU and torch build, as the loopback deployment's are.
    """
    say = log or (lambda m: print(m, flush=True))
    cfg.validate()  # with run.engine = flower-sim this also checks that ray (and CUDA, for GPUs) is there
    if cfg.run.engine != "flower-sim":
        cfg = cfg.override({"run.engine": "flower-sim"})
        cfg.validate()
    per_client = threads_per_client(cfg.run.client_cpus, threads)
    work = Path(tempfile.mkdtemp(prefix="fedit-flower-sim-"))
    t0 = time.perf_counter()
    ok = False
    try:
        local = prepare_local_run(cfg, work, resume=resume, overwrite=overwrite, round_timeout=round_timeout,
                                  round_grace=round_timeout if round_grace is None else round_grace, poll=SIM_POLL,
                                  extra={"node-data": str(work / "data")})
        say(f"Flower Simulation Engine: {local.nodes} virtual SuperNodes, {local.n_clients} clients, "
            f"{cfg.run.client_cpus:g} CPU / {cfg.run.client_gpus:g} GPU per ClientApp process, "
            f"{per_client or os.environ.get('OMP_NUM_THREADS')} torch thread(s) each")
        _simulate(local.app, local.nodes, cfg, per_client)
        if local.error_file.exists():  # the ServerApp failed; its exception was raised above unless Flower lost it
            raise ClientError(f"Flower simulation did not complete: {local.error_file.read_text()}")
        ok = True
    finally:
        if (ok and not keep_work) or not (work / "app").exists():  # nothing started: nothing to look at
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            say(f"Flower simulation work directory kept: {work}")
    say(f"Flower simulation finished in {time.perf_counter() - t0:.1f}s")
    return collect_result(local.out, local.resumed)


def _simulate(app: Path, nodes: int, cfg: Config, threads: int | None) -> None:
    """fedit's ServerApp and ClientApp objects through Flower's simulation runtime, run config from `app`."""
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedit.engines.flower.client_app import app as client_app
    from fedit.engines.flower.server_app import app as server_app

    run_config = get_fused_config_from_dir(app, {})
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    env = {k: v for k, v in FLOWER_ENV.items() if k not in os.environ} | thread_env(threads)
    with scoped_env(env):
        try:
            _run_simulation(num_supernodes=nodes, client_app=client_app, server_app=server_app,
                            backend_name="ray", backend_config=backend_config(cfg), server_app_context=context,
                            app_dir=str(app), is_app=True, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE)
        except FeditError:
            raise  # the ServerApp's own error (bad resume, too few clients, ...): one line on the CLI
        except Exception as e:
            raise ClientError(f"Flower simulation failed: {type(e).__name__}: {e}") from e
