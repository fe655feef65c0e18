"""MLflow: the file store under the run directory, read back with MlflowClient, holds metrics.jsonl's numbers per key
and step, the config as params, and one MLflow run across the resume (its id in tracking.json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedit.tracking.tags import final_scalars, round_scalars

pytest.importorskip("mlflow")


def test_metric_history_equals_metrics_jsonl(tracked_run, read_mlflow) -> None:
    client, run = read_mlflow(tracked_run.root)
    rows = tracked_run.rows
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    history = {k: sorted(v) for k, v in history.items()}
    assert history["train/loss"] == [(r["round"], r["train_loss"]) for r in rows[1:]]  # float64, exactly
    assert history["comm/bytes_down"] == [(r["round"], float(r["bytes_down"])) for r in rows[1:]]
    assert history["time/checkpoint_seconds"] == [(r["round"], r["checkpoint_seconds"]) for r in rows]
    finals = [tracked_run.eval_before_resume, tracked_run.eval]
    assert history["eval/mean_loss"] == ([(r["round"], r["eval"]["mean"]["loss"]) for r in rows if "eval" in r]
                                         + [(f["rounds"], f["mean"]["final_loss"]) for f in finals])
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for k, v in round_scalars(r).items():
            expected.setdefault(k, []).append((r["round"], v))
    for f in finals:
        for k, v in final_scalars(f).items():
            expected[k].append((f["rounds"], v))
    assert history == expected  # every key, every step once: the resume logged nothing twice


def test_params_are_the_config_and_the_resume_continued_the_same_run(tracked_run, read_mlflow) -> None:
    client, run = read_mlflow(tracked_run.root)
    p = run.data.params
    assert p["client.local_steps"] == "2" and p["partition.clients"] == "4" and p["lora.r"] == "4"
    assert p["run.report_to"] == "tensorboard,mlflow" and p["strategy.name"] == "fedavg"
    assert p["run.rounds"] == "2"  # params never change: the first session's; config.toml has the resumed value
    assert run.info.status == "FINISHED" and run.info.run_name == tracked_run.root.name
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the resume did not start a second MLflow run
    assert client.get_experiment(run.info.experiment_id).name == "fedit"


def test_params_are_truncated_to_mlflow_limits(tmp_path: Path, read_mlflow) -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from fedit.tracking.mlflow import MlflowTracker

    t = MlflowTracker(None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    long = "x" * (MAX_PARAM_VAL_LENGTH + 50)
    params = {f"k{i:03d}": i for i in range(150)}  # more than one batch of params
    t.start({"data": {"source": long}, "many": params}, run_dir)
    t.log_round(1, {"round": 1, "train_loss": 0.5, "epsilon": 1.25, "clients": {"0": {"loss": 9.0}}})
    t.finish(None)
    t.close()
    client, run = read_mlflow(run_dir)
    assert run.data.params["data.source"] == long[:MAX_PARAM_VAL_LENGTH]
    assert len(run.data.params) == 151
    assert run.data.metrics == {"train/loss": 0.5, "privacy/epsilon": 1.25}  # per-client figures stay in the jsonl
