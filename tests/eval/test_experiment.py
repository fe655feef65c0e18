"""`fedit experiment` (FedIT vs local-only vs centralized), `fedit eval` and `fedit generate` on the micro model."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedit.cli import app
from fedit.cli.run import NOT_CONFIG, RUN_OPTION_KEYS, run_overrides
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.eval.experiment import CENTRALIZED, FEDIT, local_rounds, run_experiment, summarize

SMALL = {"partition.clients": 3, "run.rounds": 2, "run.clients_per_round": 2, "client.local_steps": 2,
         "client.batch_size": 2, "client.micro_batch_size": 2, "run.eval_limit": 8,
         "data.cutoff_len": 64}
FLAGS = ["--clients", "3", "--rounds", "2", "--clients-per-round", "2", "--local-steps", "2", "--batch-size", "2",
         "--micro-batch-size", "2", "--eval-limit", "8", "--cutoff-len", "64"]
CATS = ("open_qa", "classification", "summarization")


def write_data(root: Path) -> tuple[Path, Path]:
    """Small category-labelled train and held-out files (the built-in suite would make these tests slow)."""
    def rows(n: int, tag: str) -> str:
        return "".join(json.dumps({"instruction": f"{tag} question {i} about {CATS[i % 3]}?", "context": "",
                                   "response": f"answer {i % 5} for {CATS[i % 3]}", "category": CATS[i % 3]}) + "\n"
                       for i in range(n))

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text(rows(36, "train"))
    (root / "test.jsonl").write_text(rows(12, "test"))
    return root / "train.jsonl", root / "test.jsonl"


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def experiment(micro_model_dir: Path, data_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "cli"
    train, test = data_files
    res = CliRunner().invoke(app, ["experiment", "--model", str(micro_model_dir), "--data", str(train), "--test-data",
                                   str(test), *FLAGS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_every_run_option_is_an_experiment_option() -> None:
    from fedit.cli.run import run_command

    names = set(inspect.signature(run_command).parameters)
    assert names - NOT_CONFIG == set(RUN_OPTION_KEYS)
    cfg = Config().override(run_overrides({"lora_targets": "q_proj,k_proj", "field": ["instruction=q"],
                                           "rounds": 7}))
    assert cfg.lora.targets == ["q_proj", "k_proj"] and cfg.data.fields == {"instruction": "q"} and cfg.run.rounds == 7


def test_experiment_outputs_and_compute_accounting(experiment: Path) -> None:
    doc = json.loads((experiment / "experiment.json").read_text())
    m = doc["methods"]
    assert doc["complete"] and set(m) == {FEDIT, CENTRALIZED, "local/0", "local/1", "local/2"}
    # FedIT: 2 rounds x 2 sampled clients x 2 steps; local (expected compute): 2 rounds x 2/3 sampled x 2 steps,
    # rounded; centralized: FedIT's total
    assert m[FEDIT]["steps"] == 8 and all(m[f"local/{k}"]["steps"] == 3 for k in range(3))
    assert doc["compute"]["local_compute"] == "expected"
    assert m[CENTRALIZED]["steps"] == 8 and m[CENTRALIZED]["examples"] == sum(m[f"local/{k}"]["examples"]
                                                                               for k in range(3))
    for res in m.values():
        assert set(res["mean"]) == {"loss", "perplexity", "score", "exact_match"}
        assert sum(c["n"] for c in res["per_category"].values()) == 8
    # The FedIT row is the run's own final evaluation: same evaluator, same records.
    run_eval = json.loads((experiment / "fedit" / "eval.json").read_text())
    for cat, row in run_eval["per_category"].items():
        assert m[FEDIT]["per_category"][cat]["loss"] == pytest.approx(row["final_loss"], abs=1e-6)
    assert doc["base"]["mean"]["loss"] == pytest.approx(run_eval["mean"]["base_loss"], abs=1e-6)
    assert set(doc["summary"]) == {"primary_metric", "score", "loss"}
    md = (experiment / "experiment.md").read_text()
    assert "| **fedit** |" in md and "| local/2 |" in md and "| centralized |" in md
    for metric in ("score", "loss"):
        assert (experiment / f"experiment_{metric}.png").read_bytes()[:4] == b"\x89PNG"
    assert (experiment / "local_1" / "adapter" / "adapter_model.safetensors").is_file()


def test_local_compute_choices() -> None:
    cfg = Config().override({"run.rounds": 16, "run.fraction": 0.3, "partition.clients": 10})
    assert local_rounds(cfg, 10, "expected") == pytest.approx(16 * 3 / 10)
    assert local_rounds(cfg, 10, "every-round") == 16
    assert local_rounds(cfg.override({"run.fraction": 1.0}), 10, "expected") == 16
    with pytest.raises(ConfigError, match="local_compute='sometimes'"):
        local_rounds(cfg, 10, "sometimes")


@pytest.mark.slow
def test_experiment_is_deterministic(experiment: Path, micro_model_dir: Path, data_files: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    cfg = Config().override({**SMALL, "model.name": str(micro_model_dir), "data.source": str(data_files[0]),
                             "data.test_source": str(data_files[1])})
    logs: list[str] = []
    again = run_experiment(cfg, tmp_path / "again", log=logs.append)
    first = json.loads((experiment / "experiment.json").read_text())
    for name, res in first["methods"].items():
        assert again["methods"][name]["per_category"] == res["per_category"], name  # bit-identical on CPU
    assert any(line.startswith("(b) local-only") for line in logs)


def test_eval_and_generate_commands_on_the_experiments_run(experiment: Path, data_files: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    # No --data: the run's own held-out set (its data.test_source), as the run evaluated it.
    res = CliRunner().invoke(app, ["eval", "--adapter", str(experiment / "fedit"), "--limit", "8",
                                   "--max-new-tokens", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ev = json.loads(out.read_text())
    fed = json.loads((experiment / "experiment.json").read_text())["methods"][FEDIT]
    assert ev["records"] == 8 and ev["mean"]["loss"] == pytest.approx(fed["mean"]["loss"], abs=1e-5)
    assert ev["mean"]["score"] == pytest.approx(fed["mean"]["score"])

    answers = tmp_path / "a.jsonl"
    res = CliRunner().invoke(app, ["generate", "--adapter", str(experiment / "fedit" / "final"), "--limit", "5",
                                   "--data", str(data_files[1]),
                                   "--max-new-tokens", "3", "--out", str(answers)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(rows) == 5 and all({"id", "instruction", "answer", "category", "gold"} <= set(r) for r in rows)

    res = CliRunner().invoke(app, ["eval", "--adapter", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 2 and "not a PEFT adapter directory" in res.output


def test_summary_judges_the_two_targets() -> None:
    def res(score: float, loss: float) -> dict:
        return {"mean": {"score": score, "loss": loss}, "per_category": {}}

    s = summarize({FEDIT: res(0.50, 1.0), CENTRALIZED: res(0.54, 0.9), "local/0": res(0.3, 1.2),
                   "local/1": res(0.49, 0.95)})
    assert s["primary_metric"] == "score"
    assert s["score"]["fedit_beats_every_local"] and s["score"]["within_10pct_of_centralized"]
    assert s["score"]["gap_to_centralized"] == pytest.approx(0.04 / 0.54)
    assert not s["loss"]["fedit_beats_every_local"] and s["loss"]["locals_beaten"] == "1/2"
    assert not s["loss"]["within_10pct_of_centralized"]  # (1.0 - 0.9) / 0.9 = 11%


def test_experiment_compares_strategies_on_the_same_data_and_compute(experiment: Path, micro_model_dir: Path,
                                                                     data_files: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    train, test = data_files
    out = tmp_path / "zoo"
    res = CliRunner().invoke(app, ["experiment", "--model", str(micro_model_dir), "--data", str(train), "--test-data",
                                   str(test), *FLAGS, "--strategies", "fedavg,fedadam", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "experiment.json").read_text())
    m = doc["methods"]
    assert {"fedit:fedavg", "fedit:fedadam", CENTRALIZED} <= set(m) and FEDIT not in m
    assert m["fedit:fedavg"]["strategy"] == "fedavg" and m["fedit:fedadam"]["strategy"] == "fedadam"
    # fedavg here is exactly the plain experiment's FedIT (same data, partition, seeds): the comparison is fair
    assert m["fedit:fedavg"]["per_category"] == json.loads((experiment / "experiment.json").read_text())[
        "methods"][FEDIT]["per_category"]
    assert m["fedit:fedadam"]["per_category"] != m["fedit:fedavg"]["per_category"]
    for k in ("fedit:fedavg", "fedit:fedadam"):
        assert m[k]["steps"] == 8 and m[k]["bytes_up"] > 0 and 0 <= m[k]["aggregation_error_mean"] < 1
    assert set(doc["summary"]["by_method"]) == {"fedit:fedavg", "fedit:fedadam"}
    assert doc["summary"]["best_loss"] in ("fedit:fedavg", "fedit:fedadam")
    md = (out / "experiment.md").read_text()
    assert "| strategy | mean score | mean loss | MiB up |" in md and "| fedit:fedadam |" in md
    assert (out / "fedit-fedadam" / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("value", "match"), [("fedavg,bogus", "strategy.name: got 'bogus'"),
                                              ("fedavg,fedavg", "expected distinct strategy names")])
def test_bad_strategies_are_refused_before_training(micro_model_dir: Path, data_files: tuple[Path, Path],
                                                    tmp_path: Path, value: str, match: str) -> None:
    train, test = data_files
    res = CliRunner().invoke(app, ["experiment", "--model", str(micro_model_dir), "--data", str(train), "--test-data",
                                   str(test), *FLAGS, "--strategies", value, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and match in " ".join(res.output.split())
    assert not (tmp_path / "x").exists()
