"""Data honesty in a simulated run: every client's truncated/dropped examples are counted once, saved in the run
directory, warned about before round 1 when over 5%, and shown again in the CLI's run summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fedit import pipeline
from fedit.cli import app
from fedit.config import Config
from fedit.data.templates import get_template
from fedit.data.tokenize import tokenize_records
from fedit.model.load import load_tokenizer


class Recorder:
    """A reporter that keeps the order of what happened."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def round_start(self, round_idx: int, total_rounds: int, sampled: list[int]) -> None:
        self.events.append(("round", round_idx))

    def client_step(self, client_id: int, step: int, total: int, loss: float) -> None:
        pass

    def round_end(self, round_idx: int, metrics: dict[str, Any]) -> None:
        pass

    def log(self, message: str) -> None:
        self.events.append(("log", message))


def cfg_for(micro_model_dir: Path, data: Path, out: Path, cutoff: int) -> Config:
    return Config().override({
        "model.name": str(micro_model_dir), "data.source": str(data), "partition.clients": 3,
        "partition.test_size": 0, "run.rounds": 1, "run.clients_per_round": 1, "client.local_steps": 1,
        "client.batch_size": 2, "client.micro_batch_size": 2, "lora.r": 2, "data.cutoff_len": cutoff,
        "run.out": str(out), "model.device": "cpu",
    })


def test_run_saves_counts_and_warns_before_round_one(micro_model_dir: Path, small_data_file: Path,
                                                     tmp_path: Path) -> None:
    cfg = cfg_for(micro_model_dir, small_data_file, tmp_path / "run", cutoff=56)
    rec = Recorder()
    pipeline.run(cfg, reporter=rec)
    warnings = [i for i, (kind, msg) in enumerate(rec.events) if kind == "log" and msg.startswith("WARNING:")]
    assert len(warnings) == 1 and warnings[0] < rec.events.index(("round", 1))
    assert "data.cutoff_len=56" in rec.events[warnings[0]][1] and "--cutoff-len" in rec.events[warnings[0]][1]
    saved = json.loads((tmp_path / "run" / "partition" / "lengths.json").read_text())
    tok = load_tokenizer(str(micro_model_dir))
    data = pipeline.prepare_data(cfg)
    for cid, recs in enumerate(data.client_records):  # the same counts as tokenizing that client's records
        counts = tokenize_records(recs, get_template("auto", tok), tok, 56).counts
        assert counts is not None and saved["groups"][str(cid)] == counts.to_dict()
    assert saved["total"]["truncated"] > 0 and saved["total"]["dropped"] > 0 and saved["cutoff_len"] == 56


def test_no_warning_when_nothing_is_cut(micro_model_dir: Path, small_data_file: Path, tmp_path: Path) -> None:
    rec = Recorder()
    pipeline.run(cfg_for(micro_model_dir, small_data_file, tmp_path / "run", cutoff=256), reporter=rec)
    assert not [m for k, m in rec.events if k == "log" and m.startswith("WARNING")]
    saved = json.loads((tmp_path / "run" / "partition" / "lengths.json").read_text())
    assert saved["total"]["truncated"] == saved["total"]["dropped"] == 0 and saved["flagged"] == []


def test_cli_summary_shows_truncated_and_dropped_per_client(micro_model_dir: Path, small_data_file: Path,
                                                            tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["run", "--model", str(micro_model_dir), "--data", str(small_data_file),
                                 "--clients", "3", "--test-size", "0", "--rounds", "1", "--clients-per-round", "1",
                                 "--local-steps", "1", "--batch-size", "2", "--micro-batch-size", "2",
                                 "--lora-r", "2", "--cutoff-len", "56", "--out", str(tmp_path / "run")],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    summary = r.output[r.output.index("run summary"):]
    assert "examples per client after the length limit" in summary and "trunc" in summary and "drop" in summary
    assert "WARNING: data.cutoff_len=56" in summary  # again after the summary, not only before round 1
    assert r.output.count("WARNING: data.cutoff_len=56") == 2
