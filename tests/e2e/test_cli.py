"""The `fedit` command end to end: runs, partition, data export, and user errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def fedit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**__import__("os").environ, "COLUMNS": "200"})


def cli(*args: str) -> subprocess.CompletedProcess:
    """In-process invocation (no interpreter start-up): same app, same error handling, captured output."""
    from typer.testing import CliRunner

    from fedit.cli import app

    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr if r.stderr_bytes is not None else "")


def assert_user_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "Traceback" not in out, out
    for n in needles:
        assert n in out, f"{n!r} not in:\n{out}"


def test_run_resume_and_summary(micro_model_dir: Path, small_data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--model", str(micro_model_dir), "--data", str(small_data_file), "--clients", "3", "--test-size", "2",
              "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--eval-limit", "6"]
    p = fedit("run", *common, "--rounds", "1", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "run summary" in p.stdout and "held-out evaluation" in p.stdout
    assert (out / "final" / "adapter_model.safetensors").is_file() and (out / "round_0001").is_dir()
    saved = (out / "config.toml").read_text()
    assert str(small_data_file) in saved and "local_steps = 2" in saved
    # refuse to overwrite, then resume with more rounds; other settings cannot change on resume
    assert_user_error(cli("run", *common, "--rounds", "1", "--out", str(out)), "not empty", "--overwrite")
    assert_user_error(cli("run", "--resume", str(out), "--lr", "0.1"), "continues a run with its saved settings",
                      "--rounds", "client.lr")
    p = cli("run", "--resume", str(out), "--rounds", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2]


@pytest.mark.parametrize(
    ("content", "suffix", "needles"),
    [
        ('{"instruction": "a", "response": "b"}\n{"instruction": "c", "response": \n', ".jsonl",
         ["line 2", "JSON"]),
        ('{"instruction": "a", "response": ""}\n', ".jsonl", ["line 1", "response"]),
        ("", ".jsonl", ["empty"]),
        ("a,b\n1,2\n", ".csv", ["header"]),
        ('[{"instruction": "a", "response": 3}]', ".json", ["response", "string"]),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path: Path, content: str, suffix: str, needles: list[str]) -> None:
    f = tmp_path / f"bad{suffix}"
    f.write_text(content)
    p = cli("run", "--data", str(f), "--out", str(tmp_path / "o"))
    assert_user_error(p, f.name, *needles)
    assert not (tmp_path / "o" / "round_0001").exists()


def test_bad_flags_are_clear_errors(tmp_path: Path) -> None:
    assert_user_error(cli("run", "--rounds", "0", "--out", str(tmp_path / "x")), "run.rounds", ">= 1")
    assert_user_error(cli("run", "--strategy", "fedsgd", "--out", str(tmp_path / "y")), "fedsgd", "fedavg")
    assert_user_error(cli("run", "--resume", str(tmp_path)), "not a fedit run directory")
    bad_toml = tmp_path / "c.toml"
    bad_toml.write_text("[run]\nrondos = 3\n")
    assert_user_error(cli("run", "--config", str(bad_toml)), "rondos")


def test_partition_and_export(small_data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    p = cli("partition", "--data", str(small_data_file), "--clients", "4", "--scheme", "dirichlet", "--alpha", "0.5",
              "--test-size", "2", "--seed", "1", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(x.name for x in out.glob("client_*.jsonl")) == [f"client_00{i}.jsonl" for i in range(4)]
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["sizes"]) == 80 - 6 and (out / "heterogeneity.png").stat().st_size > 1000
    again = tmp_path / "parts2"
    cli("partition", "--data", str(small_data_file), "--clients", "4", "--scheme", "dirichlet", "--alpha", "0.5",
          "--test-size", "2", "--seed", "1", "--out", str(again))
    assert (out / "client_002.jsonl").read_text() == (again / "client_002.jsonl").read_text()
    assert_user_error(cli("partition", "--data", str(small_data_file), "--clients", "500", "--out",
                            str(tmp_path / "p3")), "500")
    assert_user_error(cli("partition", "--data", str(small_data_file), "--clients", "3", "--alpha", "0",
                            "--out", str(tmp_path / "p4")), "alpha")
    exp = tmp_path / "b.jsonl"
    p = cli("data", "export", "builtin", "--out", str(exp))
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in exp.read_text().splitlines()]
    assert {r["meta"]["split"] for r in rows} == {"train", "test"} and len({r["category"] for r in rows}) == 8
