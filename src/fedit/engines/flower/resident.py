"""A resident ClientApp: one long-lived process that runs every fedit ClientApp task of a SuperNode in-process.

Flower 1.42's SuperNode in `--isolation subprocess` starts a SuperExec that spawns one `flwr-clientapp` process per
message (flwr/supercore/superexec/executor/subprocess_executor.py, `SubprocessExecutor.launch`), and that process
imports flwr and the app before it can answer: 1-3 s per node per round on a loaded 2-core machine. With
`--isolation process` the SuperNode starts no executor and waits for one to connect to its Runtime API; this module
is that executor. It polls the Runtime API for ClientApp tasks (`AcquireTask`, as flwr's SuperExec does, every
`poll` s) and runs each one in this process with the same steps as flwr's `run_clientapp`
(flwr/supernode/runtime/run_clientapp.py): task heartbeat, `pull_task_input`, the ClientApp, `push_message`,
`push_task_output`; only the per-task process, its FAB install and app import are gone. The ClientApp is fedit's
own (`fedit.engines.flower.client_app.app`), so this executor serves fedit runs only: the launcher starts it for
its loopback SuperNodes. The warm path is unchanged: the ClientApp relays to the node worker over its socket, and
trains here (cold path, the model then loaded in this process) when the worker is down.

A task that raises is answered with an error reply, as flwr's own ClientApp process does, and the loop goes on.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

POLL = 0.05  # seconds between AcquireTask calls when no task is pending (flwr's SuperExec: 1 s by default)


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} fedit resident ClientApp: {message}",
          flush=True)


def _runtime_client(address: str, token: str | None, root_certificates: bytes | None) -> Any:
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec" if token is None
                                                             else "flwr-clientapp")]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=root_certificates is None,
                                                 root_certificates=root_certificates, interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())


def run_task(address: str, token: str, root_certificates: bytes | None) -> str:
    """Run one ClientApp task in this process (flwr's `run_clientapp` without its process); returns its status."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from fedit.engines.flower.client_app import app

    client = _runtime_client(address, token, root_certificates)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    times = [time.perf_counter()]  # start, message pulled, ClientApp done, reply pushed
    try:
        heartbeat.start()
        message, context, _run, _fab = pull_task_input(client)
        times.append(time.perf_counter())
        reply = app(message=message, context=context)
        times.append(time.perf_counter())
        status, details = SubStatus.COMPLETED, ""
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - a failed task is answered, the loop goes on
        # KeyboardInterrupt: flwr's heartbeat raises SIGINT when the SuperNode no longer knows the task
        details = f"{type(e)}:<'{e}'>"
        _log(f"task failed: {type(e).__name__}: {e}")
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as e:  # noqa: BLE001 - the SuperNode then times the message out
            _log(f"could not push the reply: {type(e).__name__}: {e}")
        push_task_output(client, context, status, details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    times.append(time.perf_counter())
    if len(times) == 4:
        _log(f"pull {times[1] - times[0]:.2f}s, ClientApp {times[2] - times[1]:.2f}s, "
             f"push {times[3] - times[2]:.2f}s")
    return str(status)


def serve(address: str, root_certificates: bytes | None = None, poll: float = POLL) -> None:
    """Acquire and run ClientApp tasks from the SuperNode's Runtime API at `address` until SIGTERM."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType

    import fedit.engines.flower.client_app  # noqa: F401 - the import paid once, before the first task

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    client = _runtime_client(address, None, root_certificates)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    _log(f"serving the SuperNode's Runtime API at {address}")
    delay = 0.0
    while True:
        try:
            res = client.AcquireTask(request)
            delay = 0.0
        except Exception as e:  # noqa: BLE001 - the SuperNode is (re)starting: retry, backing off up to 2 s
            delay = min(2.0, max(poll, 2 * delay))
            if delay >= 2.0:
                _log(f"AcquireTask failed ({type(e).__name__}: {e}); retrying")
            time.sleep(delay)
            continue
        if res.HasField("task") and res.token:
            t0 = time.perf_counter()
            _log(f"task {res.task.task_id} (run {res.task.run_id}) acquired")
            status = run_task(address, res.token, root_certificates)
            _log(f"task {res.task.task_id} (run {res.task.run_id}): {status} in {time.perf_counter() - t0:.2f}s")
            continue  # another task may be waiting
        time.sleep(poll)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runtime_api_address", help="the SuperNode's Runtime API, host:port (its --host/--port)")
    p.add_argument("--root-certificates", default=None, help="CA file of the Runtime API's TLS (default: insecure)")
    p.add_argument("--poll", type=float, default=POLL, help="seconds between task polls")
    a = p.parse_args(argv)
    certs = open(a.root_certificates, "rb").read() if a.root_certificates else None  # noqa: SIM115
    serve(a.runtime_api_address, certs, a.poll)


if __name__ == "__main__":
    main()
