"""The run directory as a trust boundary: --overwrite deletes only fedit's own output, one writer at a time,
durable writes, fallback past an unusable latest round, resume refuses config changes that alter finished rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedit import pipeline
from fedit.config import Config
from fedit.errors import CheckpointError
from fedit.outdir import MARKER, check_output_dir, marker_kind, replace_output_dir
from fedit.server.checkpoint import RunStore


def small(model_dir: Path, data: Path, out: Path, rounds: int = 2, **extra) -> Config:
    return Config().override({
        "model.name": str(model_dir), "data.source": str(data), "partition.test_size": 2, "model.device": "cpu",
        "partition.clients": 4, "run.fraction": 0.5, "run.rounds": rounds, "run.out": str(out),
        "client.local_steps": 2, "client.batch_size": 4, "client.micro_batch_size": 2, "client.lr": 1e-2,
        "strategy.name": "fedadam", "run.eval_limit": 6, "run.eval_generate": False, "lora.r": 4, **extra,
    })


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- --overwrite ------------------------------------------------------------------------------------------------
def test_overwrite_refuses_a_directory_fedit_did_not_make(micro_model_dir: Path, small_data_file: Path,
                                                          tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('precious')\n")
    (project / "config.toml").write_text("[tool]\n")  # looks a little like a run, but fedit did not make it
    (project / "run.json").write_text("{}")
    before = tree(project)
    from typer.testing import CliRunner

    from fedit.cli import app

    res = CliRunner().invoke(app, ["run", "--model", str(micro_model_dir), "--data", str(small_data_file),
                                   "--out", str(project), "--overwrite"])
    assert res.exit_code == 2, res.output
    assert "not a fedit output directory" in " ".join(res.output.split()) and "Traceback" not in res.output
    assert tree(project) == before
    with pytest.raises(CheckpointError, match="not a fedit output directory"):
        pipeline.run(small(micro_model_dir, small_data_file, project), overwrite=True)
    assert tree(project) == before


def test_overwrite_replaces_a_fedit_run_but_never_the_current_directory(micro_model_dir: Path,
                                                                        small_data_file: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    pipeline.run(small(micro_model_dir, small_data_file, out, rounds=1))
    assert marker_kind(out) == "run"
    with pytest.raises(CheckpointError, match=r"not empty \(a fedit run directory\); pass --overwrite .*--resume"):
        pipeline.run(small(micro_model_dir, small_data_file, out, rounds=1))
    (out / "stale.txt").write_text("from the old run")
    pipeline.run(small(micro_model_dir, small_data_file, out, rounds=2), overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "round_0002").is_dir() and marker_kind(out) == "run"
    monkeypatch.chdir(out / "round_0001")
    with pytest.raises(CheckpointError, match="current directory or contains it"):
        check_output_dir(out, overwrite=True)
    monkeypatch.chdir(out)
    with pytest.raises(CheckpointError, match="current directory or contains it"):
        check_output_dir(Path("."), overwrite=True)
    assert (out / "round_0002").is_dir()


def test_partition_export_and_experiment_share_the_rule(tmp_path: Path, small_data_file: Path) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    runner = CliRunner()
    args = ["partition", "--data", str(small_data_file), "--clients", "3", "--scheme", "iid", "--test-size", "1"]
    res = runner.invoke(app, [*args, "--out", str(foreign), "--overwrite"])
    assert res.exit_code == 2 and "not a fedit output directory" in " ".join(res.output.split())
    assert (foreign / "notes.txt").read_text() == "mine"
    parts = tmp_path / "parts"
    assert runner.invoke(app, [*args, "--out", str(parts)]).exit_code == 0
    assert marker_kind(parts) == "partition" and (parts / "client_000.jsonl").is_file()
    res = runner.invoke(app, [*args, "--out", str(parts)])
    assert res.exit_code == 2 and "pass --overwrite" in " ".join(res.output.split())
    assert runner.invoke(app, [*args, "--clients", "2", "--out", str(parts), "--overwrite"]).exit_code == 0
    assert not (parts / "client_002.jsonl").exists()
    for kind in ("export", "experiment"):
        d = replace_output_dir(tmp_path / kind, False, kind)
        assert marker_kind(d) == kind and (d / MARKER).is_file()


# ---- one writer, durable writes -------------------------------------------------------------------------------
def test_lock_keeps_a_second_writer_out(tmp_path: Path) -> None:
    a, b = RunStore(tmp_path), RunStore(tmp_path)
    a.lock()
    with pytest.raises(CheckpointError, match=rf"in use by another fedit process \(pid {os.getpid()}\)"):
        b.lock()
    a.unlock()
    b.lock()  # released: the next one gets it
    b.unlock()


def test_a_live_run_cannot_be_resumed_or_overwritten_by_another_process(micro_model_dir: Path,
                                                                          small_data_file: Path,
                                                                          tmp_path: Path) -> None:
    cfg = small(micro_model_dir, small_data_file, tmp_path / "live", rounds=40, **{"client.local_steps": 6})
    cfg.save(tmp_path / "live.toml")
    proc = subprocess.Popen([sys.executable, "-m", "fedit.cli", "run", "--config", str(tmp_path / "live.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "live" / "round_0001" / "metrics.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(CheckpointError, match=rf"in use by another fedit process \(pid {proc.pid}\)"):
            pipeline.run(cfg, resume=tmp_path / "live")
        with pytest.raises(CheckpointError, match="in use by another fedit process"):
            pipeline.run(cfg, overwrite=True)
        assert proc.poll() is None  # the live run was not disturbed
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert (tmp_path / "live" / "round_0001" / "metrics.json").is_file()


def test_round_files_and_directories_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability cannot be shown without pulling the plug; what can be checked is that every file of a round and
    the directory that receives its name are fsynced, and the name appears only after its files were."""
    from fedit.atomic import staged_dir

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    final = tmp_path / "round_0001"
    with staged_dir(final) as tmp:
        (tmp / "state").mkdir()
        (tmp / "state" / "s.bin").write_bytes(b"x")
        (tmp / "metrics.json").write_text("{}")
    files = [p.replace(str(final), str(tmp_path / ".tmp-round_0001")) for p in
             (str(final / "state" / "s.bin"), str(final / "metrics.json"), str(final / "state"), str(final))]
    for f in files:
        assert f in synced, (f, synced)
    assert synced[-1] == str(tmp_path)  # the parent, after the rename
    assert all(s.startswith(str(tmp_path / ".tmp-round_0001")) for s in synced[:-1])


