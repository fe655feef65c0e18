"""MLflow: one MLflow run per fedit run (its id kept in <run>/tracking.json, so a resume continues it), metrics per
round at step = round, the config as params; through MlflowClient against a file store or the given URI."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedit.atomic import write_json
from fedit.tracking.backends import is_local, local_path
from fedit.tracking.tags import config_params, final_scalars, finite, round_scalars

STATE_FILE = "tracking.json"  # {"mlflow": {"tracking_uri": <run.tracking_uri as configured>, "run_id": ...}}
EXPERIMENT = "fedit"  # unless MLFLOW_EXPERIMENT_NAME names another, as MLflow's own clients read it


def _limits() -> tuple[int, int, int, int]:
    """MLflow's limits: param value length, key length, params per batch, metrics per batch."""
    from mlflow.utils import validation as v

    return (getattr(v, "MAX_PARAM_VAL_LENGTH", 500), getattr(v, "MAX_ENTITY_KEY_LENGTH", 250),
            getattr(v, "MAX_PARAMS_TAGS_PER_BATCH", 100), getattr(v, "MAX_METRICS_PER_BATCH", 1000))


def store_uri(tracking_uri: str | None, run_dir: Path) -> str:
    """The URI MlflowClient is given: a file store in <run>/mlruns by default, a local path as a file: URI, any
    other URI (http(s)://, sqlite://, databricks) as it is."""
    if tracking_uri is None:
        return (Path(run_dir).resolve() / "mlruns").as_uri()
    return local_path(tracking_uri).as_uri() if is_local(tracking_uri) else tracking_uri


def probe(uri: str, timeout: float = 5.0) -> None:
    """For an http(s) URI, one TCP connection to its server within `timeout` seconds, so a server that is down costs
    seconds, not MLflow's own retries (minutes), before the tracker is dropped."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach the MLflow server at {parsed.hostname}:{port} ({e})") from None


def _read_state(run_dir: Path) -> dict[str, Any]:
    f = run_dir / STATE_FILE
    try:
        return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
    except ValueError:
        return {}


class MlflowTracker:
    """Logs to MLflow. The default file store needs MLFLOW_ALLOW_FILE_STORE (MLflow 3 keeps that store in
    maintenance mode but still writes and reads it); it is set for this process unless the user set it."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri
        self.client: Any = None
        self.run_id = ""
        self.logged: dict[str, int] = {}
        self.finished = False

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        uri = store_uri(self.tracking_uri, run_dir)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        probe(uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        state = _read_state(run_dir)
        saved = state.get("mlflow", {})
        run = None
        if saved.get("run_id") and saved.get("tracking_uri") == self.tracking_uri:
            try:
                run = self.client.get_run(saved["run_id"])
            except Exception:  # deleted, or another store: start a new MLflow run and log the whole history
                run = None
        if run is None:
            run = self.client.create_run(self._experiment_id(), run_name=run_dir.name,
                                         tags={"fedit.run_dir": str(run_dir.resolve())})
            state["mlflow"] = {"tracking_uri": self.tracking_uri, "run_id": run.info.run_id}
            write_json(run_dir / STATE_FILE, state)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.logged = {k: max(m.step for m in self.client.get_metric_history(self.run_id, k))
                       for k in run.data.metrics}
        self._log_params(config_params(config), set(run.data.params))

    def _experiment_id(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # made meanwhile by another run
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _log_params(self, params: dict[str, Any], present: set[str]) -> None:
        """The config as params, truncated to MLflow's limits; a resumed run adds only keys its MLflow run lacks
        (MLflow params never change; config.toml holds each session's values)."""
        from mlflow.entities import Param

        max_val, max_key, per_batch, _ = _limits()
        todo = [Param(k[:max_key], str(v)[:max_val]) for k, v in sorted(params.items()) if k[:max_key] not in present]
        for i in range(0, len(todo), per_batch):
            self.client.log_batch(self.run_id, params=todo[i:i + per_batch], synchronous=True)

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        _, max_key, _, per_batch = _limits()
        now = int(time.time() * 1000)
        todo = [Metric(k[:max_key], v, now, step) for k, v in finite(scalars).items()
                if step > self.logged.get(k[:max_key], -1)]
        for i in range(0, len(todo), per_batch):
            self.client.log_batch(self.run_id, metrics=todo[i:i + per_batch], synchronous=True)
        for m in todo:
            self.logged[m.key] = step

    def log_round(self, round_idx: int, row: dict[str, Any]) -> None:
        self._write(round_idx, round_scalars(row))

    def finish(self, evaluation: dict[str, Any] | None) -> None:
        if evaluation:
            self._write(int(evaluation["rounds"]), final_scalars(evaluation))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def close(self) -> None:
        if self.client is not None and self.run_id and not self.finished:
            self.client.set_terminated(self.run_id, "FAILED")
        self.client = None
