"""One tracked micro-model run shared by the tracking tests: 2 rounds with --report-to tensorboard,mlflow through the
CLI, then resumed to 3 rounds (the saved config keeps the trackers). Each session ends with a final evaluation
(eval.json), logged at its last round: round 2 by the first session, round 3 by the second."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class TrackedRun:
    root: Path
    rows_before_resume: list[dict[str, Any]]
    eval_before_resume: dict[str, Any]  # session 1's final evaluation (of round 2)
    rows: list[dict[str, Any]]
    eval: dict[str, Any]  # session 2's (of round 3)


def read_rows(root: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    assert r.exit_code == 0, r.stdout


@pytest.fixture(scope="session")
def tracked_run(micro_model_dir: Path, small_data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> TrackedRun:
    root = tmp_path_factory.mktemp("tracked") / "run"
    config = root.parent / "small.toml"
    config.write_text("[run]\nmax_new_tokens = 4\n")
    cli("run", "--config", str(config), "--model", str(micro_model_dir), "--data", str(small_data_file),
        "--clients", "4", "--test-size", "2", "--fraction", "0.5", "--local-steps", "2", "--batch-size", "4",
        "--micro-batch-size", "2", "--lora-r", "4", "--eval-limit", "6", "--eval-every", "1", "--rounds", "2",
        "--report-to", "tensorboard,mlflow", "--out", str(root))
    before, eval_before = read_rows(root), json.loads((root / "eval.json").read_text())
    cli("run", "--resume", str(root), "--rounds", "3")
    return TrackedRun(root, before, eval_before, read_rows(root), json.loads((root / "eval.json").read_text()))


def accumulator(log_dir: Path) -> Any:
    """TensorBoard's own reader over `log_dir`, keeping every event: a duplicate step cannot hide."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0}, purge_orphaned_data=False)
    acc.Reload()
    return acc


def client_and_run(root: Path) -> tuple[Any, Any]:
    """MlflowClient on the run's default store (<run>/mlruns) and the MLflow run named in tracking.json."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when asked to
    from mlflow.tracking import MlflowClient

    state = json.loads((root / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    return client, client.get_run(state["run_id"])


@pytest.fixture
def read_tb() -> Callable[[Path], Any]:
    pytest.importorskip("tensorboard")
    return accumulator


@pytest.fixture
def read_mlflow() -> Callable[[Path], tuple[Any, Any]]:
    pytest.importorskip("mlflow")
    return client_and_run
