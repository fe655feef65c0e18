"""The loopback's per-round fast path (issue 14 item 5): the SuperNode's capped idle poll, the resident ClientApp's
task loop, how the launcher starts a fast node, and how often it asks the SuperLink for the run's status.

No Flower processes here (the loopback runs in test_loopback.py exercise them end to end); the pieces that decide
the timings are checked with stand-ins and a fake clock.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

from fedit.engines.flower import fastnode, launcher, resident  # noqa: E402


def test_capped_time_caps_sleep_and_passes_everything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    capped = fastnode.CappedTime(0.1)
    capped.sleep(3)  # the SuperNode's idle poll
    capped.sleep(0.5)  # its wait for the ClientApp's reply
    capped.sleep(0.02)  # shorter sleeps are kept
    assert slept == [0.1, 0.1, 0.02]
    assert capped.time is time.time and capped.monotonic is time.monotonic


def test_poll_cap_reads_the_environment() -> None:
    assert fastnode.poll_cap({}) == fastnode.DEFAULT_POLL == 0.1
    assert fastnode.poll_cap({fastnode.ENV: "0.25"}) == 0.25
    for bad in ("0", "-1", "fast", "nan"):
        with pytest.raises(ValueError, match=fastnode.ENV):
            fastnode.poll_cap({fastnode.ENV: bad})


def test_patch_reaches_the_supernode_loop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.start_client_internal as sci

    monkeypatch.setattr(sci, "time", sci.time)  # restored after the test
    fastnode.patch(0.05)
    assert isinstance(sci.time, fastnode.CappedTime) and sci.time.cap == 0.05
    # the loop's own function sees the capped module through its globals; the real module is untouched
    assert sci.start_client_internal.__globals__["time"] is sci.time
    assert time.sleep is not sci.time.sleep


class _Stop(BaseException):  # not an Exception: the loop retries those
    pass


class _FakeRuntime:
    """AcquireTask answers: 'none' (no task), 'task' (a task with a token), 'error' (the SuperNode is away)."""

    def __init__(self, script: list[str]) -> None:
        self.script = script

    def AcquireTask(self, request: Any) -> Any:  # noqa: N802 - Flower's RPC name
        from flwr.proto.runtime_pb2 import AcquireTaskResponse  # pylint: disable=E0611
        from flwr.proto.task_pb2 import Task  # pylint: disable=E0611

        if not self.script:
            raise _Stop
        what = self.script.pop(0)
        if what == "error":
            raise ConnectionError("refused")
        if what == "task":
            return AcquireTaskResponse(task=Task(task_id=7, run_id=3), token="tok")
        return AcquireTaskResponse()


def test_the_resident_loop_runs_tasks_in_process_and_polls_between(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.constant import TaskType

    seen: list[Any] = []
    fake = _FakeRuntime(["none", "task", "task", "error", "error", "none"])

    def runtime_client(address: str, token: str | None, certs: bytes | None) -> _FakeRuntime:
        assert token is None  # the task loop itself holds no task token
        return fake

    sleeps: list[float] = []
    monkeypatch.setattr(resident, "_runtime_client", runtime_client)
    monkeypatch.setattr(resident, "run_task", lambda address, token, certs: seen.append((address, token)) or "ok")
    monkeypatch.setattr(resident.time, "sleep", sleeps.append)
    monkeypatch.setattr(resident.signal, "signal", lambda *a: None)
    with pytest.raises(_Stop):
        resident.serve("127.0.0.1:9", poll=0.05)
    assert seen == [("127.0.0.1:9", "tok")] * 2
    # idle: one poll; two tasks back to back (no sleep after a task); errors back off 0.05 -> 0.1; idle again
    assert sleeps == [0.05, 0.05, 0.1, 0.05]
    assert TaskType.CLIENT_APP == "flwr-clientapp"


def test_a_fast_supernode_runs_through_fastnode_with_a_supervised_resident_clientapp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, list[str]] = {}

    class _Proc:
        pid = 1

        def poll(self) -> None:
            return None

    def spawn(self: launcher.LoopbackDeployment, name: str, cmd: list[str], env: Any = None,
              append: bool = False) -> _Proc:
        started[name] = cmd
        self.procs[name] = _Proc()
        return self.procs[name]

    monkeypatch.setattr(launcher.LoopbackDeployment, "_spawn", spawn)
    dep = launcher.LoopbackDeployment(tmp_path)
    dep.port = 5
    dep.start_supernode("node_0", {"data-dir": "/d"}, threads=1, fast=True)
    dep.start_supernode("node_1", {"data-dir": "/e"}, threads=1, fast=False)
    fast, stock, app = started["node_0"], started["node_1"], started["node_0-clientapp"]
    assert fast[:3] == [sys.executable, "-m", "fedit.engines.flower.fastnode"]
    assert fast[fast.index("--isolation") + 1] == "process"
    assert app[:3] == [sys.executable, "-m", "fedit.engines.flower.resident"]
    assert app[3] == f"127.0.0.1:{fast[fast.index('--port') + 1]}"  # serves that node's Runtime API
    assert "node_0-clientapp" in dep.supervised and "node_1-clientapp" not in started
    assert stock[stock.index("--isolation") + 1] == "subprocess" and "fastnode" not in " ".join(stock)


def test_the_run_status_is_asked_rarely_until_the_last_round_is_in(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    asked: list[float] = []
    out = tmp_path / "run"
    out.mkdir()
    metrics = out / "metrics.jsonl"

    class _Dep:
        def check_alive(self) -> None:
            pass

        def run_status(self, run_id: int) -> tuple[str, str]:
            asked.append(clock[0])
            return ("finished:completed", "") if len(asked) == 7 else ("running", "")

    def sleep(s: float) -> None:
        clock[0] += s
        if clock[0] == 12.0:  # the last of 3 rounds lands at t = 12 s
            metrics.write_text("".join(json.dumps({"round": r}) + "\n" for r in range(4)))

    monkeypatch.setattr(launcher.time, "sleep", sleep)
    monkeypatch.setattr(launcher.time, "monotonic", lambda: clock[0])
    status = launcher._wait_run(_Dep(), 1, out, lambda m: None, 3, tmp_path / "error.txt")
    assert status == ("finished:completed", "")
    # every STATUS_POLL (5 s) while rounds run, then every 0.5 s once round 3 is in
    assert asked == [0.0, 5.0, 10.0, 12.0, 12.5, 13.0, 13.5]
