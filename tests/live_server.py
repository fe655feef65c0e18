"""A real `fedit serve` subprocess on a free loopback port, shared by the serving tests and the HTTP fuzz corpus."""

from __future__ import annotations

import os
from pathlib import Path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `fedit serve` subprocess on a free loopback port."""

    def __init__(self, args: list[str], log: Path) -> None:
        import subprocess
        import sys

        self.port = free_port()
        self.api_key = args[args.index("--api-key") + 1] if "--api-key" in args else None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.model: str | None = None  # the adapter name a test sends requests to, when it needs one
        cmd = [sys.executable, "-m", "fedit.cli", "serve", "--port", str(self.port), *args]
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as in the test process (see _one_torch_thread)
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 90.0) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fedit serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"fedit serve did not come up in {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
