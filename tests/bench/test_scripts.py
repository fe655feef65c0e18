"""The diagnostic scripts under benchmarks/ run from a checkout and print what docs/benchmarks.md cites."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_profile_client_shares_add_up_and_overrides_apply() -> None:
    out = _run("benchmarks/profile_client.py", "--threads", "1", "--top", "3", "--set", "client.local_steps=2",
               "--set", "model.dtype=float32")
    assert "2 local steps, model.dtype float32 (float32), 1 threads" in out
    line = out.split("by class: ")[1].splitlines()[0]
    shares = {k: int(v) for k, v in re.findall(r"([a-z][a-z ()]*?) (\d+)%", line)}
    assert "matmul" in shares and 95 <= sum(shares.values()) <= 105  # rounded percentages of one whole
    assert len(re.findall(r"ms +\d+ calls", out)) == 3


@pytest.mark.parametrize(("setting", "message"), [("client.local_steps", "expected KEY=VALUE"),
                                                   ("client.local_steps=two", "expected an integer"),
                                                   ("client.no_such=1", "no_such")])
def test_profile_client_refuses_a_bad_set(setting: str, message: str) -> None:
    out = subprocess.run([sys.executable, "benchmarks/profile_client.py", "--set", setting], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.mark.slow
def test_cpu_kernels_prints_every_section() -> None:
    out = _run("benchmarks/cpu_kernels.py", "--threads", "1", "--loops", "1")
    for needle in ("q,k,v forward: 3 GEMMs / 1", "x * uint8 view", "RMSNorm", "rotary on q, k", "SiLU(gate) x up",
                   "all three, per step", "torch random_", "numpy PCG64"):
        assert needle in out, needle
