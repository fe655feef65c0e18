"""TensorBoard: the event files of a real run, read back with TensorBoard's own EventAccumulator, hold exactly the
numbers of metrics.jsonl (and eval.json's final evaluation), each tag once per round, across a resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedit.tracking.tags import final_scalars, round_scalars

pytest.importorskip("tensorboard")


def f32(x: float) -> float:
    return float(np.float32(x))


def test_event_scalars_equal_metrics_jsonl_round_by_round(tracked_run, read_tb) -> None:
    acc = read_tb(tracked_run.root / "tensorboard")
    rows = tracked_run.rows
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    events = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    # the headline tags by name, against the raw fields of metrics.jsonl
    assert events["train/loss"] == [(r["round"], f32(r["train_loss"])) for r in rows[1:]]
    assert events["comm/bytes_up"] == [(r["round"], f32(r["bytes_up"])) for r in rows[1:]]
    assert events["time/round_seconds"] == [(r["round"], f32(r["round_seconds"])) for r in rows[1:]]
    assert events["strategy/aggregation_error"] == [(r["round"], f32(r["aggregation_error"])) for r in rows[1:]]
    assert events["clients/replied"] == [(r["round"], float(len(r["replied"]))) for r in rows]
    evaluated = [r for r in rows if "eval" in r]
    assert [r["round"] for r in evaluated] == [0, 1]  # base, eval_every 1; rounds 2 and 3 ended a session each
    finals = [tracked_run.eval_before_resume, tracked_run.eval]
    assert [f["rounds"] for f in finals] == [2, 3]
    assert events["eval/mean_score"] == ([(r["round"], f32(r["eval"]["mean"]["score"])) for r in evaluated]
                                         + [(f["rounds"], f32(f["mean"]["final_score"])) for f in finals])
    cat = sorted(tracked_run.eval["per_category"])[0]
    assert events[f"eval/{cat}/loss"] == ([(r["round"], f32(r["eval"]["per_category"][cat]["loss"]))
                                           for r in evaluated]
                                          + [(f["rounds"], f32(f["per_category"][cat]["final_loss"])) for f in finals])
    # every numeric field of every row and of each final evaluation, and nothing else: one event per (tag, round)
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for tag, v in round_scalars(r).items():
            expected.setdefault(tag, []).append((r["round"], f32(v)))
    for f in finals:
        for tag, v in final_scalars(f).items():
            expected[tag].append((f["rounds"], f32(v)))
    assert events == expected
    assert all(max(Counter(s for s, _ in pts).values()) == 1 for pts in events.values())


def test_resume_continues_the_same_directory_without_duplicates(tracked_run) -> None:
    log_dir = tracked_run.root / "tensorboard"
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert len(files) == 2  # one per session, in the same directory
    before = accumulator_of_file(files[0])
    assert before == sorted({r["round"] for r in tracked_run.rows_before_resume})  # session 1: rounds 0-2
    after = accumulator_of_file(files[1])
    assert after == [3]  # session 2 logged only the round it ran and its final evaluation


def accumulator_of_file(path: Path) -> list[int]:
    """The steps of the scalar events in one event file, read raw (TensorBoard's legacy loader: no conversion)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return sorted({e.step for e in LegacyEventFileLoader(str(path)).Load()
                   if e.HasField("summary") and any(v.HasField("simple_value") for v in e.summary.value)})


def test_config_is_logged_once_as_toml_text(tracked_run, read_tb) -> None:
    acc = read_tb(tracked_run.root / "tensorboard")
    texts = acc.Tensors("config/text_summary")
    assert [t.step for t in texts] == [0]  # the resume did not log it again
    text = texts[0].tensor_proto.string_val[0].decode()
    assert 'report_to = "tensorboard,mlflow"' in text and "local_steps = 2" in text
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    start = HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["client.local_steps"].number_value == 2 and hp["run.report_to"].string_value == "tensorboard,mlflow"
