"""TrackingSession: a resumed run logs exactly the rounds its trackers lack, and a failing tracker or plot never
costs the run."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

from fedit import pipeline
from fedit.config import Config
from fedit.tracking import TrackingSession


def write_rows(root: Path, rows: list[dict]) -> None:
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def steps(root: Path, read_tb, read_mlflow) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    acc = read_tb(root / "tensorboard")
    tb = {t: [e.step for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    client, run = read_mlflow(root)
    ml = {k: sorted(m.step for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
    return tb, ml


def test_saved_rounds_a_tracker_missed_are_logged_once(tracked_run, tmp_path: Path, read_tb, read_mlflow) -> None:
    """As after a kill between a round's checkpoint and its logging: the next session logs what is missing."""
    rows, root = tracked_run.rows, tmp_path / "run"
    root.mkdir()
    cfg = Config().override({"run.report_to": "tensorboard,mlflow"})
    logs: list[str] = []
    write_rows(root, rows[:2])  # session 1 saw rounds 0 and 1, then died (no finish)
    with TrackingSession(cfg, root, logs.append) as s:
        s.catch_up()
    write_rows(root, rows)  # rounds 2 and 3 were saved before the trackers heard of them
    with TrackingSession(cfg, root, logs.append) as s:
        s.catch_up()
        s.round_end(3, rows[3])  # a round already logged by the catch-up is not logged again
        s.finish(tracked_run.eval)
    assert logs == []
    tb, ml = steps(root, read_tb, read_mlflow)
    assert tb["train/loss"] == ml["train/loss"] == [1, 2, 3]
    assert tb["clients/replied"] == ml["clients/replied"] == [0, 1, 2, 3]
    assert tb["eval/mean_loss"] == ml["eval/mean_loss"] == [0, 1, 3]
    assert all(max(Counter(v).values()) == 1 for v in [*tb.values(), *ml.values()])
    assert len(list((root / "tensorboard").glob("events.out.tfevents.*"))) == 2
    client, run = read_mlflow(root)
    assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1


def test_a_failing_tracker_warns_once_and_the_run_goes_on(micro_model_dir: Path, small_data_file: Path,
                                                          tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("TensorBoard cannot make its event directory here\n")
    cfg = Config().override({
        "model.name": str(micro_model_dir), "data.source": str(small_data_file), "partition.test_size": 2,
        "model.device": "cpu", "partition.clients": 3, "run.clients_per_round": 2, "run.rounds": 2,
        "run.out": str(tmp_path / "run"), "client.local_steps": 1, "client.batch_size": 2,
        "client.micro_batch_size": 2, "run.eval_limit": 3, "run.max_new_tokens": 2, "lora.r": 2,
        "run.report_to": "tensorboard", "run.tracking_uri": str(blocker / "tb")})

    class Recorder:
        def __init__(self) -> None:
            self.logs: list[str] = []
            self.curves: list[str] = []

        def round_start(self, r: int, total: int, sampled: list[int]) -> None:
            self.curves.append(hashlib.sha256((tmp_path / "run" / "curves.png").read_bytes()).hexdigest())

        def client_step(self, *a: object) -> None:
            pass

        def round_end(self, r: int, metrics: dict) -> None:
            pass

        def log(self, message: str) -> None:
            self.logs.append(message)

    rec = Recorder()
    result = pipeline.run(cfg, reporter=rec)
    warnings = [m for m in rec.logs if "tracking failed" in m]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tensorboard tracking failed (start:"), rec.logs
    assert [r.round for r in result.rounds] == [1, 2] and result.eval is not None
    assert len(set(rec.curves)) == 2  # curves.png drawn before round 1 (the base) and redrawn after it
    final = hashlib.sha256((tmp_path / "run" / "curves.png").read_bytes()).hexdigest()
    assert final not in rec.curves


def test_an_unwritable_curves_file_warns_once(tracked_run, tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    write_rows(root, tracked_run.rows)
    (root / "curves.png").mkdir()  # a directory where the plot would go: the rename fails
    logs: list[str] = []
    with TrackingSession(Config(), root, logs.append) as s:
        s.catch_up()
        s.finish(tracked_run.eval)
    assert len(logs) == 1 and logs[0].startswith("warning: could not draw curves.png")
    shutil.rmtree(root / "curves.png")


def test_an_unreachable_mlflow_server_is_dropped_at_once_and_tensorboard_goes_on(tracked_run, tmp_path: Path,
                                                                                 read_tb) -> None:
    import socket
    import time

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "run"
    root.mkdir()
    write_rows(root, tracked_run.rows)
    cfg = Config().override({"run.report_to": "tensorboard,mlflow", "run.tracking_uri": f"http://127.0.0.1:{port}"})
    logs: list[str] = []
    t0 = time.perf_counter()
    with TrackingSession(cfg, root, logs.append) as s:
        s.catch_up()
        s.finish(tracked_run.eval)
    assert time.perf_counter() - t0 < 30  # not MLflow's minutes of retries
    assert len(logs) == 1 and logs[0].startswith("warning: mlflow tracking failed (start: ConnectionError: cannot "
                                                 f"reach the MLflow server at 127.0.0.1:{port}"), logs
    acc = read_tb(root / "tensorboard")
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert not (root / "tracking.json").exists()
