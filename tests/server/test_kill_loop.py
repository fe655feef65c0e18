"""Kill -9 at random moments, resume, repeat: the run still ends with the uninterrupted run's adapter, bit for bit.

No flag is needed for this fault: the test kills a real `fedit run` process (its whole process group) with SIGKILL
at seeded random delays, which land in start-up, training, evaluation, checkpoint writes and the final copy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedit import pipeline
from fedit.config import Config
from fedit.model.lora import load_adapter_params

pytestmark = pytest.mark.slow
KILLS = 10
ROUNDS = 8


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedit.cli", "run", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def test_ten_random_kills_and_resumes_give_the_uninterrupted_adapter(micro_model_dir: Path, small_data_file: Path,
                                                                     tmp_path: Path) -> None:
    cfg = Config().override({
        "model.name": str(micro_model_dir), "data.source": str(small_data_file), "partition.test_size": 2,
        "model.device": "cpu", "partition.clients": 4, "run.fraction": 0.5, "run.rounds": ROUNDS,
        "client.local_steps": 12, "client.batch_size": 4, "client.micro_batch_size": 2, "client.lr": 1e-2,
        "strategy.name": "fedadam", "run.eval_limit": 4, "run.eval_every": 2, "run.eval_generate": False,
        "lora.r": 4, "run.out": str(tmp_path / "killed"),
    })
    cfg_file = tmp_path / "run.toml"
    cfg.save(cfg_file)
    # the uninterrupted run, as a process too: how long start-up takes (until round 0 is saved) and the whole run
    t_launch = time.monotonic()
    proc = _start(["--config", str(cfg_file), "--out", str(tmp_path / "ref")])
    while not (tmp_path / "ref" / "round_0000" / "metrics.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.02)
    t_ready = time.monotonic() - t_launch
    assert proc.wait(timeout=600) == 0
    t_total = time.monotonic() - t_launch
    proc.stderr.close() if proc.stderr else None
    ref = pipeline.run(cfg.override({"run.out": str(tmp_path / "ref")}), resume=tmp_path / "ref")  # reads it back
    out = tmp_path / "killed"
    rng = np.random.default_rng(20261202)
    kills, finished_early, t0 = 0, 0, time.monotonic()
    moments: list[tuple[float, int | None]] = []
    per_round = (t_total - t_ready) / ROUNDS

    def complete() -> int:
        done = [int(p.name[6:]) for p in out.glob("round_*") if (p / "metrics.json").is_file()] if out.is_dir() else []
        return max(done) if done else -1

    while kills < KILLS:
        args = ["--resume", str(out)] if (out / "run.json").is_file() else ["--config", str(cfg_file)]
        before = complete()
        proc = _start(args)
        launched = time.monotonic()
        if rng.random() < 0.2:  # in start-up: imports, data, model load, directory creation
            wait_until, extra = None, float(rng.uniform(0.3, t_ready))
        else:  # mid-run: once the next round (or the one after) is saved, somewhere inside the round that follows
            wait_until, extra = min(before + 1, ROUNDS), float(rng.uniform(0, per_round))
        while wait_until is not None and complete() < wait_until and proc.poll() is None:
            assert time.monotonic() - launched < 300, "the run made no progress"
            time.sleep(0.01)
        try:
            proc.wait(timeout=extra)
            finished_early += 1  # it ended on its own before the kill: resume it again (a no-op run) and go on
            assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
            moments.append((round(time.monotonic() - launched, 2), complete()))
        finally:
            if proc.stderr:
                proc.stderr.close()
        assert time.monotonic() - t0 < 900, f"kill loop too slow: {moments}"
    resumed = pipeline.run(cfg, resume=out)
    print(f"\nstart-up {t_ready:.1f}s, whole run {t_total:.1f}s; kills at (delay s, last complete round): {moments}; "
          f"runs that finished before their kill: {finished_early}")
    assert sum(1 for _, r in moments if 0 <= r < ROUNDS) >= KILLS // 2  # most kills landed mid-run
    assert resumed.final_params.keys() == ref.final_params.keys()
    for k, v in ref.final_params.items():
        assert torch.equal(resumed.final_params[k], v), k
    assert (out / "final" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "ref" / "final" / "adapter_model.safetensors").read_bytes()
    for r in range(1, ROUNDS + 1):
        a = load_adapter_params(out / f"round_{r:04d}" / "adapter")
        b = load_adapter_params(tmp_path / "ref" / f"round_{r:04d}" / "adapter")
        assert all(torch.equal(a[k], b[k]) for k in b), r
    rows = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(ROUNDS + 1))
    assert not list(out.glob(".tmp-*")) and not list(out.glob("*.corrupt*"))
    assert json.loads((out / "eval.json").read_text())["mean"] == ref.eval["mean"]