# ---- fallback past an unusable round --------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "non-finite"])
def test_resume_falls_back_past_an_unusable_latest_round(micro_model_dir: Path, small_data_file: Path,
                                                         tmp_path: Path, damage: str) -> None:
    ref = pipeline.run(small(micro_model_dir, small_data_file, tmp_path / "ref", rounds=3))
    out = tmp_path / "run"
    pipeline.run(small(micro_model_dir, small_data_file, out, rounds=2))
    if damage == "truncated":  # what a power loss without fsync leaves: the name, but not the data
        (out / "round_0002" / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    else:  # a checkpoint poisoned by an older fedit that aggregated a NaN
        f = out / "round_0002" / "state" / "strategy.safetensors"
        state = load_file(str(f))
        key = sorted(state)[0]
        state[key].view(-1)[0] = float("nan")
        save_file(state, str(f))
    logs: list[str] = []

    class Rep:
        def round_start(self, *a): pass
        def client_step(self, *a): pass
        def round_end(self, *a): pass
        def log(self, m: str) -> None: logs.append(m)

    resumed = pipeline.run(small(micro_model_dir, small_data_file, out, rounds=3), resume=out, reporter=Rep())
    assert same(ref.final_params, resumed.final_params)
    assert (out / "round_0002.corrupt").is_dir()  # kept for inspection, never deleted
    assert any("round 2 is unusable" in m and "round_0002.corrupt" in m for m in logs), logs
    rows = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1, 2, 3]


def test_resume_of_a_run_killed_before_round_0_starts_it_again(micro_model_dir: Path, small_data_file: Path,
                                                               tmp_path: Path) -> None:
    cfg = small(micro_model_dir, small_data_file, tmp_path / "run", rounds=1)
    ref = pipeline.run(cfg.override({"run.out": str(tmp_path / "ref")}))
    store = RunStore(tmp_path / "run")
    store.create(cfg.to_toml(), json.loads((tmp_path / "ref" / "run.json").read_text()), overwrite=False)
    store.unlock()  # as if the process died right after creating the directory
    resumed = pipeline.run(cfg, resume=tmp_path / "run")
    assert same(ref.final_params, resumed.final_params)


# ---- resume and the config ------------------------------------------------------------------------------------
def test_resume_refuses_changed_settings_through_the_library_api(micro_model_dir: Path, small_data_file: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = small(micro_model_dir, small_data_file, out, rounds=1, **{"strategy.name": "fedavg"})
    pipeline.run(base)
    before = tree(out)
    with pytest.raises(CheckpointError, match=r"strategy.name: saved 'fedavg', now 'fedadam'"):
        pipeline.run(base.override({"strategy.name": "fedadam", "run.rounds": 2}), resume=out)
    with pytest.raises(CheckpointError, match=r"client.lr: saved 0.01, now 0.02.*"
                       r"may change only run.client_cpus, run.client_gpus, run.engine"):
        pipeline.run(base.override({"client.lr": 2e-2, "run.rounds": 2}), resume=out)
    assert tree(out) == before  # refused before anything was touched
    res = pipeline.run(base.override({"run.rounds": 2}), resume=out)
    assert [r.round for r in res.rounds] == [2]
    assert Config.from_file(out / "config.toml").run.rounds == 2  # the saved config says what the run now is


def test_eval_limit_changed_on_resume_compares_base_and_final_on_the_same_records(micro_model_dir: Path,
                                                                                  small_data_file: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = small(micro_model_dir, small_data_file, out, rounds=1, **{"run.eval_limit": 2})
    pipeline.run(cfg)
    first = json.loads((out / "eval.json").read_text())
    assert sum(c["n"] for c in first["per_category"].values()) == 2
    pipeline.run(cfg.override({"run.rounds": 2, "run.eval_limit": 5}), resume=out)
    ev = json.loads((out / "eval.json").read_text())
    # the base now scored on the 5 records the final model was scored on, not round 0's stored 2
    assert sum(c["n"] for c in ev["per_category"].values()) == 5
    assert ev["mean"]["base_loss"] != first["mean"]["base_loss"]
    fresh = pipeline.run(cfg.override({"run.out": str(tmp_path / "fresh"), "run.eval_limit": 5}))
    assert ev["mean"]["base_loss"] == pytest.approx(fresh.eval["mean"]["base_loss"], rel=1e-6)
