"""A real `fedit serve` (uvicorn on 127.0.0.1, the micro model with a LoRA adapter) for the HTTP fuzz corpus."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "fuzz-key"
MODEL = "run"


@dataclass
class FuzzServer:
    url: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    api_key: str = API_KEY
    model: str = MODEL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adapter(model_dir: Path, out: Path) -> Path:
    """A PEFT LoRA adapter on the micro model (its adapter_config.json names the base by path)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


def _wait_ready(srv: FuzzServer, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"fedit serve exited with {srv.proc.returncode}:\n{srv.log.read_text()}")
        try:
            if httpx.get(srv.url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"fedit serve did not come up in {timeout}s:\n{srv.log.read_text()}")


@pytest.fixture(scope="module")
def fuzz_server(micro_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    """`fedit serve` with its default limits, an API key, and a short body timeout (the stalled-body cases)."""
    tmp = tmp_path_factory.mktemp("fuzz-http")
    adapter = _adapter(micro_model_dir, tmp / "adapter")
    port = _free_port()
    log = tmp / "serve.log"
    cmd = [sys.executable, "-m", "fedit.cli", "serve", "--adapter", f"{MODEL}={adapter}", "--port", str(port),
           "--api-key", API_KEY, "--body-timeout", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = FuzzServer(f"http://127.0.0.1:{port}", port, log, proc)
    try:
        _wait_ready(srv)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
