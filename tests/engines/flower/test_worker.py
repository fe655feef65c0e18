"""The node worker's socket: deadlines, a dead or busy worker, the accept loop's back-off; supervision; TLS key mode.

Real Unix sockets and real child processes; only the worker's training is replaced by small stand-ins here (the
real worker is exercised by the loopback deployments in test_loopback.py).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path

import pytest

from fedit.engines.flower import worker
from fedit.engines.flower.supervise import Restarting
from fedit.engines.flower.worker import WorkerUnavailable, accept_forever, key_path, recv_frame, request, send_frame


def _listener(sock: Path) -> Listener:
    key = os.urandom(32)
    key_path(sock).write_bytes(key)
    return Listener(str(sock), family="AF_UNIX", authkey=key)


def _serve_once(listener: Listener, answer) -> threading.Thread:
    """Accept one connection in a thread and let `answer(conn)` deal with it."""
    def run() -> None:
        with listener.accept() as conn:
            answer(conn)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "w.sock"


def test_a_reply_round_trips(sock: Path) -> None:
    with _listener(sock) as lst:
        def echo(conn) -> None:
            header, buffers = recv_frame(conn)
            send_frame(conn, {"got": header["x"], "deadline": header["deadline"]}, buffers[::-1])
        t = _serve_once(lst, echo)
        deadline = time.time() + 30
        reply, out = request(sock, {"x": 7}, [b"a", b"bc"], deadline=deadline)
        t.join(5)
    assert reply == {"got": 7, "deadline": deadline} and out == [b"bc", b"a"]  # the deadline travels to the worker


def test_no_reply_by_the_deadline_is_a_timeout(sock: Path) -> None:
    with _listener(sock) as lst:
        release = threading.Event()
        t = _serve_once(lst, lambda conn: (recv_frame(conn), release.wait(10)))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="deadline"):
            request(sock, {}, [], deadline=time.time() + 0.5)
        assert 0.4 < time.monotonic() - t0 < 2.0
        release.set()
        t.join(5)


def test_a_busy_worker_that_never_accepts_is_a_timeout_too(sock: Path) -> None:
    with _listener(sock):  # listening, never accepting (the worker is stuck in a long request)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            request(sock, {}, [], deadline=time.time() + 0.5)
        assert time.monotonic() - t0 < 2.0


def test_no_worker_is_unavailable_after_the_connect_wait(sock: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(WorkerUnavailable, match="no node worker"):
        request(sock, {}, [], deadline=time.time() + 30, connect_wait=0.3)
    assert time.monotonic() - t0 < 2.0
    lst = _listener(sock)
    lst.close()  # a dead worker leaves its socket file behind: connection refused
    with pytest.raises(WorkerUnavailable):
        request(sock, {}, [], deadline=time.time() + 30, connect_wait=0.3)


def test_a_worker_dying_mid_request_is_unavailable(sock: Path) -> None:
    with _listener(sock) as lst:
        t = _serve_once(lst, lambda conn: recv_frame(conn))  # reads the request, then goes away
        with pytest.raises(WorkerUnavailable, match="went away"):
            request(sock, {}, [b"x"], deadline=time.time() + 30)
        t.join(5)


def test_a_restarting_worker_is_waited_for(sock: Path) -> None:
    def start_late() -> None:
        time.sleep(0.5)
        lst = _listener(sock)
        with lst, lst.accept() as conn:
            recv_frame(conn)
            send_frame(conn, {"ok": True}, [])
    t = threading.Thread(target=start_late, daemon=True)
    t.start()
    reply, _ = request(sock, {}, [], deadline=time.time() + 30, connect_wait=5.0)
    t.join(5)
    assert reply == {"ok": True}


class _FailingListener:
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def accept(self):
        self.calls += 1
        if self.calls > self.failures:
            raise SystemExit(0)
        raise OSError(errno.EMFILE, "Too many open files")


def test_the_accept_loop_backs_off_on_persistent_errors() -> None:
    sleeps: list[float] = []
    logs: list[str] = []
    with pytest.raises(SystemExit):
        accept_forever(_FailingListener(8), lambda c: None, logs.append, sleep=sleeps.append, max_delay=1.0)
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert len(logs) == 8 and "Too many open files" in logs[0]


def test_restarting_restarts_an_exited_child_with_back_off() -> None:
    now = [0.0]
    notes: list[str] = []
    spawned: list[subprocess.Popen] = []

    def spawn() -> subprocess.Popen:
        spawned.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"]))
        return spawned[-1]

    sup = Restarting("w", spawn, notes.append, min_delay=1.0, clock=lambda: now[0])
    spawned[0].wait(10)
    assert sup.check() is spawned[0] and "exited with code 3; restarting it in 1s" in notes[0]
    now[0] = 1.0
    assert sup.check() is spawned[1] and sup.restarts == 1
    spawned[1].wait(10)
    now[0] = 1.5  # died soon again: the pause doubles
    sup.check()
    now[0] = 3.0
    assert sup.check() is spawned[1]
    now[0] = 3.6
    assert sup.check() is spawned[2] and sup.retired == spawned[:2]
    spawned[2].wait(10)
    now[0] = 100.0  # it had run long enough: restarted at once
    assert sup.check() is spawned[3]


def test_the_worker_key_and_the_tls_key_are_private_from_creation(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cryptography")
    from fedit.engines.flower import tls

    real_open = os.open
    modes: dict[str, int] = {}

    def spy(path, flags, mode=0o777, *a, **kw):  # noqa: ANN001 - os.open's own signature
        fd = real_open(path, flags, mode, *a, **kw)
        modes[Path(path).name] = stat.S_IMODE(os.fstat(fd).st_mode)  # before a byte is written
        return fd

    old = os.umask(0)  # the most permissive umask: only the creation mode protects the key
    try:
        monkeypatch.setattr(tls.os, "open", spy)
        (tmp_path / "certs").mkdir()
        (tmp_path / "certs" / "server.key").write_text("old")
        os.chmod(tmp_path / "certs" / "server.key", 0o644)
        paths = tls.make_certificates(tmp_path / "certs")
        key_path(tmp_path / "w.sock").write_text("old")
        os.chmod(key_path(tmp_path / "w.sock"), 0o644)
        key = worker.write_key(tmp_path / "w.sock")
    finally:
        os.umask(old)
    assert modes == {"server.key": 0o600, "w.sock.key": 0o600}
    assert stat.S_IMODE(paths["key"].stat().st_mode) == 0o600
    assert key_path(tmp_path / "w.sock").read_bytes() == key and len(key) == 32
